"""Training views made in batches on the training device (``--augment device``).

The worker path (fernoise/data.py) makes each sample's views in a DataLoader worker from a
per-sample numpy generator seeded by (seed, epoch, sample). This module makes the *same*
views for a whole batch with tensor ops on the device:

- the random draws are the worker path's, in the same order, from the same per-sample
  generators (:func:`draw`): a few integers per sample, cheap on the CPU;
- the weak view (zero-pad 4, random crop back to the size, horizontal flip p=0.5) is one
  gather for the whole batch (:func:`weak_batch`): pixel-identical to ``data.weak_view``;
- RandAugment (2 ops out of torchvision's 14, magnitude out of 31 bins, a random sign for
  signed ops) groups the batch by (op, sign) and applies torchvision's own tensor op to each
  group at once (:func:`randaug_batch`): at most 2 x 14 calls per op slot instead of one
  per sample, and the same arithmetic as ``torchvision.transforms.autoaugment._apply_op`` on
  one image (tested: equal within 1 grey level, exactly equal in practice);
- the images come from the uint8 array cache: copied to the device once when they fit in
  ``memory_share`` of its free memory, else each batch is gathered on the CPU into pinned
  memory and copied without blocking (:class:`DeviceImages`).

- the methods' own views (``fernoise/methods/views.py``: ``scn``, ``eac1``, ``eac2``): flip, Gaussian
  noise and random erasing as batched ``torch.where`` / arithmetic; the flip/noise choices,
  the erasing coin and the erasing box come from the same per-sample generator, in the
  worker path's order, with views.py's own ``erase_box`` (:func:`draw`).

The one exception to "same pixels" is the Gaussian noise field: the worker path draws it
from the per-sample generator (``H*W*3`` normals, ~1 ms a sample at 224 px, too slow for
the GPU's feeder), and the draws after it (the erasing box) follow it in that generator's
stream. The device path draws one 64-bit noise key from the generator instead and makes
the field on the device from a counter-based hash of (key, pixel index) with Box-Muller
(:func:`noise_field`). So a sample that is noised has a field (and, after it, an erasing
draw) that is **equal in distribution** to the worker path's, not equal in value; a sample
that is not noised is pixel-identical on both paths. Either way the views depend only on
(seed, epoch, sample): resume is exact on each path. Tests: tests/test_augment.py (noise
mean/sd, erased-area bounds and rates, flip rate, pixel identity of the un-noised samples).

``--augment device`` and ``--augment workers`` are two paths of the key (the key records
which ran, since the noise values differ and op implementations on other devices may round
differently).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import autoaugment as _aa

from fernoise.data import PAD, RandAugment
from fernoise.methods import views as _views

AUGMENT = ("auto", "device", "workers")
METHOD_VIEWS = ("scn", "eac1", "eac2")
_MASK32 = 0xFFFFFFFF


# ----------------------------------------------------------------------------- draws (CPU)
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


def _weak_draw(rng: np.random.Generator) -> tuple[int, int, bool]:
    dy, dx = rng.integers(0, 2 * PAD + 1, size=2)
    return int(dy), int(dx), bool(rng.random() < 0.5)


def _erase_draw(rng: np.random.Generator, h: int, w: int) -> tuple[int, int, int, int]:
    """views.random_erasing's draws: the p coin, then views.erase_box."""
    if rng.random() >= _views.ERASE_P:
        return 0, 0, 0, 0
    box = _views.erase_box(h, w, rng)
    return box if box is not None else (0, 0, 0, 0)


def _noise_key(rng: np.random.Generator) -> tuple[int, int]:
    k = rng.integers(0, 2**32, size=2)
    return int(k[0]), int(k[1])


def draw(seeds: np.ndarray, names, randaug: RandAugment | None, size: int | None = None) -> dict:
    """Every view's choices for each per-sample seed, in the worker path's order
    (``data.sample_views``: the views in the order of ``names``, one generator per sample).

    ``names``: view names (``weak``, ``strong``, ``scn``, ``eac1``, ``eac2``); for backward use a
    bool means ``("weak", "strong")`` / ``("weak",)``. Returns ``{"weak": Draws, name: ViewDraws}``
    (the ``weak`` entry also holds the RandAugment draws when ``strong`` is asked).
    The Gaussian noise field is replaced by one key per noised sample (module docstring).
    """
    if isinstance(names, bool):
        names = ("weak", "strong") if names else ("weak",)
    names = tuple(names)
    if "strong" in names and "weak" in names and names.index("strong") < names.index("weak"):
        raise ValueError(
            "draw: 'weak' must come before 'strong' (the strong view is built on the weak one)"
        )
    n = len(seeds)
    strong = "strong" in names
    wants_weak = strong or "weak" in names
    dy = np.zeros(n, np.int64)
    dx = np.zeros(n, np.int64)
    flip = np.zeros(n, bool)
    k = randaug.num_ops if strong else 0
    ops = np.zeros((n, k), np.int64)
    signs = np.ones((n, k), np.int64)
    n_ops = len(randaug.ops) if strong else 0
    mv = [m for m in names if m in METHOD_VIEWS]
    if mv and size is None:
        raise ValueError("draw: size is needed for the method views")
    vflip = {m: np.zeros(n, bool) for m in mv}
    vnoise = {m: np.zeros(n, bool) for m in mv}
    vkeys = {m: np.zeros((n, 2), np.int64) for m in mv}
    vbox = {m: np.zeros((n, 4), np.int64) for m in mv}
    for i, seed in enumerate(seeds):
        rng = np.random.default_rng(int(seed))
        have_weak = False
        for name in names:
            if name in ("weak", "strong") and not have_weak:
                dy[i], dx[i], flip[i] = _weak_draw(rng)
                have_weak = True
            if name == "strong":
                for j in range(k):
                    op = int(rng.integers(n_ops))
                    ops[i, j] = op
                    if randaug.ops[op][2] and rng.integers(2):
                        signs[i, j] = -1
            elif name == "scn":
                if rng.random() < 0.5:
                    if rng.integers(2) == 0:
                        vflip[name][i] = True
                    else:
                        vnoise[name][i] = True
                        vkeys[name][i] = _noise_key(rng)
                vbox[name][i] = _erase_draw(rng, size, size)
            elif name == "eac1":
                if rng.random() < 0.5:
                    vnoise[name][i] = True
                    vkeys[name][i] = _noise_key(rng)
                vbox[name][i] = _erase_draw(rng, size, size)
            elif name == "eac2":
                vflip[name][i] = True
                vbox[name][i] = _erase_draw(rng, size, size)
            elif name not in ("weak", "strong"):
                _views.get(name)  # raises the FernoiseError listing the known views
    out: dict = {}
    if wants_weak:
        out["weak"] = Draws(dy, dx, flip, ops if strong else None, signs if strong else None)
    for m in mv:
        out[m] = ViewDraws(vflip[m], vnoise[m], vkeys[m], vbox[m])
    return out


# ----------------------------------------------------------------------------- batched ops
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
        noisy = (
            (out[idx].float() + z * float(np.sqrt(_views.NOISE_VAR))).clamp_(0, 255).to(torch.uint8)
        )
        out = out.clone() if out is x else out
        out[idx] = noisy
    if d.box[:, 2].any():
        box = torch.from_numpy(d.box).to(dev)
        ar_h = torch.arange(h, device=dev).view(1, h)
        ar_w = torch.arange(w, device=dev).view(1, w)
        in_r = (ar_h >= box[:, 0:1]) & (ar_h < box[:, 0:1] + box[:, 2:3])  # (N, H)
        in_c = (ar_w >= box[:, 1:2]) & (ar_w < box[:, 1:2] + box[:, 3:4])  # (N, W)
        mask = in_r.view(n, 1, h, 1) & in_c.view(n, 1, 1, w)
        fill = torch.tensor(_views.ERASE_FILL, dtype=torch.uint8, device=dev).view(1, 3, 1, 1)
        out = torch.where(mask, fill, out)
    return out.contiguous()


# ----------------------------------------------------------------------------- images, views
class DeviceImages:
    """The uint8 array cache, served by row positions as ``(B, H, W, 3)`` uint8 on ``device``.

    On CUDA: held whole on the device when it takes at most ``memory_share`` of the device's
    free memory, otherwise gathered per batch into pinned memory and copied with
    ``non_blocking=True``. On the CPU: gathered per batch from the (memory-mapped) array.
    """

    def __init__(self, images: np.ndarray, device: torch.device, *, memory_share: float = 0.5):
        self.images = images
        self.device = device
        self.resident = None
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if images.nbytes <= memory_share * free:
                self.resident = torch.from_numpy(np.ascontiguousarray(images)).to(device)

    def __call__(self, positions: np.ndarray) -> torch.Tensor:
        if self.resident is not None:
            return self.resident[torch.from_numpy(np.asarray(positions)).to(self.resident.device)]
        batch = torch.from_numpy(np.ascontiguousarray(self.images[np.asarray(positions)]))
        if self.device.type != "cuda":
            return batch
        return batch.pin_memory().to(self.device, non_blocking=True)


class DeviceViews:
    """The views of a batch made on the device: the batched twin of ``data.ViewBatches``
    (same draws; same pixels except the noise field, see the module docstring).

    ``views(positions, seeds, names)`` -> ``{name: uint8 (B, 3, H, W)}`` on ``device``; the
    draws can be made ahead (:meth:`draws`, CPU only, e.g. in a thread) and passed in.
    """

    def __init__(
        self,
        images: np.ndarray,
        size: int,
        randaug_magnitude: int,
        device: torch.device,
        *,
        memory_share: float = 0.5,
    ):
        self.images = DeviceImages(images, device, memory_share=memory_share)
        self.size = size
        self.randaug = RandAugment(size, randaug_magnitude)

    def draws(self, seeds: np.ndarray, names) -> dict:
        return draw(seeds, names, self.randaug, self.size)

    def __call__(
        self, positions: np.ndarray, seeds: np.ndarray, names, draws: dict | None = None
    ) -> dict:
        if isinstance(names, bool):  # (positions, seeds, strong)
            names = ("weak", "strong") if names else ("weak",)
        d = draws if draws is not None else self.draws(seeds, names)
        raw = self.images(positions)
        out: dict[str, torch.Tensor] = {}
        if "weak" in d:
            weak = weak_batch(raw, d["weak"])
            if "weak" in names:
                out["weak"] = weak
            if "strong" in names:
                out["strong"] = randaug_batch(weak, d["weak"], self.randaug)
        chw = None
        for name in names:
            if name in METHOD_VIEWS:
                chw = raw.permute(0, 3, 1, 2) if chw is None else chw
                out[name] = method_view_batch(chw, d[name])
        return {name: out[name] for name in names}


def resolve_augment(augment: str, device: str) -> str:
    """auto: ``device`` on CUDA (the GPU would wait on CPU workers) and on the CPU too:
    bench/train.py on the project's 2-core CPU, quiet (2026-12-02, 64 px, end to end): ce 157 vs
    139 samples/s (1.13x), ncctfer 156 vs 150 (1.04x); an earlier quiet round 1.08x / 0.99x,
    and 1.11x / 1.50x under load: DataLoader workers take cores from the step, the batched views
    cost less than the per-sample ones. ``workers`` stays available: its runs keep the keys
    they had before ``--augment`` existed."""
    if augment not in AUGMENT:
        from fernoise.errors import FernoiseError

        raise FernoiseError(
            f"expected one of {', '.join(AUGMENT)}, got {augment!r}", flag="--augment"
        )
    if augment != "auto":
        return augment
    return "device"
