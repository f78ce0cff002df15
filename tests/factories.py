"""Builders shared by the test modules, in one place: tiny generated manifests and crops, tiny
stage configs, fake run folders, grid files and CLI invokers. Each builder writes only under
the folder it is given; no test module imports from another test module, only from here.

torch and the CLI are imported inside the builders that need them, so importing this module
stays cheap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from fernoise.labels import CLASSES as LABEL_CLASSES
from fernoise.labels import LABEL_SPACES
from fernoise.manifest import write_manifest

# ============================================================================= train
CLASSES = ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"]
SIZE = 32
CONFIG_FIELDS = {
    "method",
    "epochs",
    "batch_size",
    "image_size",
    "warmup",
    "k",
    "lr_backbone",
    "lr_head",
    "randaug_magnitude",
    "pretrained",
    "seed",
    "precision",
    "device",
    "val_fraction",
    "manifest",
    "manifest_key",
    "classes",
    "label_space",
    "num_classes",
    "two_heads",
    "noise",
    "align",
    "key",
}
METRIC_FIELDS = {
    "epoch",
    "warmup",
    "loss",
    "loss_s",
    "train_acc",
    "lr_backbone",
    "lr_head",
    "thresholds",
    "confident_frac",
    "confident_precision",
    "confident_recall",
    "val_acc",
    "test_acc",
    "images_per_s",
    "seconds",
}
TIMING = {"images_per_s", "samples_per_s", "seconds", "data_wait_s", "train_seconds"}
# The flags of a one-epoch, no-warm-up, CPU `fernoise train` of `ce` on a `make_manifest`.
TINY_ARGS = [
    "--epochs",
    "1",
    "--warmup",
    "0",
    "--batch-size",
    "16",
    "--image-size",
    str(SIZE),
    "--precision",
    "fp32",
    "--workers",
    "0",
    "--method",
    "ce",
]


def one_epoch_args(size: int = SIZE, *, frozen: bool = False) -> list[str]:
    """The flags of a one-epoch, no-warm-up, fp32 CPU `fernoise train` of `ce`, batch 8, at
    ``size`` px; ``frozen``: backbone lr 1e-12, so the backbone stays at its start weights."""
    args = ["--method", "ce", "--epochs", "1", "--warmup", "0", "--batch-size", "8"]
    args += ["--image-size", str(size), "--workers", "0", "--precision", "fp32", "--device", "cpu"]
    return args + (["--lr-backbone", "1e-12"] if frozen else [])


def make_manifest(
    root: Path,
    n: int = 105,
    *,
    noise: float = 0.2,
    splits=("train", "test"),
    key="synthetic",
    labels=None,
) -> Path:
    """``root/manifest.parquet`` (a `corrupt`-stage manifest) and ``root/faces/``: ``n`` PNGs
    whose class is a bright vertical band (every 5th row ``splits[1]``, the rest
    ``splits[0]``); ``noise`` of train labels flipped; ``labels(df)`` replaces the labels."""
    rng = np.random.default_rng(0)
    (root / "faces").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        c = i % len(CLASSES)
        img = rng.integers(0, 60, (SIZE, SIZE, 3)).astype(np.uint8)
        band = SIZE // len(CLASSES)
        img[:, c * band : (c + 1) * band] += 150
        path = f"faces/{i:04d}.png"
        Image.fromarray(img).save(root / path)
        split = splits[1] if i % 5 == 0 else splits[0]
        noisy = split == "train" and rng.random() < noise
        label = int((c + rng.integers(1, len(CLASSES))) % len(CLASSES)) if noisy else c
        rows.append(
            {
                "id": path,
                "src_path": path,
                "path": path,
                "split": split,
                "label": label,
                "label_clean": c,
                "is_noisy": bool(noisy),
                "status": "ok",
                "n_faces": 1,
            }
        )
    df = pd.DataFrame(rows)
    if labels is not None:
        df["label"] = labels(df)
    lineage = [
        {"stage": "align", "key": "a", "params": {"size": SIZE}},
        {"stage": "corrupt", "key": key, "params": {"kind": "sym", "rate": noise, "seed": 0}},
    ]
    meta = {
        "classes": CLASSES,
        "label_space": "basic7",
        "stage": "corrupt",
        "key": key,
        "lineage": lineage,
    }
    return write_manifest(df, root / "manifest.parquet", meta)


def tiny_train(**kw):
    """A two-epoch (one warm-up) CPU-sized ``TrainConfig``; ``ncctfer`` gets ``--k 3``."""
    from fernoise import methods
    from fernoise.train.stage import TrainConfig

    base = dict(epochs=2, warmup=1, batch_size=32, image_size=SIZE, workers=0, precision="fp32")
    if kw.get("method", "ncctfer") == "ncctfer":
        base["method_params"] = methods.make_params("ncctfer", {"--k": 3})
    return TrainConfig(**{**base, **kw})


def read_metrics(run: Path) -> list[dict]:
    """The rows of ``run/metrics.jsonl``."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def nothing_written(ws: Path) -> bool:
    """True when workspace ``ws`` has neither a ``runs`` folder nor a ``fernoise.lock``."""
    return not (ws / "runs").exists() and not (ws / "fernoise.lock").exists()


# ============================================================================= pretrain
def tiny_pretrain(**kw):
    """A two-epoch CPU-sized ``PretrainConfig`` probing every epoch."""
    from fernoise.pretrain.stage import PretrainConfig

    base = dict(
        epochs=2, image_size=SIZE, batch_size=16, probe_every=1, device="cpu", precision="fp32"
    )
    return PretrainConfig(**{**base, **kw})


# ============================================================================= sweep
def make_aligned(
    root: Path, n: int = 56, *, key: str = "aligned-synthetic", extra_column: bool = False
) -> Path:
    """An ``align``-stage manifest of ``n`` rows (every 5th row test, the rest train), with
    clean labels; ``extra_column`` adds ``second_label`` (a second annotation, shifted by one
    class on every 4th row) for ``column`` noise. Writes ``root/manifest.parquet`` and
    ``root/faces/``."""
    rng = np.random.default_rng(0)
    (root / "faces").mkdir(parents=True, exist_ok=True)
    rows = []
    band = SIZE // len(CLASSES)
    for i in range(n):
        c = i % len(CLASSES)
        img = rng.integers(0, 60, (SIZE, SIZE, 3)).astype(np.uint8)
        img[:, c * band : (c + 1) * band] += 150
        path = f"faces/{i:04d}.png"
        Image.fromarray(img).save(root / path)
        row = {
            "id": path,
            "src_path": path,
            "path": path,
            "split": "test" if i % 5 == 0 else "train",
            "label": c,
            "label_name": CLASSES[c],
            "status": "ok",
            "n_faces": 1,
        }
        if extra_column:
            row["second_label"] = (c + 1) % len(CLASSES) if i % 4 == 0 else c
        rows.append(row)
    meta = {
        "classes": CLASSES,
        "label_space": "basic7",
        "stage": "align",
        "key": key,
        "lineage": [{"stage": "align", "key": key, "params": {"size": SIZE}}],
    }
    return write_manifest(pd.DataFrame(rows), root / "manifest.parquet", meta)


def write_grid(path: Path, text: str) -> Path:
    """``path`` holding the grid file ``text``."""
    path.write_text(text)
    return path


# A valid two-method, one-rate, one-epoch grid.
GOOD = """
methods = ["ce", "ncctfer"]
seeds = [0]
noise = [{kind = "sym", rates = [0.2]}]
[train]
epochs = 1
warmup = 0
image_size = 32
batch_size = 16
workers = 0
"""


# ============================================================================= predict
CLASSES7 = list(LABEL_SPACES["basic7"])


def predict_run(root, size=32, align=None):
    """A run folder with what predict reads: config.json and model.pt (random init)."""
    import torch

    from fernoise import methods

    root.mkdir(parents=True)
    cfg = {
        "method": "ce",
        "classes": CLASSES7,
        "num_classes": 7,
        "two_heads": False,
        "image_size": size,
        "align": align,
        "key": "k",
    }
    (root / "config.json").write_text(json.dumps(cfg))
    torch.save(
        methods.build_model(methods.create("ce", num_classes=7)).state_dict(), root / "model.pt"
    )
    return root


# ============================================================================= evaluate
def history(test, val=None, warm=0, **extra):
    """metrics.jsonl rows: ``test``/``val`` accuracies, the first ``warm`` epochs warm-up, and
    each ``extra`` field's per-epoch values."""
    rows = []
    for i, t in enumerate(test):
        r = {
            "epoch": i + 1,
            "warmup": i < warm,
            "test_acc": t,
            "val_acc": None if val is None else val[i],
        }
        for k, v in extra.items():
            r[k] = v[i]
        rows.append(r)
    return rows


def eval_manifest(
    root, n_test=40, n_train=12, classes=CLASSES7, key="mkey-test", label_space="basic7", size=32
):
    """A manifest with generated 32x32 PNG crops; test rows cycle through the classes."""
    rng = np.random.default_rng(0)
    (root / "faces").mkdir(parents=True, exist_ok=True)
    rows = []
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            c = i % len(classes)
            arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            arr[..., c % 3] = 30 * c
            rel = f"faces/{split}_{i:03d}.png"
            Image.fromarray(arr).save(root / rel)
            rows.append(
                {
                    "id": f"{split}_{i}",
                    "src_path": f"{split}_{i}.jpg",
                    "path": rel,
                    "split": split,
                    "label": c,
                    "label_name": classes[c],
                    "status": "ok",
                    "n_faces": 1,
                }
            )
    # rows eval must skip: unlabelled, no crop
    rows.append(
        {
            "id": "u",
            "src_path": "u.jpg",
            "path": rows[-1]["path"],
            "split": "test",
            "label": None,
            "label_name": None,
            "status": "ok",
            "n_faces": 1,
        }
    )
    rows.append(
        {
            "id": "nf",
            "src_path": "nf.jpg",
            "path": None,
            "split": "test",
            "label": 1,
            "label_name": "happy",
            "status": "no_face",
            "reason": "no face",
            "n_faces": 0,
        }
    )
    path = root / "manifest.parquet"
    write_manifest(
        pd.DataFrame(rows),
        path,
        {
            "classes": list(classes),
            "label_space": label_space,
            "key": key,
            "stage": "align",
            "lineage": [],
        },
    )
    return path


def eval_run(
    root,
    manifest,
    *,
    method="ncctfer",
    noise=None,
    epochs=6,
    warmup=2,
    test=None,
    val=None,
    noisy=True,
    classes=CLASSES7,
    size=32,
    with_model=True,
    key=None,
):
    """A run directory as `fernoise train` writes it, with a random-init FerNet as model.pt."""
    root.mkdir(parents=True, exist_ok=True)
    c = len(classes)
    two = method == "ncctfer"
    cfg = {
        "method": method,
        "epochs": epochs,
        "batch_size": 8,
        "image_size": size,
        "warmup": warmup,
        "k": 4,
        "lr_backbone": 1e-3,
        "lr_head": 1e-3,
        "randaug_magnitude": 10,
        "pretrained": None,
        "seed": 0,
        "precision": "fp32",
        "device": "cpu",
        "val_fraction": 0.1,
        "manifest": str(manifest),
        "manifest_key": "mkey-test",
        "classes": list(classes),
        "label_space": "basic7" if c == 7 else "basic8",
        "num_classes": c,
        "two_heads": two,
        "noise": noise,
        "align": None,
        "key": key or f"runkey-{root.name}",
    }
    (root / "config.json").write_text(json.dumps(cfg, sort_keys=True, indent=2))
    test = test or [0.2, 0.3, 0.45, 0.4, 0.42, 0.41][:epochs]
    val = val or [0.21, 0.33, 0.40, 0.44, 0.43, 0.40][:epochs]
    lines = []
    for e in range(epochs):
        w = e < warmup
        sel = method in ("pc", "ncctfer") and not w
        lines.append(
            json.dumps(
                {
                    "epoch": e + 1,
                    "warmup": w,
                    "loss": 2.0 - 0.1 * e,
                    "loss_s": None if w else 1.5 - 0.1 * e,
                    "loss_c": (0.3 - 0.02 * e) if (two and not w) else None,
                    "train_acc": 0.2 + 0.05 * e,
                    "lr_backbone": 1e-3,
                    "lr_head": 1e-3,
                    "thresholds": [0.2 + 0.02 * e + 0.03 * k for k in range(c)] if sel else None,
                    "confident_frac": 0.5 + 0.01 * e if sel else None,
                    "confident_precision": (0.7 + 0.03 * e) if (sel and noisy) else None,
                    "confident_recall": (0.5 + 0.02 * e) if (sel and noisy) else None,
                    "val_acc": val[e],
                    "test_acc": test[e],
                    "images_per_s": 100.0,
                    "seconds": 1.0,
                }
            )
        )
    (root / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if with_model:
        import torch

        from fernoise import methods

        torch.save(
            methods.build_model(methods.create(method, num_classes=c)).state_dict(),
            root / "model.pt",
        )
    return root


def stamped_run(tmp_path, **kw):
    """A fake run whose model.pt is stamped as `fernoise train` stamps it: (manifest, run)."""
    from fernoise.cache import write_stamp

    man = eval_manifest(tmp_path / "data", n_test=14, **kw)
    run = eval_run(tmp_path / "runs" / "r1", man, method="ce")
    write_stamp(run / "model.pt", "runkey-r1", [run / "model.pt", run / "config.json"])
    return man, run


def eval_cli(*args):
    """``fernoise eval ARGS`` in this process (typer's CliRunner)."""
    from typer.testing import CliRunner

    from fernoise.cli.app import app

    return CliRunner().invoke(app, ["eval", *map(str, args)])


# ============================================================================= report
def fake_run(
    path, method, noise, test, val=None, *, seed=0, dataset="A", lineage=None, sel=None, **extra
):
    """A run folder with only what report reads: config.json and metrics.jsonl.

    ``dataset`` names the align key the run's data derives from (recorded as the lineage in
    config.json); ``extra`` overrides config fields; ``sel``: per-epoch (precision, recall).
    """
    path.mkdir(parents=True)
    if lineage is None:
        lineage = [{"stage": "align", "key": f"align-{dataset}", "params": {}}]
        if noise:
            lineage.append(
                {"stage": "corrupt", "key": f"c-{dataset}-{json.dumps(noise)}", "params": noise}
            )
    cfg = {
        "method": method,
        "noise": noise,
        "classes": ["neutral", "happy"],
        "image_size": 32,
        "key": path.name,
        "seed": seed,
        "epochs": len(test),
        "lr_head": 1e-3,
        "manifest": f"/nowhere/{dataset}/manifest.parquet",
        "val_source": "none" if val is None else "carved",
        "val_fraction": None if val is None else 0.1,
        "lineage": lineage,
        "device": "cpu",
        **extra,
    }
    (path / "config.json").write_text(json.dumps(cfg))
    lines = []
    for i, t in enumerate(test):
        row = {"epoch": i + 1, "test_acc": t, "val_acc": None if val is None else val[i]}
        if sel:
            row["confident_precision"], row["confident_recall"] = sel[i]
        lines.append(json.dumps(row))
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return path


SYM = {"kind": "sym", "rate": 0.3, "seed": 0}
SYM5 = {"kind": "sym", "rate": 0.5, "seed": 0}


# ============================================================================= align
def make_image(path: Path, size=(40, 40), colour=(120, 80, 40)) -> Path:
    """A plain-colour RGB image at ``path`` (its folder made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def raw_tree(root: Path, n: int = 4) -> Path:
    """A raw folder of ``n`` plain images under ``root/happy/``."""
    for i in range(n):
        make_image(root / "happy" / f"img{i}.png", colour=(20 * i, 50, 200))
    return root


def align_cli(*args: str):
    """``fernoise align ARGS`` in this process (typer's CliRunner)."""
    from typer.testing import CliRunner

    from fernoise.cli.app import app

    return CliRunner().invoke(app, ["align", *args])


# ============================================================================= corrupt
C8 = list(LABEL_CLASSES)
C7 = list(LABEL_CLASSES[:7])
# training rows per class: many end in .5 at rate 0.3 (0.3*805 = 241.5, 0.3*15 = 4.5, ...),
# so the half-up rule is exercised; contempt is rare, as in FER+.
TRAIN_COUNTS = [805, 615, 285, 280, 195, 15, 55, 25]


def corrupt_df(counts=TRAIN_COUNTS, *, n_eval: int = 300, seed: int = 0) -> pd.DataFrame:
    """Training rows with ``counts`` per class, ``n_eval`` val and test rows (some unlabelled),
    a few unlabelled training rows, a shuffled row order, and a second annotation ``second``."""
    rng = np.random.default_rng(seed)
    n_classes = len(counts)
    labels = [np.full(k, c) for c, k in enumerate(counts)]
    train = np.concatenate(labels).astype(float)
    train = np.concatenate([train, [np.nan] * 7])  # unlabelled training rows never change
    evals = rng.integers(0, n_classes, size=2 * n_eval).astype(float)
    evals[::17] = np.nan
    label = np.concatenate([train, evals])
    split = ["train"] * len(train) + ["val"] * n_eval + ["test"] * n_eval
    n = len(label)
    ids = [f"img{i:05d}.jpg" for i in rng.permutation(n)]
    df = pd.DataFrame(
        {
            "id": ids,
            "src_path": ids,
            "path": [f"faces/{i}" for i in ids],
            "split": split,
            "label": pd.array([None if np.isnan(v) else int(v) for v in label], dtype="Int64"),
            "status": "ok",
            "n_faces": 1,
        }
    )
    df["label_name"] = [None if pd.isna(v) else LABEL_CLASSES[int(v)] for v in df["label"]]
    # a second annotation agreeing on ~70% of rows, as class names (aliases), with some nulls
    second = np.where(
        rng.random(n) < 0.7, np.nan_to_num(label, nan=0), rng.integers(0, n_classes, size=n)
    )
    aliases = {
        0: "Neutral",
        1: "happiness",
        2: "sad",
        3: "surprised",
        4: "fear",
        5: "disgust",
        6: "angry",
        7: "contempt",
    }
    names = [aliases[int(v)] for v in second]
    for i in range(0, n, 41):
        names[i] = None
    df["second"] = names
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def corrupt_manifest(path, classes=C8, *, df=None, key="alignkey0", **kw):
    """An `align`-stage manifest at ``path`` (no images) of ``df`` or ``corrupt_df(**kw)``."""
    df = corrupt_df(**kw) if df is None else df
    space = "basic8" if len(classes) == 8 else "basic7"
    return write_manifest(
        df, path, {"classes": list(classes), "label_space": space, "stage": "align", "key": key}
    )


# ============================================================================= any command
def cli(*args, **kw):
    """``fernoise ARGS`` (each turned to str) in this process (typer's CliRunner)."""
    from typer.testing import CliRunner

    from fernoise.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args], **kw)


# ----------------------------------------------------------------------------- --pretrained starts
RUNNING = ("running_mean", "running_var", "num_batches_tracked")


def resnet18_state(seed: int) -> dict:
    """A seeded torchvision ResNet-18 state dict (torchvision layout, fc included)."""
    import torch
    from torchvision.models import resnet18

    torch.manual_seed(seed)
    return resnet18(weights=None).state_dict()


def run_of(res, *, hit: bool = False) -> Path:
    """The run folder of a CLI result's last line, ``wrote: PATH`` (``cache hit: PATH``)."""
    assert res.exit_code == 0, res.output
    tag, _, path = res.output.strip().splitlines()[-1].partition(": ")
    assert tag == ("cache hit" if hit else "wrote"), res.output
    run = Path(path)
    assert (run / "model.pt").is_file(), res.output
    return run


# ============================================================================= audit
def fake_audit(
    root: Path,
    manifest: Path,
    *,
    issues=None,
    quality=None,
    suggested=None,
    workspace: Path | None = None,
    tag: str = "",
) -> Path:
    """An audit folder ``root/audits/<key16>/`` of ``manifest``'s labelled train rows, as
    ``fernoise audit`` writes it (audit.parquet, audit.json, joint.csv, and the stamp
    ``fernoise.cache.write_stamp`` writes for the main output ``audit.parquet``); recorded in
    ``workspace``'s lock as stage ``audit`` when given.

    ``quality``: ``{id: q}`` (default: seeded, below 0.3 on ``is_noisy`` rows, 0.4..1 on the
    others); ``suggested``: ``{id: class index}`` (default: ``label_clean`` when the manifest
    has it, else the given label, moved on by one where quality < 0.3); ``issues``: the ids
    flagged, or an int n: the n lowest-quality rows (default: quality < 0.3). ``tag`` changes
    the key (two audits of one manifest)."""
    from fernoise.cache import Workspace, file_sha256, stage_key, write_stamp
    from fernoise.manifest import read_manifest

    m = read_manifest(manifest)
    classes = m.classes
    C = len(classes)
    rows = m.df[(m.df["split"] == "train") & m.df["label"].notna()].reset_index(drop=True)
    rng = np.random.default_rng(len(rows))
    noisy = rows["is_noisy"].astype(bool) if "is_noisy" in rows else pd.Series(False, rows.index)
    q = np.where(noisy, rng.uniform(0.0, 0.3, len(rows)), rng.uniform(0.4, 1.0, len(rows)))
    if quality is not None:
        q = np.array([quality.get(i, v) for i, v in zip(rows["id"], q, strict=True)])
    given = rows["label"].astype(int).to_numpy()
    if "label_clean" in rows:
        sug = rows["label_clean"].astype(int).to_numpy()
    else:
        sug = np.where(q < 0.3, (given + 1) % C, given)
    if suggested is not None:
        sug = np.array([suggested.get(i, v) for i, v in zip(rows["id"], sug, strict=True)])
    frame = pd.DataFrame({"id": rows["id"], "path": [str(m.root / p) for p in rows["path"]]})
    frame["given"] = given.astype(np.int64)
    frame["given_name"] = [classes[c] for c in given]
    frame["suggested"] = sug.astype(np.int64)
    frame["suggested_name"] = [classes[c] for c in sug]
    frame["quality"] = q.astype(np.float64)
    order = np.lexsort((frame["id"].to_numpy(), q))
    rank = np.empty(len(rows), dtype=np.int64)
    rank[order] = np.arange(1, len(rows) + 1)
    if issues is None:
        flagged = q < 0.3
    elif isinstance(issues, int):
        flagged = rank <= issues
    else:
        flagged = frame["id"].isin(list(issues)).to_numpy()
    frame["is_issue"] = flagged
    frame["rank"] = rank
    frame["fold"] = (np.arange(len(rows)) % 2).astype(np.int64)
    for k, c in enumerate(classes):
        rest = np.where(sug != given, np.where(sug == k, 1 - q, 0.0), (1 - q) / (C - 1))
        frame[f"p_{c}"] = np.where(given == k, q, rest)
    if "label_clean" in rows:
        frame["truth"] = rows["label_clean"].astype(int).to_numpy()
        frame["truth_name"] = [classes[c] for c in frame["truth"]]
        frame["is_wrong"] = frame["given"] != frame["truth"]
    frame = frame.sort_values("rank").reset_index(drop=True)

    sha = file_sha256(manifest)
    params = {"scorer": "cleanlab", "folds": 2, "filter_by": "prune_by_noise_rate", "tag": tag}
    key = stage_key("audit", 1, params, {"manifest": sha})
    folder = root / "audits" / key[:16]
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(folder / "audit.parquet", index=False)
    joint = np.zeros((C, C))
    np.add.at(joint, (given, sug), 1)
    joint /= max(joint.sum(), 1)
    per_class = frame[frame["is_issue"]]["given_name"].value_counts()
    summary = {
        "stage": "audit",
        "version": 1,
        "key": key,
        "manifest": str(Path(manifest).resolve()),
        "manifest_sha256": sha,
        "manifest_key": m.key,
        "dataset": m.meta.get("dataset", "synthetic"),
        "classes": classes,
        "scorer": "cleanlab",
        "filter_by": "prune_by_noise_rate",
        "folds": 2,
        "group_column": None,
        "train": {"method": "ce", "epochs": 1},
        "runs": [],
        "rows": len(frame),
        "issues": int(frame["is_issue"].sum()),
        "issues_per_class": {str(k): int(v) for k, v in per_class.items()},
        "top_pairs": [],
        "joint": joint.tolist(),
        "truth": None,
        "seconds": {"total": 0.0, "training": 0.0},
    }
    (folder / "audit.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    pd.DataFrame(joint, index=classes, columns=classes).to_csv(folder / "joint.csv")
    outputs = [folder / n for n in ("audit.parquet", "audit.json", "joint.csv")]
    write_stamp(folder / "audit.parquet", key, outputs, stage="audit", params=params)
    if workspace is not None:
        Workspace(workspace).record(
            "audit", key=key, output=folder / "audit.parquet", params=params
        )
    return folder
