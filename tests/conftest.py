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


@pytest.fixture(scope="module")
def ferplus_manifest(tmp_path_factory):
    """160 train + 40 FER2013Valid (as test) rows of the real FERPlus crops, FER+ plurality
    labels, 8 classes: a manifest (crop paths absolute) written under a module temp folder.
    Use it only in modules marked ``needs(FERPLUS)``."""
    import pandas as pd

    from fernoise.labels import CLASSES, canonical_name
    from fernoise.manifest import write_manifest

    df = pd.read_csv(FERPLUS / "manifest.csv")
    df = df[~df["ferplus_plurality"].isin(["tie"]) & df["ferplus_plurality"].notna()]
    df = pd.concat(
        [
            df[df["split"] == "train"].nsmallest(160, "rand_rank"),
            df[df["split"] == "valid"].nsmallest(40, "rand_rank"),
        ]
    )
    labels = [CLASSES.index(canonical_name(x)) for x in df["ferplus_plurality"]]
    rows = pd.DataFrame(
        {
            "id": df["path"].tolist(),
            "src_path": df["path"].tolist(),
            "path": [str(FERPLUS / p) for p in df["path"]],
            "split": ["train" if s == "train" else "test" for s in df["split"]],
            "label": labels,
            "status": "ok",
            "n_faces": 1,
        }
    )
    out = tmp_path_factory.mktemp("ferplus") / "manifest.parquet"
    meta = {
        "classes": list(CLASSES),
        "label_space": "basic8",
        "stage": "align",
        "key": "ferplus-200",
        "lineage": [{"stage": "align", "key": "ferplus-200", "params": {"source": "ferplus"}}],
    }
    return write_manifest(rows, out, meta)
