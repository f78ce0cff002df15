"""SCN's per-row label store across kill -9 and resume: the resumed run equals an
uninterrupted one (tiny generated images, CPU)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from factories import SIZE, TIMING, make_manifest, read_metrics
from killing import kill_after_epochs, resume

from fernoise import methods
from fernoise.train.stage import TrainConfig, train


@pytest.mark.slow
def test_scn_kill_9_then_resume_equals_uninterrupted(tmp_path, workspace):
    data = make_manifest(tmp_path / "data", n=60, noise=0.4)
    env = {**os.environ, "FERNOISE_WORKSPACE": str(workspace)}
    flags = [
        "--method",
        "scn",
        "--epochs",
        "3",
        "--warmup",
        "0",
        "--batch-size",
        "16",
        "--image-size",
        str(SIZE),
        "--scn-relabel-epoch",
        "1",
        "--scn-relabel-margin",
        "0.05",
        "--scn-relabel-group",
        "all",
        "--keep-checkpoint",
    ]
    killed = [
        sys.executable,
        "-m",
        "fernoise.cli.app",
        "train",
        str(data),
        *flags,
        "--workers",
        "1",
        "--runs-dir",
        str(tmp_path / "a"),
    ]
    a = kill_after_epochs(killed, env, tmp_path / "a")  # mid-epoch 2
    assert not (a / "model.pt").exists()
    store_1 = torch.load(a / "checkpoint.pt", weights_only=True)["method_state"]["labels"]
    assert (store_1 >= 0).sum() > 0, "epoch 1 must relabel for the test to mean anything"
    resume(killed, env)
    cfg = TrainConfig(
        method="scn",
        method_params=methods.make_params(
            "scn",
            {"--scn-relabel-epoch": 1, "--scn-relabel-margin": 0.05, "--scn-relabel-group": "all"},
        ),
        epochs=3,
        warmup=0,
        batch_size=16,
        image_size=SIZE,
        workers=1,
        keep_checkpoint=True,
    )
    full = train(data, cfg, runs_dir=tmp_path / "b").output
    assert full.name == a.name

    def strip(run: Path) -> list[dict]:
        return [{k: v for k, v in m.items() if k not in TIMING} for m in read_metrics(run)]

    assert len(strip(a)) == 3 and strip(a) == strip(full)
    assert all(m["relabelled"] is not None for m in strip(a)) and strip(a)[0]["relabelled"] > 0
    assert strip(a)[0]["relabel_precision"] is not None  # the manifest has label_clean
    sa, sb = (
        torch.load(a / "model.pt", weights_only=True),
        torch.load(full / "model.pt", weights_only=True),
    )
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    la = torch.load(a / "checkpoint.pt", weights_only=True)["method_state"]["labels"]
    lb = torch.load(full / "checkpoint.pt", weights_only=True)["method_state"]["labels"]
    assert torch.equal(la, lb)
