"""Per-sample training views of SCN, RUL and EAC, by name (docs/methods.md, "Their views").

Every view function takes one ``(H, W, 3)`` uint8 RGB image and a ``numpy.random.Generator``
and returns a ``(3, H, W)`` uint8 tensor; all randomness comes from that generator, so a
view depends only on (seed, epoch, sample) however the data code schedules it. The shared
data code normalises (ImageNet statistics) afterwards, on the training device.

Views (``VIEWS``):

- ``scn``: the SCN and RUL training view. As ``RafDataSet.__getitem__`` in
  kaiwang960112/Self-Cure-Network ``src/train.py`` (and RUL's ``src/dataset.py``): with
  probability 0.5 one of {horizontal flip, Gaussian noise} chosen uniformly (so each 0.25,
  nothing 0.5), then ``RandomErasing(scale=(0.02, 0.25))`` with its defaults p=0.5,
  ratio=(0.3, 3.3).
- ``eac1``: EAC's first view (zyh-uaiaaaa/Erasing-Attention-Consistency ``src/dataset.py``,
  noisy-label branch): Gaussian noise with p=0.5, then RandomErasing.
- ``eac2``: EAC's second view: the horizontal flip of the *un-noised* image, then its own,
  independent RandomErasing.

Choices, matched to the official code:

- Gaussian noise (``add_gaussian_noise``/``add_g``): ``image + N(0, var=30)`` per pixel and
  channel in float64, clipped to 0..255 and cast with ``astype(uint8)``, which truncates
  (a mid-grey pixel's mean drops by ~0.5): kept.
- Random erasing: the official pipelines erase *after* ``Normalize`` with torchvision's
  default ``value=0``, i.e. they write the normalised zero = the ImageNet mean colour. Our
  views are uint8 before normalisation, so the box is filled with ``ERASE_FILL`` =
  round(255 * MEAN) = (124, 116, 104), which normalises to (0.0055, -0.0049, 0.0082) instead
  of exactly 0 (within half a grey level). The box is drawn as torchvision's
  ``RandomErasing.get_params`` draws it (10 tries of area and log-uniform aspect ratio,
  ``round`` of the sides, the whole image left as is when no try fits), from the numpy
  generator instead of torch's global one.
- Size: the official code resizes every image (RAF-DB's 100 px aligned crops) to 224 after
  the flip/noise and before erasing. fernoise trains at ``--image-size`` from its array
  cache and does not resize here: flip and erasing are unaffected (erasing is relative to
  the area); the noise lands on the training-size pixels instead of being bilinearly spread
  over ~2.2 px by the upsampling, so at our sizes it is slightly rougher per pixel.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from fernoise.errors import FernoiseError
from fernoise.images import MEAN

NOISE_VAR = 30.0
ERASE_P = 0.5
ERASE_SCALE = (0.02, 0.25)
ERASE_RATIO = (0.3, 3.3)
ERASE_FILL = tuple(int(round(255 * m)) for m in MEAN)  # (124, 116, 104): normalises to ~0

ViewFn = Callable[[np.ndarray, np.random.Generator], torch.Tensor]


# ----------------------------------------------------------------------------- building blocks
def hflip(img: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` -> the same image mirrored left-right (``cv2.flip(img, 1)``)."""
    return img[:, ::-1]


def gaussian_noise(img: np.ndarray, rng: np.random.Generator, var: float = NOISE_VAR) -> np.ndarray:
    """``(H, W, 3)`` uint8 + N(0, var) per value, clipped to 0..255, truncated to uint8."""
    noisy = img.astype(np.float64) + rng.normal(0.0, math.sqrt(var), img.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def erase_box(
    h: int,
    w: int,
    rng: np.random.Generator,
    *,
    scale: tuple[float, float] = ERASE_SCALE,
    ratio: tuple[float, float] = ERASE_RATIO,
) -> tuple[int, int, int, int] | None:
    """torchvision's ``RandomErasing.get_params`` on an ``h x w`` image: ``(top, left, eh, ew)``.

    Up to 10 tries: area ``U(scale) * h * w``, aspect ``exp(U(log ratio))``, sides
    ``round(sqrt(area * aspect))`` x ``round(sqrt(area / aspect))``; the first box strictly
    smaller than the image is placed uniformly. None when no try fits (the image is kept).
    """
    area = h * w
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        erase_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(lo, hi))
        eh = int(round(math.sqrt(erase_area * aspect)))
        ew = int(round(math.sqrt(erase_area / aspect)))
        if not (eh < h and ew < w):
            continue
        top = int(rng.integers(0, h - eh + 1))
        left = int(rng.integers(0, w - ew + 1))
        return top, left, eh, ew
    return None


def random_erasing(img: np.ndarray, rng: np.random.Generator, *, p: float = ERASE_P) -> np.ndarray:
    """With probability ``p``, a copy of ``(H, W, 3)`` uint8 ``img`` with one box (see
    :func:`erase_box`) filled with ``ERASE_FILL``; otherwise ``img`` itself."""
    if rng.random() >= p:
        return img
    box = erase_box(img.shape[0], img.shape[1], rng)
    if box is None:
        return img
    top, left, eh, ew = box
    out = np.array(img, dtype=np.uint8, copy=True)
    out[top : top + eh, left : left + ew] = ERASE_FILL
    return out


def _chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


# ----------------------------------------------------------------------------- the views
def scn_view(img: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """SCN/RUL: p=0.5 one of (flip, noise) uniformly, then RandomErasing. ``(3, H, W)`` uint8."""
    if rng.random() < 0.5:
        img = hflip(img) if rng.integers(2) == 0 else gaussian_noise(img, rng)
    return _chw(random_erasing(img, rng))


def eac1_view(img: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """EAC's x1: Gaussian noise with p=0.5, then RandomErasing. ``(3, H, W)`` uint8."""
    if rng.random() < 0.5:
        img = gaussian_noise(img, rng)
    return _chw(random_erasing(img, rng))


def eac2_view(img: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """EAC's x2: the flipped (never noised) image, then its own RandomErasing."""
    return _chw(random_erasing(hflip(img), rng))


VIEWS: dict[str, ViewFn] = {"scn": scn_view, "eac1": eac1_view, "eac2": eac2_view}


def get(name: str) -> ViewFn:
    """The view function called ``name``; a FernoiseError lists the known ones."""
    try:
        return VIEWS[name]
    except KeyError:
        raise FernoiseError(
            f"unknown view {name!r}; known views: {', '.join(sorted(VIEWS))}"
        ) from None
