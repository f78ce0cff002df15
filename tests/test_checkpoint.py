"""train and pretrain write their checkpoints through one function (``fernoise.checkpoint``):
a full disk is one line and no temporary file is left, in pretrain as in train."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from factories import make_manifest


@pytest.mark.slow
def test_a_full_disk_in_pretrain_is_one_line(tmp_path, workspace):
    data = make_manifest(tmp_path / "d", n=40)
    # 4 MB: config and metrics fit, checkpoint.pt (two ResNet-18s, ~90 MB) does not; a write past
    # RLIMIT_FSIZE fails with EFBIG, as on a full disk.
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))\n"
        "from fernoise.cli.app import app\n"
        "app(sys.argv[1:], prog_name='fernoise')\n"
    )
    env = {**os.environ, "FERNOISE_WORKSPACE": str(workspace), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "pretrain",
            str(data),
            "--epochs",
            "1",
            "--image-size",
            "32",
            "--batch-size",
            "16",
            "--device",
            "cpu",
            "--precision",
            "fp32",
        ],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 1, res.stdout + res.stderr  # a write the destination refused
    err = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("warning: ")]
    assert len(err) == 1 and "Traceback" not in res.stderr, res.stderr
    assert (
        err[0].startswith("error: could not write ") and "checkpoint.pt: file too large" in err[0]
    ), err[0]
    assert "re-run the same command" in err[0], err[0]
    assert not [p for p in (workspace / "pretrain").rglob("*") if ".tmp" in p.name], (
        "a temporary file is left"
    )
    assert not list((workspace / "pretrain").rglob("backbone.pt"))
