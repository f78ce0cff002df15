"""The four stages in sequence, typed as a user types them, linked by the workspace lock."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

CLASSES = ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"]


def _fernoise(*args, cwd):
    cmd = [sys.executable, "-m", "fernoise.cli.app", *args]
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "FERNOISE_WORKSPACE": str(cwd), "COLUMNS": "200"},
    )
    assert proc.returncode == 0, f"{args}: {proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _raw(root, per_class=6):
    """raw/<split>/<class>/*.png: a class-dependent band so the labels mean something."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", 2)):
        for c, name in enumerate(CLASSES):
            folder = root / "raw" / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 60, (40, 40, 3)).astype(np.uint8)
                img[:, c * 5 : c * 5 + 5] += 150
                Image.fromarray(img).save(folder / f"{i}.png")


@pytest.mark.slow
def test_align_corrupt_train_eval_as_typed(tmp_path):
    _raw(tmp_path)
    out = _fernoise("align", "raw/", "out/", "--mode", "whole", "--size", "32", cwd=tmp_path)
    assert "out/manifest.parquet" in out
    out = _fernoise("corrupt", "--kind", "asym", "--rate", "0.3", cwd=tmp_path)
    assert "manifest.asym-r0.30-s0.parquet" in out
    noisy = pd.read_parquet(tmp_path / "out" / "manifest.asym-r0.30-s0.parquet")
    train = noisy[noisy.split == "train"]
    assert int(train.is_noisy.sum()) == 7 * round(0.3 * 6)  # 2 of each class's 6
    assert (noisy[noisy.split == "test"].label == noisy[noisy.split == "test"].label_clean).all()

    out = _fernoise(
        "train",
        "--method",
        "ncctfer",
        "--epochs",
        "2",
        "--warmup",
        "1",
        "--image-size",
        "32",
        "--batch-size",
        "16",
        "--k",
        "2",
        cwd=tmp_path,
    )
    lock = json.loads((tmp_path / "fernoise.lock").read_text())
    run = tmp_path / lock["stages"]["train"]["output"]
    assert run.name in out and (run / "model.pt").is_file()
    config = json.loads((run / "config.json").read_text())
    assert config["manifest"].endswith("manifest.asym-r0.30-s0.parquet")
    assert config["noise"]["kind"] == "asym" and config["align"]["mode"] == "whole"

    out = _fernoise("eval", cwd=tmp_path)
    assert "eval.json" in out
    result = json.loads((run / "eval.json").read_text())
    assert sum(map(sum, result["confusion_matrix"])) == 14  # the 14 test images
    assert set(lock["stages"]) == {"align", "corrupt", "train"}
    assert "eval" in json.loads((tmp_path / "fernoise.lock").read_text())["stages"]
