"""Methods in the real loop on tiny generated images: ELR's per-sample state survives kill -9,
a per-sample store of the wrong size starts the run over, and method flags fail in one line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from factories import SIZE, TIMING, make_manifest, nothing_written, read_metrics
from killing import kill_after_epochs, resume
from typer.testing import CliRunner

from fernoise import methods
from fernoise.cli.app import app
from fernoise.train.stage import TrainConfig, train


def _strip(run: Path) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in TIMING} for m in read_metrics(run)]


@pytest.mark.slow
def test_elr_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path, workspace):
    data = make_manifest(tmp_path / "data", n=60)
    env = {**os.environ, "FERNOISE_WORKSPACE": str(workspace)}
    args = [
        sys.executable,
        "-m",
        "fernoise.cli.app",
        "train",
        str(data),
        "--method",
        "elr",
        "--epochs",
        "3",
        "--warmup",
        "1",
        "--batch-size",
        "16",
        "--image-size",
        str(SIZE),
        "--workers",
        "0",
        "--lr-backbone",
        "1e-3",
        "--elr-lambda",
        "2",
        "--keep-checkpoint",
        "--runs-dir",
        str(tmp_path / "a"),
    ]
    a = kill_after_epochs(
        args, env, tmp_path / "a", epochs=2
    )  # mid-epoch 3: the targets hold 2 epochs
    assert not (a / "model.pt").exists()
    resume(args, env)
    cfg = TrainConfig(
        method="elr",
        method_params=methods.make_params("elr", {"--elr-lambda": 2.0}),
        epochs=3,
        warmup=1,
        batch_size=16,
        image_size=SIZE,
        workers=0,
        lr_backbone=1e-3,
        keep_checkpoint=True,
    )
    full = train(data, cfg, runs_dir=tmp_path / "b").output
    assert full.name == a.name
    sa, sb = _strip(a), _strip(full)
    assert len(sa) == 3 and sa == sb and all(m["loss_elr"] < 0 for m in sa[1:])
    ma, mb = (
        torch.load(a / "model.pt", weights_only=True),
        torch.load(full / "model.pt", weights_only=True),
    )
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    ca, cb = (
        torch.load(r / "checkpoint.pt", weights_only=True) for r in (a, full)
    )  # --keep-checkpoint
    assert torch.equal(ca["method_state"]["targets"], cb["method_state"]["targets"])
    assert ca["method_state"]["targets"].shape == (60, 7)


@pytest.mark.slow
def test_a_per_sample_store_of_the_wrong_size_starts_over_and_says_so(tmp_path, workspace):
    data = make_manifest(tmp_path / "data", n=40)
    cfg = TrainConfig(
        method="elr",
        epochs=1,
        warmup=0,
        batch_size=16,
        image_size=SIZE,
        workers=0,
        keep_checkpoint=True,
    )
    run = train(data, cfg, runs_dir=tmp_path / "runs").output
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    first = _strip(run)
    ckpt["method_state"] = {"targets": torch.zeros(41, 7)}  # one row too many
    ckpt["metrics"][0]["loss"] = 99.0  # a resumed run would keep this
    torch.save(ckpt, run / "checkpoint.pt")
    (run / "model.pt").unlink()
    events = []
    train(data, cfg, runs_dir=tmp_path / "runs", progress=events.append)
    said = [e["message"] for e in events if e["event"] == "warning"]
    assert any(
        "per-sample state of elr does not match the 40 rows" in w and "starts over" in w
        for w in said
    )
    assert not [e for e in events if e["event"] == "resume"]
    assert _strip(run) == first  # trained again from the start: the same numbers, not 99


def run_cli(args):
    return CliRunner().invoke(app, ["train", *args])


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--method", "ce", "--gce-q", "0.5"], ["--gce-q", "--method gce", "--method ce"]),
        (["--method", "gce", "--k", "3"], ["--k", "--method ncctfer", "--method gce"]),
        (["--method", "ncctfer", "--batch-size", "1"], ["--batch-size", "2 views", "weak, strong"]),
        (["--method", "ncctfer", "--threshold", "whole"], ["--threshold", "labelled, batch"]),
        (["--method", "elr", "--elr-beta", "1"], ["--elr-beta"]),
        (["--method", "mixup"], ["--method", "ce: cross-entropy", "elr: early-learning"]),
    ],
)
def test_method_flag_errors_are_one_line(extra, words, tmp_path, workspace):
    data = make_manifest(tmp_path / "data", n=20)
    res = run_cli([str(data), "--image-size", str(SIZE), *extra])
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "error" in lines[0]
    assert all(w in lines[0] for w in words), lines[0]
    assert nothing_written(workspace)


@pytest.mark.slow
def test_method_params_are_recorded_and_keyed(tmp_path, workspace):
    data = make_manifest(tmp_path / "data", n=40)
    base = [
        "--method",
        "gce",
        "--epochs",
        "1",
        "--warmup",
        "0",
        "--batch-size",
        "16",
        "--image-size",
        str(SIZE),
        "--workers",
        "0",
        "--precision",
        "fp32",
    ]
    a = run_cli([str(data), *base])
    b = run_cli([str(data), *base, "--gce-q", "0.5"])
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    ra, rb = (Path(r.output.strip().splitlines()[-1].split(": ", 1)[1]) for r in (a, b))
    assert ra != rb  # a method flag changes the key
    ca, cb = (json.loads((r / "config.json").read_text()) for r in (ra, rb))
    assert ca["method_params"] == {"q": 0.7} and cb["method_params"] == {"q": 0.5}
    assert (
        ca["lr_backbone"] == 1e-4 and ca["lr_head"] == 1e-3 and ca["weight_decay"] == 0.0
    )  # gce's defaults
    assert ca["heads"] == ["pcc"] and ca["views"] == ["weak"] and ca["k"] is None
    assert read_metrics(rb)[0]["loss_gce"] is not None


@pytest.mark.slow
def test_elr_targets_agree_across_two_gloo_processes(tmp_path, workspace):
    """Each process updates the targets of its own batches; after the epoch they are merged, so
    the checkpoint holds every trained row's target and nothing for the others."""
    data = make_manifest(tmp_path / "d", n=70)
    cfg = TrainConfig(
        method="elr",
        epochs=1,
        warmup=0,
        batch_size=16,
        image_size=SIZE,
        workers=0,
        precision="fp32",
        devices=2,
        keep_checkpoint=True,
    )
    run = train(data, cfg, runs_dir=workspace / "runs").output
    config = json.loads((run / "config.json").read_text())
    t = torch.load(run / "checkpoint.pt", weights_only=True)["method_state"]["targets"]
    assert t.shape == (70, 7)
    trained = t.sum(dim=1) > 0
    # Every training row was seen once (by one process, or by both for the padding row), and
    # from a zero start its target is (1 - beta) = 0.3 of a distribution: rows sum to 0.3.
    assert int(trained.sum()) == config["n_train"]
    assert torch.allclose(t[trained].sum(dim=1), torch.full((config["n_train"],), 0.3), atol=1e-5)


def test_the_loop_logs_relabelling_and_trains_on_the_method_labels(tmp_path, workspace):
    """A method of this test (a real plugin) relabels the even rows to ``(y + 1) % C`` from
    epoch 2; the loop counts them and scores them against ``label_clean``."""
    from fernoise.methods import LossOut, Method, OptimDefaults, register

    @register
    class Shift(Method):
        name = "test-shift"
        summary = "test plugin: relabels even rows"
        source = repo = "tests/test_methods_train.py"
        face_pretrained = False
        optim = OptimDefaults(lr_backbone=1e-4, lr_head=1e-3)
        relabels = True

        def loss(self, model, views, y, idx, *, epoch, warm, gen):
            if warm:
                return self.warmup_loss(model, views, y)
            new = torch.where(idx.to(y.device) % 2 == 0, (y + 1) % self.num_classes, -1)
            trained = torch.where(new >= 0, new, y)
            out = self.warmup_loss(model, views, trained)
            return LossOut(out.loss, out.parts, out.logits, relabelled=new, labels=trained)

    try:
        data = make_manifest(tmp_path / "d", n=60)
        cfg = TrainConfig(
            method="test-shift",
            epochs=2,
            warmup=1,
            batch_size=16,
            image_size=SIZE,
            workers=0,
            val_fraction=0.0,
        )
        run = train(data, cfg, runs_dir=workspace / "runs").output
        m = read_metrics(run)
        import pandas as pd

        df = pd.read_parquet(data)
        rows = df[df["split"] == "train"].reset_index()  # every row is usable: positions = index
        even = rows[rows["index"] % 2 == 0]
        right = int((((even["label"] + 1) % 7) == even["label_clean"]).sum())
        assert m[0]["relabelled"] == 0 and m[0]["relabel_precision"] is None  # warm-up: none yet
        assert m[1]["relabelled"] == len(even)
        assert m[1]["relabel_precision"] == pytest.approx(right / len(even))
    finally:
        methods._REGISTRY.pop("test-shift", None)
