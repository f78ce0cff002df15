"""Build a fernoise manifest straight over ../shared/data/ferplus (for benches and real runs).

Not the align stage: FER2013 crops are already 48x48 faces, so each row points at its PNG as
the crop (status ok). Labels: the FER+ majority (docs/data.md: drop single votes, keep the top
class when it holds more than half of what remains, drop unknown/NF winners), or the
original FER2013 label (``--labels fer2013``, 7 classes: real annotation noise, with
``label_clean`` = the FER+ majority and ``is_noisy`` where they differ). ``--sym-rate r``
flips train rows with the library's sym noise (``fernoise.corrupt.kinds``: exactly round(r * n_c)
per class, half up, to a uniformly drawn other class). ``label_clean`` and ``is_noisy`` are
written only when noise was added, so a clean manifest goes through ``fernoise corrupt``
without ``--force``.

    python bench/ferplus_manifest.py OUT.parquet --train 10000 [--sym-rate 0.5] [--seed 0]

For `fernoise pretrain` (labels unused): ``--keep-unlabelled`` keeps the train crops with no
FER+ majority (null ``label``), so ``--train`` counts all 28,558; ``--val N`` moves the last N
train rows (in the data set's random order) to split ``val``, the k-NN probe's rows:

    python bench/ferplus_manifest.py all.parquet --keep-unlabelled --val 2000 --test 0

``--fer2013-column`` adds FER2013's original label as a column ``fer2013_label`` (class name,
null where FER2013 has none) beside the FER+ majority label, so that ``fernoise corrupt --kind
column --column fer2013_label`` makes the real-noise training set (test rows keep the majority)
and ``fernoise audit --truth-column`` can score against either.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pandas as pd

from fernoise.cache import dict_hash
from fernoise.corrupt.kinds import CorruptParams, corrupt
from fernoise.formats.ferplus import majority
from fernoise.labels import CLASSES, FERPLUS_VOTE_COLUMNS, canonical_name, label_space_of
from fernoise.manifest import write_manifest

FERPLUS = (
    Path(
        os.environ.get("FERNOISE_SHARED", Path(__file__).resolve().parents[1] / ".." / "shared")
    ).resolve()
    / "data"
    / "ferplus"
)


def build(
    out: Path,
    *,
    n_train: int | None,
    n_test: int | None = None,
    labels: str = "majority",
    sym_rate: float = 0.0,
    seed: int = 0,
    root: Path = FERPLUS,
    keep_unlabelled: bool = False,
    n_val: int = 0,
    fer2013_column: bool = False,
) -> Path:
    """Write the manifest to ``out`` (crop paths relative to it) and return ``out``."""
    df = pd.read_csv(root / "manifest.csv")
    df["clean"] = majority(df[list(FERPLUS_VOTE_COLUMNS)].to_numpy())
    if labels == "fer2013":
        classes = list(CLASSES[:7])
        df = df[df["fer2013_label"].notna()].copy()
        df["label"] = [CLASSES.index(canonical_name(x)) for x in df["fer2013_label"]]
        df = df[df["clean"] < 7]
    else:
        classes = list(CLASSES)
        keep = (df["clean"] >= 0) | ((df["split"] == "train") & keep_unlabelled)
        df = df[keep].copy()
        df["label"] = df["clean"].where(df["clean"] >= 0).astype("Int64")
    df["split"] = df["split"].map({"train": "train", "valid": "test"})
    df = df.sort_values(["split", "rand_rank"])
    parts = []
    for split, n in (("train", n_train), ("test", n_test)):
        part = df[df["split"] == split]
        parts.append(part if n is None else part.head(n))
    df = pd.concat(parts).reset_index(drop=True)
    if n_val:
        if sym_rate or labels == "fer2013":
            raise SystemExit(
                "--val is for clean manifests (pretraining); noise goes through `fernoise corrupt`"
            )
        df.loc[df.index[df["split"] == "train"][-n_val:], "split"] = "val"
    train = df["split"] == "train"
    if sym_rate:
        # the library's own exact sym noise (same rows as `fernoise corrupt --kind sym`)
        noisy, _ = corrupt(
            pd.DataFrame(
                {"id": df["path"], "split": df["split"], "label": df["label"].astype("Int64")}
            ),
            classes=classes,
            params=CorruptParams(kind="sym", rate=sym_rate, seed=seed),
        )
        df["label"] = noisy["label"].to_numpy(dtype="int64")
    rel = os.path.relpath(root, out.resolve().parent)
    rows = pd.DataFrame(
        {
            "id": df["path"],
            "src_path": df["path"],
            "path": [f"{rel}/{p}" for p in df["path"]],
            "split": df["split"],
            "label": df["label"].astype("Int64" if keep_unlabelled else "int64"),
            "label_name": [None if pd.isna(i) else classes[int(i)] for i in df["label"]],
            "status": "ok",
            "n_faces": 1,
        }
    )
    if fer2013_column:
        rows["fer2013_label"] = [
            None if pd.isna(x) else canonical_name(x) for x in df["fer2013_label"]
        ]
    lineage = [
        {
            "stage": "align",
            "key": "ferplus-direct",
            "params": {"source": "ferplus/manifest.csv", "labels": labels},
        }
    ]
    noise = None
    if sym_rate or labels == "fer2013":
        noise = {"kind": "sym" if sym_rate else "fer2013_original", "rate": sym_rate, "seed": seed}
        lineage.append({"stage": "corrupt", "key": "ferplus-direct-noise", "params": noise})
        # only a noisy manifest says what the clean label was: a clean one stays corruptible
        # by `fernoise corrupt` without --force
        rows["label_clean"] = df["clean"].where(df["clean"] >= 0).astype("Int64").to_numpy()
        rows["is_noisy"] = ((df["label"] != df["clean"]) & train).to_numpy()
    key = dict_hash(
        {
            "ids": rows["id"].tolist(),
            "labels": [None if pd.isna(v) else int(v) for v in rows["label"]],
            "noise": noise,
            "labels_from": labels,
            "splits": rows["split"].tolist() if n_val else None,
            **({"fer2013_column": True} if fer2013_column else {}),
        }
    )
    meta = {
        "classes": classes,
        "label_space": label_space_of(classes),
        "stage": lineage[-1]["stage"],
        "params": lineage[-1]["params"],
        "key": key,
        "lineage": lineage,
    }
    return write_manifest(rows, out, meta)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--train", type=int, default=None, help="train rows (default: all)")
    ap.add_argument(
        "--test", type=int, default=None, help="FER2013Valid rows as test (default: all)"
    )
    ap.add_argument("--labels", choices=["majority", "fer2013"], default="majority")
    ap.add_argument("--sym-rate", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--keep-unlabelled",
        action="store_true",
        help="keep train crops with no FER+ majority (null label; for pretraining)",
    )
    ap.add_argument(
        "--val",
        type=int,
        default=0,
        help="move the last N train rows to split val (the pretrain probe)",
    )
    ap.add_argument(
        "--fer2013-column",
        action="store_true",
        help="add FER2013's original label as column fer2013_label (for --kind column)",
    )
    a = ap.parse_args()
    print(
        build(
            a.out,
            n_train=a.train,
            n_test=a.test,
            labels=a.labels,
            sym_rate=a.sym_rate,
            seed=a.seed,
            keep_unlabelled=a.keep_unlabelled,
            n_val=a.val,
            fer2013_column=a.fer2013_column,
        )
    )


if __name__ == "__main__":
    main()
