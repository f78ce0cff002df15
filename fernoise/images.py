"""Decoding aligned crops into uint8 arrays, and the normalisation every model input gets.

A crop named by a path is read only when it is a regular file of at most
``fernoise.safefiles.MAX_CROP_BYTES`` (a manifest row naming a FIFO or ``/dev/zero`` raises
:class:`fernoise.safefiles.UnsafeFile`, an ``OSError``, instead of hanging or reading for ever).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import BinaryIO

import numpy as np
from PIL import Image

from fernoise.safefiles import MAX_CROP_BYTES, open_regular

# ImageNet statistics: what torchvision's ResNet-18 and the MS-Celeb-1M ResNet-18 expect.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def load_rgb(path: str | os.PathLike | BinaryIO, size: int) -> np.ndarray:
    """One crop as a ``(size, size, 3)`` uint8 RGB array (greyscale is repeated to 3 channels).

    ``path`` is a path (a regular file only, see the module docstring) or an open binary file."""
    if isinstance(path, (str, os.PathLike)):
        with open_regular(path, MAX_CROP_BYTES) as fh:
            return load_rgb(fh, size)
    with Image.open(path) as im:
        rgb = im.convert("RGB")
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8)


def load_many(paths: Sequence[str | os.PathLike], size: int) -> np.ndarray:
    """Crops as one ``(N, size, size, 3)`` uint8 array."""
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        out[i] = load_rgb(p, size)
    return out


def to_tensor(batch: np.ndarray, device: str = "cpu", mean=MEAN, std=STD):
    """``(N, H, W, 3)`` uint8 -> normalised float ``(N, 3, H, W)`` tensor on ``device``:
    ``(x / 255 - mean) / std``, ImageNet statistics unless the backbone's are given."""
    import torch

    x = (
        torch.from_numpy(np.ascontiguousarray(batch))
        .to(device)
        .permute(0, 3, 1, 2)
        .float()
        .div_(255)
    )
    m = torch.tensor(tuple(mean), device=x.device).view(1, 3, 1, 1)
    sd = torch.tensor(tuple(std), device=x.device).view(1, 3, 1, 1)
    return (x - m) / sd


def normalisation_of(model) -> tuple:
    """``(mean, std)`` a model's inputs need: a ``fernoise.model.Classifier``'s (its backbone's),
    ImageNet's for any other module."""
    return getattr(model, "mean", MEAN), getattr(model, "std", STD)
