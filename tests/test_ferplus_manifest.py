"""bench/ferplus_manifest.py writes label_clean/is_noisy only when it added noise (issue 9.10).

A tiny stand-in for ``shared/data/ferplus`` (manifest.csv + PNGs) in tmp_path, so the test runs
without the real data; the columns are those of the real ``manifest.csv``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
from PIL import Image

from fernoise.cache import Workspace
from fernoise.corrupt.stage import run_corrupt
from fernoise.labels import FERPLUS_VOTE_COLUMNS
from fernoise.manifest import read_manifest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "ferplus_manifest.py"


def bench_module():
    spec = importlib.util.spec_from_file_location("ferplus_manifest_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def fake_ferplus(root: Path) -> Path:
    # (split, winning vote column, fer2013 label): 8 train rows, 2 of them where FER2013 disagrees
    spec = [
        ("train", "neutral", "neutral"),
        ("train", "happiness", "happy"),
        ("train", "happiness", "happy"),
        ("train", "sadness", "angry"),
        ("train", "anger", "angry"),
        ("train", "surprise", "surprise"),
        ("train", "fear", "sad"),
        ("train", "disgust", "disgust"),
        ("valid", "neutral", "neutral"),
        ("valid", "happiness", "happy"),
    ]
    rows = []
    for k, (split, win, fer) in enumerate(spec):
        folder = "FER2013Train" if split == "train" else "FER2013Valid"
        path = f"{folder}/fer{k:07d}.png"
        (root / folder).mkdir(parents=True, exist_ok=True)
        Image.new("L", (48, 48), k * 20).save(root / path)
        votes = {c: (8 if c == win else 0) for c in FERPLUS_VOTE_COLUMNS}
        rows.append({"path": path, "split": split, **votes, "fer2013_label": fer, "rand_rank": k})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


def test_clean_manifest_has_no_noise_columns_and_corrupts_without_force(tmp_path, workspace):
    bench = bench_module()
    root = fake_ferplus(tmp_path / "ferplus")
    clean = bench.build(tmp_path / "clean.parquet", n_train=None, root=root)
    m = read_manifest(clean)
    assert "label_clean" not in m.df.columns and "is_noisy" not in m.df.columns
    assert m.classes[:2] == ["neutral", "happy"] and m.meta["label_space"] == "basic8"
    assert m.df["label_name"].tolist()[:3] == ["neutral", "happy", "happy"]
    res = run_corrupt(clean, kind="sym", rate=0.5, seed=0, workspace=Workspace())
    out = read_manifest(res.output).df
    assert out["label_clean"].tolist() == m.df["label"].tolist()  # label_clean = the bench's labels

    noisy = read_manifest(
        bench.build(tmp_path / "sym.parquet", n_train=None, root=root, sym_rate=0.5)
    ).df
    assert {"label_clean", "is_noisy"} <= set(noisy.columns)
    assert noisy["is_noisy"].tolist() == (noisy["label"] != noisy["label_clean"]).tolist()
    assert int(noisy["is_noisy"].sum()) > 0

    fer = read_manifest(
        bench.build(tmp_path / "fer.parquet", n_train=None, root=root, labels="fer2013")
    )
    d = fer.df
    assert fer.meta["label_space"] == "basic7"
    assert d["is_noisy"].tolist() == [
        False,
        False,
        False,
        True,
        False,
        False,
        True,
        False,
        False,
        False,
    ]


def test_pretraining_manifest_keeps_unlabelled_crops_and_carves_a_probe_split(tmp_path):
    bench = bench_module()
    root = fake_ferplus(tmp_path / "ferplus")
    csv = pd.read_csv(root / "manifest.csv")
    csv.loc[2, list(FERPLUS_VOTE_COLUMNS)] = 0
    csv.loc[2, ["happiness", "sadness"]] = 4  # a tie: no FER+ majority
    csv.to_csv(root / "manifest.csv", index=False)
    assert (
        len(read_manifest(bench.build(tmp_path / "m.parquet", n_train=None, root=root)).df) == 9
    )  # dropped
    m = read_manifest(
        bench.build(
            tmp_path / "all.parquet",
            n_train=None,
            n_test=0,
            root=root,
            keep_unlabelled=True,
            n_val=3,
        )
    )
    d = m.df
    assert (
        len(d) == 8 and d["split"].tolist() == ["train"] * 5 + ["val"] * 3
    )  # the last 3 in random order
    assert (
        d["label"].isna().tolist() == [i == 2 for i in range(8)]
        and d["label_name"].isna().sum() == 1
    )
    assert (d["status"] == "ok").all()
