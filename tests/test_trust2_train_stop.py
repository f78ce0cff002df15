"""Issue 19, items 5 and 10: a non-finite loss or start stops training with one line, and a
full disk while training is one line that leaves nothing half-written; the run resumes after."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from factories import SIZE, make_manifest
from typer.testing import CliRunner

from fernoise.cache import stamp_path
from fernoise.cli.app import app

ARGS = [
    "--method",
    "ce",
    "--epochs",
    "1",
    "--warmup",
    "0",
    "--batch-size",
    "8",
    "--image-size",
    str(SIZE),
    "--workers",
    "0",
    "--precision",
    "fp32",
    "--device",
    "cpu",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_manifest(tmp_path_factory.mktemp("stop_data"), n=30)


def _lines(res) -> list[str]:
    return [ln for ln in res.output.splitlines() if ln.strip()]


def _tmp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*.tmp")]


def _nothing_finished(runs: Path) -> None:
    assert not list(runs.rglob("model.pt")), "a model.pt was written"
    assert not list(runs.rglob("model.pt.stamp.json")), "a finished stamp was written"
    assert not list(runs.glob(".fernoise/index/*.json")), "a run-index entry was written"


# ----------------------------------------------------------------------------- 5: NaN never passes
def test_a_nan_start_is_refused_up_front_naming_the_file(data, tmp_path, workspace):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    state = resnet18(weights=None).state_dict()
    state["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    start = tmp_path / "nan_start.pth"
    torch.save(state, start)
    res = CliRunner().invoke(app, ["train", str(data), *ARGS, "--pretrained", str(start)])
    assert res.exit_code == 2, res.output
    err = [ln for ln in _lines(res) if ln.startswith("error:")]
    assert len(err) == 1, res.output
    assert str(start) in err[0] and "non-finite" in err[0] and "layer2.0.conv1.weight" in err[0]
    assert "epoch" not in res.output  # refused before any training
    _nothing_finished(workspace / "runs")


def test_a_finite_start_that_overflows_at_once_is_named_as_the_cause(data, tmp_path, workspace):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    state = resnet18(weights=None).state_dict()
    state["layer4.1.bn2.weight"].fill_(
        3e38
    )  # finite, but the logits overflow: the loss is NaN at step 1
    start = tmp_path / "huge_start.pth"
    torch.save(state, start)
    res = CliRunner().invoke(app, ["train", str(data), *ARGS, "--pretrained", str(start)])
    assert res.exit_code == 2, res.output
    err = [ln for ln in _lines(res) if ln.startswith("error:")]
    assert len(err) == 1, res.output
    assert "non-finite loss" in err[0] and "epoch 1, step 1 of 3" in err[0], err[0]
    assert f"the start --pretrained {start}" in err[0], err[0]
    _nothing_finished(workspace / "runs")


def test_a_non_finite_loss_stops_the_run_naming_epoch_and_step(data, workspace):
    # An absurd learning rate: the first step's update overflows the weights, the second loss is NaN.
    args = [*ARGS, "--epochs", "2", "--lr-backbone", "1e30", "--lr-head", "1e30"]
    res = CliRunner().invoke(app, ["train", str(data), *args])
    assert res.exit_code == 2, res.output
    err = [ln for ln in _lines(res) if ln.startswith("error:")]
    assert len(err) == 1, res.output
    assert "non-finite loss" in err[0] and "epoch 1, step 2 of 3" in err[0], err[0]
    assert "loss nan" not in res.output  # no epoch was reported as trained
    _nothing_finished(workspace / "runs")
    (run,) = [p for p in (workspace / "runs").iterdir() if p.is_dir() and p.name != ".fernoise"]
    assert not (run / "checkpoint.pt").exists()  # no good epoch to keep
    assert (run / "metrics.jsonl").read_text() == ""
    # The same command again is no cache hit: it fails the same way.
    again = CliRunner().invoke(app, ["train", str(data), *args])
    assert again.exit_code == 2 and "non-finite loss" in again.output
    rep = CliRunner().invoke(app, ["report", str(workspace / "runs")])
    assert "left out 1 unfinished run(s)" in rep.output, rep.output  # never reported as a result


# ----------------------------------------------------------------------------- 10: a full disk
def _train_limited(
    data: Path, ws: Path, limit: int | None, *extra: str
) -> subprocess.CompletedProcess:
    """``fernoise train`` in a subprocess whose files may not grow past ``limit`` bytes
    (RLIMIT_FSIZE, SIGXFSZ ignored: a write past it fails with EFBIG, as on a full disk)."""
    code = (
        "import resource, signal, sys\n"
        "limit = int(sys.argv[1])\n"
        "if limit:\n"
        "    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))\n"
        "from fernoise.cli.app import app\n"
        "app(sys.argv[2:], prog_name='fernoise')\n"
    )
    env = {**os.environ, "FERNOISE_WORKSPACE": str(ws), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", code, str(limit or 0), "train", str(data), *ARGS, *extra],
        cwd=ws,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_a_full_disk_writing_the_checkpoint_is_one_line_and_the_rerun_trains(data, workspace):
    # 4 MB: the config, metrics and the image cache fit, checkpoint.pt (~135 MB) does not.
    res = _train_limited(data, workspace, 4 << 20)
    assert res.returncode == 1, (
        res.stdout + res.stderr
    )  # a write the destination refused (errors.destination_error)
    err = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and "Traceback" not in res.stderr, res.stderr
    assert err[0].startswith("error: could not write ") and "checkpoint.pt:" in err[0], err[0]
    assert (
        "file size limit" in err[0] and "re-run the same command" in err[0]
    )  # EFBIG, kept past torch's writer
    assert _tmp_files(workspace) == []
    _nothing_finished(workspace / "runs")
    # Space freed: the same command trains to the end.
    ok = _train_limited(data, workspace, None)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (run,) = {p.parent for p in (workspace / "runs").rglob("model.pt")}
    assert stamp_path(run / "model.pt").is_file()
    assert _tmp_files(workspace) == []


@pytest.mark.slow
def test_a_full_disk_writing_the_image_cache_is_one_line(data, workspace):
    # 64 KB: the image cache of 30 crops at 32 px (92 KB) does not fit.
    res = _train_limited(data, workspace, 64 << 10)
    assert res.returncode == 1, res.stdout + res.stderr
    err = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and "Traceback" not in res.stderr, res.stderr
    assert (
        err[0].startswith("error: could not write ") and ".npy:" in err[0] and "arrays" in err[0]
    ), err[0]
    assert _tmp_files(workspace) == []
    assert not list((workspace / ".fernoise" / "arrays").glob("*.npy"))


def test_a_full_disk_writing_model_pt_resumes_from_the_last_checkpoint(
    data, workspace, monkeypatch
):
    import errno

    real = torch.save

    def save(obj, f, *a, **kw):
        if ".model.pt." in getattr(getattr(f, "f", f), "name", str(f)):  # save_torch's file
            f.write(b"PK\x03\x04partial")  # half a file, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", save)
    res = CliRunner().invoke(app, ["train", str(data), *ARGS, "--epochs", "2"])
    assert res.exit_code == 1, res.output
    err = [ln for ln in _lines(res) if ln.startswith("error:")]
    assert len(err) == 1 and "could not write" in err[0] and "model.pt: no space left" in err[0], (
        res.output
    )
    _nothing_finished(workspace / "runs")
    assert _tmp_files(workspace) == []
    (ckpt,) = (workspace / "runs").rglob("checkpoint.pt")
    monkeypatch.setattr(torch, "save", real)
    ok = CliRunner().invoke(app, ["train", str(data), *ARGS, "--epochs", "2"])
    assert ok.exit_code == 0, ok.output
    assert "resuming" in ok.output and "after epoch 2" in ok.output
    assert (ckpt.parent / "model.pt").is_file() and not ckpt.exists()
    assert len((ckpt.parent / "metrics.jsonl").read_text().splitlines()) == 2
    assert json.loads((ckpt.parent / "config.json").read_text())["epochs"] == 2
