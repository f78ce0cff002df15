"""kill -9 in the middle of `fernoise align`, then the same command: it resumes, and the
manifest equals that of an uninterrupted run."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fernoise.manifest import read_manifest

FERNOISE = [sys.executable, "-m", "fernoise.cli.app"]


def noise_images(root: Path, n: int = 20) -> None:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(n):
        side = 160 + 9 * i  # distinct sizes: every image is its own detection batch
        Image.fromarray(rng.integers(0, 256, (side, side + 5, 3), dtype=np.uint8)).save(
            root / f"n{i:02d}.png"
        )


def chunks(out: Path) -> list[Path]:
    return list((out / ".fernoise" / "align-records").glob("*/chunk-*.json"))


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted(tmp_path):
    raw = tmp_path / "raw"
    noise_images(raw)
    env = {**os.environ, "FERNOISE_WORKSPACE": str(tmp_path)}
    args = [
        "align",
        str(raw),
        "OUT",
        "--batch-size",
        "1",
        "--workers",
        "1",
        "--on-no-face",
        "whole",
        "--size",
        "64",
    ]

    def cmd(out: Path) -> list[str]:
        return FERNOISE + [str(out) if a == "OUT" else a for a in args]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        cmd(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while len(chunks(killed)) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(chunks(killed))
    assert 3 <= done_before < 20, "the run must be killed half-way"
    assert not (killed / "manifest.parquet").exists()

    res = subprocess.run(cmd(killed), env=env, capture_output=True, text=True, check=True)
    m = re.search(r"aligned (\d+) images, reused (\d+)", res.stdout)
    assert m, res.stdout
    assert int(m.group(2)) >= done_before and int(m.group(1)) + int(m.group(2)) == 20
    assert not chunks(killed)  # folded into records-all.json

    clean = tmp_path / "clean"
    subprocess.run(cmd(clean), env=env, capture_output=True, text=True, check=True)
    a, b = read_manifest(killed / "manifest.parquet"), read_manifest(clean / "manifest.parquet")
    pd.testing.assert_frame_equal(a.df, b.df)
    assert a.meta == b.meta
    assert set(a.df["status"]) == {"whole"} or (a.df["status"] == "ok").any()
    for p in a.df["path"]:
        assert (killed / p).read_bytes() == (clean / p).read_bytes()

    # the third run is a cache hit; a moved output folder keeps its cache
    shutil.move(killed, tmp_path / "moved")
    res = subprocess.run(
        cmd(tmp_path / "moved"), env=env, capture_output=True, text=True, check=True
    )
    assert "cache hit" in res.stdout
