"""The stage keys of one fixed configuration never change by accident.

A stage key names a cache entry and a run folder (``runs/<key[:16]>``): a key that changes
turns every user's cached manifests, runs and evaluations into misses. Each test below builds
one stage's key from fixed inputs through the code that makes it and compares it with a
literal.

The literals were captured on main 3b8e2b2 (before issue 20's layout change). They must never
change without a CHANGELOG.md entry that says which stage's key changed and why ("key").

The inputs are independent of image encoders and file formats: raw "images" are bytes this
file writes (the align key hashes the bytes, not the pixels), manifests carry a recorded key in
their metadata (so the Parquet bytes are never hashed) and content digests of fixed values,
and eval's inputs are fixed digests (a model file's bytes depend on torch). Align and eval are
stopped where they call the stage runner, so no image is decoded and no model is loaded.

Configurations: align with default AlignParams on three class-folder files; corrupt sym 0.25
seed 3; train ce (3 epochs, batch 4, size 32, seed 1) and ncctfer (--k 2, warmup 1,
--val-clean); pretrain simclr (2 epochs, batch 4, size 32); eval of the test split (cam 0) and
of the val split (cam 4). Train and pretrain on cpu, fp32.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fernoise.cache import stage_key
from fernoise.manifest import write_manifest

CLASSES = ["neutral", "happy", "sad"]

ALIGN_KEY = "a5969e3f96202f17f3f9fc62e9aef621be9a43876b503c11b09a3ea138d11169"
CORRUPT_KEY = "6f1f74b7656de3900871f07054021578cd224ba52be15ce76d4986e0c0986fe3"
TRAIN_KEY = "a3285b59f886010125a83bda23c682fc1f7e793c2d88ee0a562415e7c2db5050"
TRAIN_KEY_NCCTFER = "da2a3943008930e9b84d7c0425e17a8e0250822e67a3090df97a7f69d0fe21a4"
PRETRAIN_KEY = "a85d96ec103dcd879f05dc6474f6b25d4a18f7b63db84ff6764e5e6dacd0e411"
EVAL_KEY = "44203344ea6d60be03e3e0dd7cd1dc869ca3a1d28ca823c5e047de43e68027ef"
EVAL_KEY_VAL = "9c88d4790a947c10031acdcd5a00e272aec25966013c2de5e08ae35c552617f5"


def _manifest(root: Path, *, corrupted: bool) -> Path:
    """12 rows (8 train, 2 val, 2 test) with a recorded key; no crop is ever read."""
    rows = []
    for i in range(12):
        split = "train" if i < 8 else ("val" if i < 10 else "test")
        label = i % len(CLASSES)
        row = {
            "id": f"img/{i:02d}.jpg",
            "src_path": f"img/{i:02d}.jpg",
            "path": f"faces/{i:02d}.png",
            "split": split,
            "label": label,
            "status": "ok",
            "n_faces": 1,
        }
        if corrupted:
            row["label_clean"] = label
            row["is_noisy"] = False
        rows.append(row)
    meta = {
        "classes": CLASSES,
        "label_space": "basic7",
        "stage": "corrupt" if corrupted else "align",
        "key": "f" * 64 if corrupted else "a" * 64,
    }
    root.mkdir(parents=True, exist_ok=True)
    return write_manifest(pd.DataFrame(rows), root / "manifest.parquet", meta)


class _Captured(Exception):
    pass


def test_align_key(tmp_path, workspace, monkeypatch):
    """Default AlignParams, class folders, three 'images' of fixed bytes (never decoded: the
    key is taken where the stage runner is called)."""
    from fernoise.align import stage as align_stage

    raw = tmp_path / "raw"
    for i, (cls, name) in enumerate([("happy", "a.jpg"), ("happy", "b.png"), ("sad", "c.jpg")]):
        (raw / cls).mkdir(parents=True, exist_ok=True)
        (raw / cls / name).write_bytes(bytes([i]) * 100 + b"fernoise")
    seen = {}

    def capture(**kw):
        seen["key"] = stage_key(kw["stage"], kw["version"], kw["params"], kw["inputs"])
        raise _Captured

    monkeypatch.setattr(align_stage, "run_stage", capture)
    with pytest.raises(_Captured):
        align_stage.align_folder(raw, tmp_path / "out", workers=1, device="cpu")
    assert seen["key"] == ALIGN_KEY


def test_corrupt_key(tmp_path, workspace):
    from fernoise.corrupt.stage import run_corrupt

    src = _manifest(tmp_path / "d", corrupted=False)
    res = run_corrupt(src, kind="sym", rate=0.25, seed=3, out=tmp_path / "d" / "noisy.parquet")
    assert res.result.key == CORRUPT_KEY


def test_train_keys(tmp_path, workspace):
    from fernoise import methods
    from fernoise.train.config import TrainConfig
    from fernoise.train.plan import plan

    src = _manifest(tmp_path / "d", corrupted=True)
    cfg = TrainConfig(
        method="ce",
        epochs=3,
        warmup=0,
        batch_size=4,
        image_size=32,
        workers=0,
        precision="fp32",
        device="cpu",
        seed=1,
    )
    assert plan(src, cfg).key == TRAIN_KEY
    cfg = TrainConfig(
        method="ncctfer",
        method_params=methods.make_params("ncctfer", {"--k": 2}),
        epochs=2,
        warmup=1,
        batch_size=4,
        image_size=32,
        workers=0,
        precision="fp32",
        device="cpu",
        val_clean=True,
    )
    assert plan(src, cfg).key == TRAIN_KEY_NCCTFER


def test_pretrain_key(tmp_path, workspace):
    from fernoise.pretrain.stage import PretrainConfig, plan

    src = _manifest(tmp_path / "d", corrupted=False)
    cfg = PretrainConfig(
        epochs=2, image_size=32, batch_size=4, precision="fp32", device="cpu", workers=0
    )
    assert plan(src, cfg).key == PRETRAIN_KEY


def test_eval_keys(tmp_path, monkeypatch):
    """The eval key of a run: everything evaluate_run reads is fixed (a real model file's
    bytes depend on torch): the model's, content's and crops' digests as check_inputs
    returns them, the manifest's recorded key, the run's key and the history's bytes."""
    from fernoise.evaluate import stage as evaluate

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_bytes(b'{"epoch": 1, "test_acc": 0.5}\n')
    run = evaluate.Run(path=run_dir, config={"key": "6" * 64, "manifest_key": "3" * 64}, history=[])
    ref = evaluate.ManifestRef(path=tmp_path / "manifest.parquet", meta={"key": "3" * 64})
    monkeypatch.setattr(evaluate, "load_run", lambda path: run)
    monkeypatch.setattr(evaluate, "_manifest_for", lambda run, manifest: ref)
    monkeypatch.setattr(
        evaluate,
        "check_inputs",
        lambda run, ref, split, force=False: evaluate.Checked(
            model_sha256="1" * 64, content="4" * 64, crops="5" * 64, warnings=[]
        ),
    )
    seen = []

    def capture(**kw):
        seen.append(stage_key(kw["stage"], kw["version"], kw["params"], kw["inputs"]))
        raise _Captured

    from fernoise import cache

    monkeypatch.setattr(cache, "run_stage", capture)  # evaluate_run imports it when called
    for params in (
        evaluate.EvalParams(device="cpu"),
        evaluate.EvalParams(device="cpu", cam=4, split="val"),
    ):
        with pytest.raises(_Captured):
            evaluate.evaluate_run(run_dir, params)
    assert seen == [EVAL_KEY, EVAL_KEY_VAL]
