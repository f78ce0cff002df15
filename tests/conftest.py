"""Shared fixtures: where the real data lives, and a workspace in tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Before any test imports torch: idle OpenMP threads sleep instead of spinning, so tests (and
# other processes) sharing 2 cores do not starve each other (train tests measured ~3x faster).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SHARED = Path(
    os.environ.get("FERNOISE_SHARED", Path(__file__).resolve().parents[1] / ".." / "shared")
).resolve()
DATA = SHARED / "data"
WILD = DATA / "wild"
FERPLUS = DATA / "ferplus"


def needs(path: Path):
    """Mark a test as needing real data at ``path``; it skips cleanly when that is absent."""
    return [
        pytest.mark.shared_data,
        pytest.mark.skipif(not path.exists(), reason=f"real data not present: {path}"),
    ]


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """Run inside tmp_path so the stage lock file lands there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FERNOISE_WORKSPACE", str(tmp_path))
    return tmp_path
