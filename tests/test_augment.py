"""Views made in batches on the device (issue 13) equal the worker path's, op by op."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import autoaugment as _aa

from fernoise import data
from fernoise.errors import FernoiseError
from fernoise.methods import views
from fernoise.train.augment import (
    DeviceViews,
    Draws,
    randaug_batch,
    resolve_augment,
    weak_batch,
)

SIZE = 40
# The device the batched views run on: the CPU in CI; bench/gpu_check.sh sets cuda.
DEV = torch.device(os.environ.get("FERNOISE_TEST_DEVICE", "cpu"))


class _DV(DeviceViews):
    """DeviceViews on DEV, returning CPU tensors to compare with the worker path."""

    def __init__(self, images, size, magnitude, _device=None):
        super().__init__(images, size, magnitude, DEV)

    def __call__(self, *a, **k):
        return {n: v.cpu() for n, v in super().__call__(*a, **k).items()}


@pytest.fixture(scope="module")
def images():
    """Textured RGB images with edges, gradients and flat areas (every op changes something)."""
    rng = np.random.default_rng(0)
    n = 64
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    out = np.empty((n, SIZE, SIZE, 3), np.uint8)
    for i in range(n):
        base = (xx * (3 + i % 5) + yy * (2 + i % 3)) % 256
        img = np.stack([base, (base * 2 + 40) % 256, 255 - base], axis=-1).astype(np.int64)
        img[8:20, 10:30] = rng.integers(0, 256, 3)
        img += rng.integers(-20, 21, img.shape)
        out[i] = np.clip(img, 0, 255)
    return out


def _worker_views(images, positions, seeds, names):
    vb = data.ViewBatches(images, SIZE, 10)
    return vb[data.Batch(np.asarray(positions), np.asarray(seeds), tuple(names))]["views"]


def test_weak_and_strong_views_equal_the_worker_path(images):
    positions = np.arange(len(images))
    seeds = np.random.default_rng(1).integers(0, 2**63 - 1, size=len(images))
    ref = _worker_views(images, positions, seeds, ("weak", "strong"))
    dev = _DV(images, SIZE, 10)(positions, seeds, ("weak", "strong"))
    assert torch.equal(dev["weak"], ref["weak"])  # pixel-identical
    diff = (dev["strong"].int() - ref["strong"].int()).abs()
    assert diff.max().item() <= 1  # the bound; in practice 0
    assert (diff > 0).float().mean().item() < 1e-3
    weak_only = _DV(images, SIZE, 10)(positions, seeds, ("weak",))
    assert list(weak_only) == ["weak"] and torch.equal(weak_only["weak"], ref["weak"])
    strong_only = _DV(images, SIZE, 10)(positions, seeds, ("strong",))
    ref_strong = _worker_views(images, positions, seeds, ("strong",))
    assert list(strong_only) == ["strong"]
    assert (strong_only["strong"].int() - ref_strong["strong"].int()).abs().max().item() <= 1


_OPS = data.RandAugment(SIZE, 10).ops
_CASES = [(o, s) for o, (_, _, signed) in enumerate(_OPS) for s in ((1, -1) if signed else (1,))]


@pytest.mark.parametrize(
    ("op", "sign"), _CASES, ids=[f"{_OPS[o][0]}{'-' if s < 0 else '+'}" for o, s in _CASES]
)
def test_each_randaug_op_equals_torchvision_on_single_images(images, op, sign):
    ra = data.RandAugment(SIZE, 10)
    name, mag, signed = ra.ops[op]
    x = torch.from_numpy(images[:16]).permute(0, 3, 1, 2).contiguous()
    n = len(x)
    d = Draws(
        np.zeros(n, np.int64),
        np.zeros(n, np.int64),
        np.zeros(n, bool),
        np.full((n, 1), op),
        np.full((n, 1), sign),
    )
    batched = randaug_batch(x.to(DEV), d, ra).cpu()
    for i in range(n):
        single = _aa._apply_op(
            x[i], name, mag * sign, interpolation=InterpolationMode.NEAREST, fill=None
        )
        diff = (batched[i].int() - single.int()).abs()
        # Sharpness leaves the border as is and rotate/shear fill at borders: bounded by 1 level
        assert diff.max().item() <= 1, (name, sign, i)
    if name != "Identity":
        assert not torch.equal(batched, x)  # the op did something


def test_draws_follow_the_worker_order_and_distribution():
    ra = data.RandAugment(SIZE, 10)
    seeds = np.random.default_rng(7).integers(0, 2**63 - 1, size=10_000)
    got = views.draw_views(seeds, ("weak", "strong"), views.ViewEnv(SIZE, ra))
    dy_, dx_, flip_ = (np.array(c) for c in zip(*got["weak"], strict=True))
    d = Draws(
        dy_,
        dx_,
        flip_,
        np.array([t[0] for t in got["strong"]]),
        np.array([t[1] for t in got["strong"]]),
    )
    # Same sequence as ViewBatches' generator: crop offsets, flip, then (op, sign) per slot.
    rng = np.random.default_rng(int(seeds[3]))
    dy, dx = rng.integers(0, 9, size=2)
    assert (d.dy[3], d.dx[3], d.flip[3]) == (dy, dx, rng.random() < 0.5)
    op = int(rng.integers(14))
    assert d.ops[3, 0] == op
    counts = np.bincount(d.ops.ravel(), minlength=14)
    expected = d.ops.size / 14
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 36.1  # chi-square, 13 degrees of freedom, p = 0.001
    signed = np.array([ra.ops[o][2] for o in range(14)])
    neg = d.signs < 0
    assert not neg[~signed[d.ops]].any()  # unsigned ops never negated
    share = neg[signed[d.ops]].mean()
    assert abs(share - 0.5) < 0.02
    assert set(np.unique(d.dy)) == set(range(9)) and abs(d.flip.mean() - 0.5) < 0.02


def test_weak_batch_is_exact_on_edge_offsets(images):
    n = 4
    d = Draws(
        np.array([0, 8, 0, 8]),
        np.array([0, 8, 8, 0]),
        np.array([False, True, True, False]),
        None,
        None,
    )
    out = weak_batch(torch.from_numpy(images[:n]).to(DEV), d).cpu()
    for i in range(n):
        rng_free = np.zeros((SIZE + 8, SIZE + 8, 3), np.uint8)
        rng_free[4:-4, 4:-4] = images[i]
        ref = rng_free[d.dy[i] : d.dy[i] + SIZE, d.dx[i] : d.dx[i] + SIZE]
        if d.flip[i]:
            ref = ref[:, ::-1]
        assert np.array_equal(out[i].permute(1, 2, 0).numpy(), ref)


def test_resolve_augment():
    assert resolve_augment("auto", "cuda") == "device"
    assert resolve_augment("auto", "cuda:1") == "device"
    assert resolve_augment("auto", "cpu") == "device"  # the bench: device wins on the CPU too
    assert resolve_augment("device", "cpu") == "device"
    assert resolve_augment("workers", "cuda") == "workers"
    with pytest.raises(
        FernoiseError, match="expected one of auto, device, workers, got 'gpu'"
    ) as e:
        resolve_augment("gpu", "cpu")
    assert e.value.flag == "--augment"


# ----------------------------------------------------------------------------- method views (scn, eac1, eac2)


def _col(d, name, j):
    """Column ``j`` of a method view's per-sample draws (flip, noise, key0, key1, box...)."""
    return np.array([t[j] for t in d[name]])


def _noised(d, names):
    out = np.zeros(len(next(iter(d.values()))), bool)
    for n in names:
        if n in ("scn", "eac1", "eac2"):
            out |= _col(d, n, 1).astype(bool)
    return out


@pytest.mark.parametrize("names", [("scn",), ("eac1", "eac2"), ("weak", "scn"), ("eac2",)])
def test_method_views_equal_the_worker_path_where_no_noise_was_drawn(images, names):
    positions = np.arange(len(images))
    seeds = np.random.default_rng(11).integers(0, 2**63 - 1, size=len(images))
    ref = _worker_views(images, positions, seeds, names)
    dv = _DV(images, SIZE, 10)
    d = dv.draws(seeds, names)
    dev = dv(positions, seeds, names, draws=d)
    assert list(dev) == list(names)
    noised = _noised(d, names)
    if names != ("eac2",):
        assert 5 < noised.sum() < len(images) - 5  # both kinds are exercised
    else:
        assert not noised.any()
    for name in names:
        assert dev[name].shape == (len(images), 3, SIZE, SIZE) and dev[name].dtype == torch.uint8
        for i in np.flatnonzero(~noised):
            assert torch.equal(dev[name][i], ref[name][i]), (name, i)
    # The choices before the noise are the worker's: eac1's first draw is the noise coin,
    # scn's are the 0.5 coin then flip (0) / noise (1).
    for i, seed in enumerate(seeds):
        rng = np.random.default_rng(int(seed))
        if names[0] == "eac1":
            assert bool(d["eac1"][i][1]) == (rng.random() < 0.5)
        if names == ("scn",):
            chosen = rng.random() < 0.5
            which = int(rng.integers(2)) if chosen else -1
            assert (bool(d["scn"][i][0]), bool(d["scn"][i][1])) == (which == 0, which == 1)


def test_method_views_depend_only_on_the_sample_seed(images):
    """Batch composition and order do not matter: a resumed run sees the same views."""
    names = ("eac1", "eac2")
    positions = np.arange(len(images))
    seeds = np.random.default_rng(3).integers(0, 2**63 - 1, size=len(images))
    dv = _DV(images, SIZE, 10)
    whole = dv(positions, seeds, names)
    perm = np.random.default_rng(4).permutation(len(images))[:20]
    part = dv(positions[perm], seeds[perm], names)
    for name in names:
        assert torch.equal(part[name], whole[name][torch.from_numpy(perm)])


def _lowbias32(x: int) -> int:
    """Wellons' lowbias32 in plain Python integers (the reference)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_hash_is_lowbias32_without_overflow():
    from fernoise.train.augment import _hash32

    xs = [0, 1, 2, 12345, 0x7FFFFFFF, 0x80000000, 0xDEADBEEF, 0xFFFFFFFF]
    got = _hash32(torch.tensor(xs, dtype=torch.int64, device=DEV)).tolist()
    assert got == [_lowbias32(x) for x in xs]
    assert all(0 <= g <= 0xFFFFFFFF for g in got)


def test_noise_field_is_standard_normal_and_keyed():
    from fernoise.train.augment import noise_field

    keys = torch.tensor([[1, 2], [1, 2], [1, 3], [7, 2]], dtype=torch.int64)
    z = noise_field(keys, (3, 64, 64), DEV).cpu()
    assert z.shape == (4, 3, 64, 64) and z.dtype == torch.float32
    assert torch.equal(z[0], z[1])  # same key, same field
    for a, b in ((0, 2), (0, 3), (2, 3)):
        r = np.corrcoef(z[a].ravel().numpy(), z[b].ravel().numpy())[0, 1]
        assert abs(r) < 0.05  # different keys: unrelated fields
    big = noise_field(
        torch.randint(0, 2**32, (64, 2), generator=torch.Generator().manual_seed(0)),
        (3, 32, 32),
        DEV,
    ).cpu()
    v = big.double().ravel()
    assert abs(v.mean().item()) < 0.01 and abs(v.std().item() - 1) < 0.01
    assert abs((v.abs() > 1.96).double().mean().item() - 0.05) < 0.003  # normal tails
    flat = big.view(64, -1)
    r = np.corrcoef(flat[:, :-1].ravel().numpy(), flat[:, 1:].ravel().numpy())[0, 1]
    assert abs(r) < 0.01  # neighbouring pixels independent


DIST = 24  # side of the distribution tests' images
N_DRAWS = 10_000


def _both_paths(img, names, seed):
    """Worker and device views of N_DRAWS copies of one image, each with its own seed."""
    stack = np.broadcast_to(img, (N_DRAWS, DIST, DIST, 3))
    seeds = np.random.default_rng(seed).integers(0, 2**63 - 1, size=N_DRAWS)
    dv = _DV(np.ascontiguousarray(stack[:1]), DIST, 10)
    dev = {n: [] for n in names}
    for s in range(0, N_DRAWS, 2000):
        out = dv(np.zeros(2000, np.int64), seeds[s : s + 2000], names)
        for n in names:
            dev[n].append(out[n])
    dev = {n: torch.cat(v) for n, v in dev.items()}
    ref = {n: [] for n in names}
    for seed_i in seeds:
        v = data.sample_views(img, np.random.default_rng(int(seed_i)), names, None)
        for n in names:
            ref[n].append(v[n])
    return dev, {n: torch.stack(v) for n, v in ref.items()}


def _erased(views_u8):
    """Per sample: pixels (all three channels) equal to the erasing fill."""
    fill = torch.tensor(views.ERASE_FILL, dtype=torch.uint8).view(1, 3, 1, 1)
    return (views_u8 == fill).all(1).flatten(1).sum(1).double()


def test_noise_and_erasing_distributions_match_the_worker_path():
    """eac1 on a flat mid-grey image: noise mean (-0.5, the truncation) and sd (sqrt(30 + 1/12)),
    erasing rate (~0.5) and erased-area bounds, device vs worker over 10,000 draws."""
    grey = np.full((DIST, DIST, 3), 128, np.uint8)
    dev, ref = _both_paths(grey, ("eac1",), 21)
    area = DIST * DIST
    for path in (dev, ref):
        x = path["eac1"]
        erased = _erased(x)
        hit = erased > 0
        assert abs(hit.double().mean().item() - 0.5) < 0.02
        frac = erased[hit] / area
        # boxes of U(0.02, 0.25) of the area with rounded sides
        assert frac.min().item() >= 0.012 and frac.max().item() <= 0.30
        assert abs(frac.mean().item() - 0.135) < 0.01
        keep = ~(x == torch.tensor(views.ERASE_FILL, dtype=torch.uint8).view(1, 3, 1, 1)).all(
            1, keepdim=True
        )
        noisy = (x != 128).flatten(1).logical_and(keep.expand_as(x).flatten(1)).any(1)
        assert abs(noisy.double().mean().item() - 0.5) < 0.02  # noise p = 0.5
        vals = x[noisy].double() - 128
        vals = vals[keep[noisy].expand(-1, 3, -1, -1)]
        assert abs(vals.mean().item() + 0.5) < 0.03
        assert abs(vals.std().item() - float(np.sqrt(30 + 1 / 12))) < 0.03
    dmean = _erased(dev["eac1"]).mean().item()
    rmean = _erased(ref["eac1"]).mean().item()
    assert abs(dmean - rmean) / area < 0.006


def test_scn_flip_rate_and_choice_distribution():
    """scn on an image whose flip is recognisable: flip 0.25, noise 0.25, neither 0.5."""
    img = np.zeros((DIST, DIST, 3), np.uint8)
    img[:, : DIST // 2] = 200  # left half bright: the flip puts it right
    img[:, DIST // 2 :] = 60
    dev, ref = _both_paths(img, ("scn",), 5)
    for path in (dev, ref):
        x = path["scn"].double()
        left, right = x[..., : DIST // 2].mean((1, 2, 3)), x[..., DIST // 2 :].mean((1, 2, 3))
        flipped = right > left
        plain = torch.isin(
            path["scn"], torch.tensor([200, 60, *views.ERASE_FILL], dtype=torch.uint8)
        )
        noised = (~plain).flatten(1).sum(1) > DIST * DIST  # noise changes ~93% of the 3*H*W values
        assert abs(flipped.double().mean().item() - 0.25) < 0.02
        assert abs(noised.double().mean().item() - 0.25) < 0.02
        assert not (flipped & noised).any()
