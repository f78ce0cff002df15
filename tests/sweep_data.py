"""Tiny aligned manifests for the sweep tests: 32 px PNGs whose class is a bright band."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from fernoise.manifest import write_manifest

CLASSES = ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"]
SIZE = 32


def make_aligned(
    root: Path, n: int = 56, *, key: str = "aligned-synthetic", extra_column: bool = False
) -> Path:
    """An ``align``-stage manifest of ``n`` rows (every 5th row test, the rest train), with
    clean labels; ``extra_column`` adds ``second_label`` (a second annotation, shifted by one
    class on every 4th row) for ``column`` noise."""
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
