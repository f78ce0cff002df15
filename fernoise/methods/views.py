"""Training views by name: one registry that both view paths use.

A view is a random picture of one training crop. Each is registered once
(:func:`register_view`) with three functions that make the *same* choices:

- ``sample(img, rng, env)``: the worker path (``fernoise.data.ViewBatches``, DataLoader
  workers): one ``(H, W, 3)`` uint8 image -> a ``(3, H, W)`` uint8 tensor, every random choice
  from the per-sample numpy generator ``rng``;
- ``draw(rng, env)``: the device path's choices for one sample (a tuple of numbers), taking
  from ``rng`` exactly what ``sample`` takes, in the same order (CPU, cheap);
- ``batch(x, draws, env)``: the device path (``fernoise.train.augment.DeviceViews``): the
  views of a whole batch from the per-sample draws, with tensor ops on the training device.
  ``x`` is the raw batch ``(N, H, W, 3)`` uint8, or for a view with a ``base`` the base
  view's batch ``(N, 3, H, W)``.

``env`` (:class:`ViewEnv`) holds the image size and RandAugment's op table. A view may be
built on another one (``base``): ``strong`` is RandAugment applied to the sample's ``weak``
view, made first (and not returned) when it was not asked before it. A name ``kind#k``
(``weak#2``, ``strong#2``) is another, independent draw of ``kind`` from the same generator,
later in its stream (DivideMix's two weak views); ``strong#2`` is built on ``weak#2``.
All views of one sample come from its one generator, in the order the method names them, so
a sample's views depend only on (seed, epoch, sample) whichever path makes them.

The built-in views:

- ``weak``: zero-pad 4 px, random crop back to the size, horizontal flip p=0.5.
- ``strong``: the weak view plus RandAugment (2 ops, magnitude out of 31 bins) with
  torchvision's exact op table; the batched version groups the batch by (op, sign) and
  applies torchvision's own tensor op to each group at once.
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

The one exception to "same pixels" on the two paths is the Gaussian noise field: the worker
path draws it from the per-sample generator (``H*W*3`` normals, ~1 ms a sample at 224 px, too
slow for the GPU's feeder), and the draws after it (the erasing box) follow it in that
generator's stream. The device path draws one 64-bit noise key from the generator instead and
makes the field on the device from a counter-based hash of (key, pixel index) with Box-Muller
(:func:`noise_field`). So a sample that is noised has a field (and, after it, an erasing draw)
that is **equal in distribution** to the worker path's, not equal in value; a sample that is
not noised is pixel-identical on both paths. Either way the views depend only on (seed,
epoch, sample): resume is exact on each path. Tests: tests/test_augment.py, tests/testpy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import autoaugment as _aa

from fernoise.errors import FernoiseError
from fernoise.images import MEAN

PAD = 4
RANDAUG_BINS = 31  # torchvision's RandAugment default: magnitude 0..30
_MASK32 = 0xFFFFFFFF

NOISE_VAR = 30.0
ERASE_P = 0.5
ERASE_SCALE = (0.02, 0.25)
ERASE_RATIO = (0.3, 3.3)
ERASE_FILL = tuple(int(round(255 * m)) for m in MEAN)  # (124, 116, 104): normalises to ~0


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


# ----------------------------------------------------------------------------- weak, strong
def weak_view(img: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(3, H, W)`` uint8: zero-pad 4, random crop, flip p=0.5."""
    h, w = img.shape[:2]
    dy, dx = rng.integers(0, 2 * PAD + 1, size=2)
    padded = np.zeros((h + 2 * PAD, w + 2 * PAD, 3), dtype=np.uint8)
    padded[PAD : PAD + h, PAD : PAD + w] = img
    out = padded[dy : dy + h, dx : dx + w]
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))


class RandAugment:
    """torchvision's RandAugment (same ops, same magnitudes) drawing from a given generator."""

    def __init__(self, size: int, magnitude: int, num_ops: int = 2):
        space = _aa.RandAugment()._augmentation_space(RANDAUG_BINS, (size, size))
        self.ops = [
            (name, float(mags[magnitude]) if mags.ndim > 0 else 0.0, signed)
            for name, (mags, signed) in space.items()
        ]
        self.num_ops = num_ops

    def __call__(self, img: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        for _ in range(self.num_ops):
            name, mag, signed = self.ops[int(rng.integers(len(self.ops)))]
            if signed and rng.integers(2):
                mag = -mag
            img = _aa._apply_op(img, name, mag, interpolation=InterpolationMode.NEAREST, fill=None)
        return img


# ----------------------------------------------------------------------------- batched (device path)
@dataclass(frozen=True)
class Draws:
    """Per-sample weak/strong choices of one batch (numpy, on the CPU).

    ``dy``, ``dx``: crop offsets in 0..2*PAD; ``flip``: bool; ``ops``: ``(N, num_ops)`` op
    indices into the RandAugment table, or None for weak-only batches; ``signs``: ``(N,
    num_ops)`` +1/-1 (unsigned ops always +1).
    """

    dy: np.ndarray
    dx: np.ndarray
    flip: np.ndarray
    ops: np.ndarray | None
    signs: np.ndarray | None


@dataclass(frozen=True)
class ViewDraws:
    """Per-sample choices of one method view (``scn``, ``eac1``, ``eac2``) of a batch.

    ``flip``, ``noise``: bool ``(N,)`` (applied to the raw image, flip or noise, never both);
    ``keys``: int64 ``(N, 2)`` 32-bit noise keys (0 where not noised); ``box``: int64 ``(N, 4)``
    erasing boxes ``(top, left, height, width)``, height = width = 0 where nothing is erased.
    """

    flip: np.ndarray
    noise: np.ndarray
    keys: np.ndarray
    box: np.ndarray


def _erase_draw(rng: np.random.Generator, h: int, w: int) -> tuple[int, int, int, int]:
    """views.random_erasing's draws: the p coin, then views.erase_box."""
    if rng.random() >= ERASE_P:
        return 0, 0, 0, 0
    box = erase_box(h, w, rng)
    return box if box is not None else (0, 0, 0, 0)


def _noise_key(rng: np.random.Generator) -> tuple[int, int]:
    k = rng.integers(0, 2**32, size=2)
    return int(k[0]), int(k[1])


def weak_batch(images: torch.Tensor, d: Draws) -> torch.Tensor:
    """``(N, H, W, 3)`` uint8 -> ``(N, 3, H, W)`` uint8 weak views, as ``data.weak_view``."""
    n, h, w, _ = images.shape
    dev = images.device
    x = images.permute(0, 3, 1, 2)
    padded = torch.zeros((n, 3, h + 2 * PAD, w + 2 * PAD), dtype=torch.uint8, device=dev)
    padded[:, :, PAD : PAD + h, PAD : PAD + w] = x
    rows = torch.from_numpy(d.dy).to(dev).view(n, 1) + torch.arange(h, device=dev).view(
        1, h
    )  # (N, H)
    cols = torch.from_numpy(d.dx).to(dev).view(n, 1) + torch.arange(w, device=dev).view(
        1, w
    )  # (N, W)
    flip = torch.from_numpy(d.flip).to(dev).view(n, 1)
    cols = torch.where(flip, cols.flip(1), cols)
    b = torch.arange(n, device=dev).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[b, rows.view(n, h, 1), cols.view(n, 1, w)]  # (N, H, W, 3)
    return out.permute(0, 3, 1, 2).contiguous()


def randaug_batch(x: torch.Tensor, d: Draws, randaug: RandAugment) -> torch.Tensor:
    """Apply each sample's RandAugment ops to ``x`` ``(N, 3, H, W)`` uint8, grouped by (op, sign)."""
    assert d.ops is not None and d.signs is not None
    x = x.clone()
    for j in range(d.ops.shape[1]):
        key = d.ops[:, j] * 2 + (d.signs[:, j] < 0)
        for k in np.unique(key):
            op, neg = divmod(int(k), 2)
            idx = torch.from_numpy(np.flatnonzero(key == k)).to(x.device)
            name, mag, _ = randaug.ops[op]
            if name == "Identity":
                continue
            x[idx] = _aa._apply_op(
                x[idx],
                name,
                -mag if neg else mag,
                interpolation=InterpolationMode.NEAREST,
                fill=None,
            )
    return x


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x * c mod 2**32`` for int64 ``x`` in 0..2**32-1 without int64 overflow (16-bit halves)."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _MASK32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """Wellons' lowbias32 integer hash on int64 tensors holding 32-bit values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def noise_field(keys: torch.Tensor, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Standard normal float32 ``(N, *shape)`` from int64 ``keys`` ``(N, 2)`` (32-bit values): a
    counter-based hash of (key, element index) -> two uniforms -> Box-Muller. The same on every
    device up to float rounding; depends only on the keys."""
    n = keys.shape[0]
    m = int(np.prod(shape))
    keys = keys.to(device)
    j = torch.arange(m, device=device, dtype=torch.int64).view(1, m)
    k0, k1 = keys[:, :1], keys[:, 1:]
    a = _hash32(_hash32(j ^ k0) ^ k1)
    b = _hash32(_hash32((j + m) ^ k0) ^ ((k1 + 0x9E3779B9) & _MASK32))
    u1 = (a.float() + 0.5) * (2.0**-32)
    u2 = (b.float() + 0.5) * (2.0**-32)
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * np.pi) * u2)
    return z.view(n, *shape)


def method_view_batch(x: torch.Tensor, d: ViewDraws) -> torch.Tensor:
    """``x`` raw ``(N, 3, H, W)`` uint8 -> one method view: flip or Gaussian noise (var
    ``views.NOISE_VAR``, clipped to 0..255 and truncated, as ``views.gaussian_noise``) where
    drawn, then random erasing of the drawn box with ``views.ERASE_FILL``."""
    n, c, h, w = x.shape
    dev = x.device
    flip = torch.from_numpy(d.flip).to(dev).view(n, 1, 1, 1)
    out = torch.where(flip, x.flip(-1), x) if d.flip.any() else x
    rows = np.flatnonzero(d.noise)
    if len(rows):
        idx = torch.from_numpy(rows).to(dev)
        z = noise_field(torch.from_numpy(d.keys[rows]), (c, h, w), dev)
        noisy = (out[idx].float() + z * float(np.sqrt(NOISE_VAR))).clamp_(0, 255).to(torch.uint8)
        out = out.clone() if out is x else out
        out[idx] = noisy
    if d.box[:, 2].any():
        box = torch.from_numpy(d.box).to(dev)
        ar_h = torch.arange(h, device=dev).view(1, h)
        ar_w = torch.arange(w, device=dev).view(1, w)
        in_r = (ar_h >= box[:, 0:1]) & (ar_h < box[:, 0:1] + box[:, 2:3])  # (N, H)
        in_c = (ar_w >= box[:, 1:2]) & (ar_w < box[:, 1:2] + box[:, 3:4])  # (N, W)
        mask = in_r.view(n, 1, h, 1) & in_c.view(n, 1, 1, w)
        fill = torch.tensor(ERASE_FILL, dtype=torch.uint8, device=dev).view(1, 3, 1, 1)
        out = torch.where(mask, fill, out)
    return out.contiguous()


# ----------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class ViewEnv:
    """What views need besides the image: the training size and RandAugment's op table
    (None when no ``strong`` view is made)."""

    size: int
    randaug: RandAugment | None = None


@dataclass(frozen=True)
class ViewKind:
    """One registered view (module docstring): its worker-path ``sample``, its device-path
    ``draw`` (same generator use as ``sample``) and ``batch``, and the view it is built on."""

    name: str
    sample: Callable[[Any, np.random.Generator, ViewEnv], torch.Tensor]
    draw: Callable[[np.random.Generator, ViewEnv], tuple]
    batch: Callable[[torch.Tensor, list[tuple], ViewEnv], torch.Tensor]
    base: str | None = None


_VIEWS: dict[str, ViewKind] = {}


def register_view(
    name: str,
    *,
    sample: Callable[[Any, np.random.Generator, ViewEnv], torch.Tensor],
    draw: Callable[[np.random.Generator, ViewEnv], tuple],
    batch: Callable[[torch.Tensor, list[tuple], ViewEnv], torch.Tensor],
    base: str | None = None,
) -> ViewKind:
    """Add the view ``name`` (a method module calls this at import, beside its class).

    ``sample``, ``draw`` and ``batch`` as in the module docstring; ``base``: the name of the view
    it is built on (its ``sample``/``batch`` then get that view's output). Names are unique and
    hold no ``#`` (``kind#k`` is kept for further draws of a kind)."""
    if "#" in name or not name:
        raise ValueError(f"register_view: {name!r} is not a view name ('#' is kept for draws)")
    if name in _VIEWS and _VIEWS[name].sample is not sample:
        raise ValueError(f"register_view: view {name!r} is registered twice")
    if base is not None and base not in _VIEWS:
        raise ValueError(f"register_view: {name!r} is built on {base!r}, which is not registered")
    kind = ViewKind(name, sample, draw, batch, base)
    _VIEWS[name] = kind
    return kind


def _split(name: str) -> tuple[str, str]:
    """``"weak#2"`` -> ``("weak", "#2")``; ``"weak"`` -> ``("weak", "")``."""
    kind, sep, k = name.partition("#")
    if sep and not (k.isdigit() and int(k) >= 2):
        return name, ""  # not a draw suffix: get() reports the whole name as unknown
    return kind, sep + k


def get(name: str) -> ViewKind:
    """The view ``name`` (``kind#k``: the view ``kind``); a FernoiseError lists the known ones."""
    try:
        return _VIEWS[_split(name)[0]]
    except KeyError:
        raise FernoiseError(
            f"unknown view {name!r}; known views: {', '.join(sorted(_VIEWS))} "
            "(and kind#2, kind#3, ... for further draws)"
        ) from None


def base_of(name: str) -> str | None:
    """The view ``name`` is built on, with the same draw suffix (``strong#2`` -> ``weak#2``)."""
    kind, suffix = _split(name)
    base = get(kind).base
    return None if base is None else base + suffix


def names() -> list[str]:
    """Registered view names."""
    return list(_VIEWS)


def check(names: Sequence[str]) -> None:
    """Raise the FernoiseError of :func:`get` for an unknown name (before any batch is made)."""
    for name in names:
        get(name)


def sample_views(
    img: np.ndarray, rng: np.random.Generator, names: Sequence[str], env: ViewEnv
) -> dict[str, torch.Tensor]:
    """Worker path: the views ``names`` of one ``(H, W, 3)`` uint8 image, each ``(3, H, W)``
    uint8, from the one per-sample ``rng`` in the order of ``names`` (a base not asked before
    is made first and not returned)."""
    made: dict[str, torch.Tensor] = {}

    def make(name: str) -> torch.Tensor:
        if name not in made:
            base = base_of(name)
            src = img if base is None else make(base)
            made[name] = get(name).sample(src, rng, env)
        return made[name]

    return {name: make(name) for name in names}


def draw_views(seeds: np.ndarray, names: Sequence[str], env: ViewEnv) -> dict[str, list[tuple]]:
    """Device path, on the CPU: every view's choices ``{name: [one tuple per sample]}`` (bases
    not asked included), from one generator per seed, in the worker path's order."""
    names = tuple(names)
    check(names)
    order: list[str] = []  # every view to draw, bases first, once each

    def add(name: str) -> None:
        if name not in order:
            base = base_of(name)
            if base is not None:
                add(base)
            order.append(name)

    for name in names:
        add(name)
    kinds = [get(name) for name in order]
    out: dict[str, list[tuple]] = {name: [] for name in order}
    for seed in seeds:
        rng = np.random.default_rng(int(seed))
        for name, kind in zip(order, kinds, strict=True):
            out[name].append(kind.draw(rng, env))
    return out


def batch_views(
    raw: torch.Tensor, draws: dict[str, list[tuple]], names: Sequence[str], env: ViewEnv
) -> dict[str, torch.Tensor]:
    """Device path: ``{name: uint8 (N, 3, H, W)}`` from the raw batch ``(N, H, W, 3)`` uint8 and
    :func:`draw_views`' draws (bases made once, shared by the views built on them)."""
    made: dict[str, torch.Tensor] = {}

    def make(name: str) -> torch.Tensor:
        if name not in made:
            base = base_of(name)
            src = raw if base is None else make(base)
            made[name] = get(name).batch(src, draws[name], env)
        return made[name]

    return {name: make(name) for name in names}


# ----------------------------------------------------------------------------- the built-in views
def _weak_draw(rng: np.random.Generator, env: ViewEnv) -> tuple[int, int, bool]:
    dy, dx = rng.integers(0, 2 * PAD + 1, size=2)
    return int(dy), int(dx), bool(rng.random() < 0.5)


def _weak_batch(raw: torch.Tensor, draws: list[tuple], env: ViewEnv) -> torch.Tensor:
    dy, dx, flip = (np.array(c) for c in zip(*draws, strict=True))
    return weak_batch(
        raw, Draws(dy.astype(np.int64), dx.astype(np.int64), flip.astype(bool), None, None)
    )


def _need_randaug(env: ViewEnv) -> RandAugment:
    if env.randaug is None:
        raise ValueError("the strong view needs ViewEnv.randaug")
    return env.randaug


def _strong_draw(rng: np.random.Generator, env: ViewEnv) -> tuple[tuple[int, ...], tuple[int, ...]]:
    ra = _need_randaug(env)
    ops, signs = [], []
    for _ in range(ra.num_ops):
        op = int(rng.integers(len(ra.ops)))
        ops.append(op)
        signs.append(-1 if ra.ops[op][2] and rng.integers(2) else 1)
    return tuple(ops), tuple(signs)


def _strong_batch(weak: torch.Tensor, draws: list[tuple], env: ViewEnv) -> torch.Tensor:
    ra = _need_randaug(env)
    n = len(draws)
    ops = np.array([d[0] for d in draws], np.int64).reshape(n, ra.num_ops)
    signs = np.array([d[1] for d in draws], np.int64).reshape(n, ra.num_ops)
    zeros = np.zeros(n, np.int64)
    return randaug_batch(weak, Draws(zeros, zeros, zeros.astype(bool), ops, signs), ra)


def _scn_draw(rng: np.random.Generator, env: ViewEnv) -> tuple:
    flip = noise = False
    key = (0, 0)
    if rng.random() < 0.5:
        if rng.integers(2) == 0:
            flip = True
        else:
            noise, key = True, _noise_key(rng)
    return (flip, noise, *key, *_erase_draw(rng, env.size, env.size))


def _eac1_draw(rng: np.random.Generator, env: ViewEnv) -> tuple:
    noise, key = False, (0, 0)
    if rng.random() < 0.5:
        noise, key = True, _noise_key(rng)
    return (False, noise, *key, *_erase_draw(rng, env.size, env.size))


def _eac2_draw(rng: np.random.Generator, env: ViewEnv) -> tuple:
    return (True, False, 0, 0, *_erase_draw(rng, env.size, env.size))


def _method_batch(raw: torch.Tensor, draws: list[tuple], env: ViewEnv) -> torch.Tensor:
    a = np.array(draws, dtype=np.int64).reshape(len(draws), 8)
    d = ViewDraws(a[:, 0].astype(bool), a[:, 1].astype(bool), a[:, 2:4], a[:, 4:8])
    return method_view_batch(raw.permute(0, 3, 1, 2), d)


register_view(
    "weak", sample=lambda img, rng, env: weak_view(img, rng), draw=_weak_draw, batch=_weak_batch
)
register_view(
    "strong",
    sample=lambda weak, rng, env: _need_randaug(env)(weak, rng),
    draw=_strong_draw,
    batch=_strong_batch,
    base="weak",
)
register_view(
    "scn", sample=lambda img, rng, env: scn_view(img, rng), draw=_scn_draw, batch=_method_batch
)
register_view(
    "eac1", sample=lambda img, rng, env: eac1_view(img, rng), draw=_eac1_draw, batch=_method_batch
)
register_view(
    "eac2", sample=lambda img, rng, env: eac2_view(img, rng), draw=_eac2_draw, batch=_method_batch
)
