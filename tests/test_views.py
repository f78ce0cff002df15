"""SCN/RUL/EAC views: flip exact, erasing box and fill, noise statistics, composition rates,
determinism given the seed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fernoise.errors import FernoiseError
from fernoise.images import MEAN, STD
from fernoise.methods import views

H, W = 48, 40


def image(seed: int = 0) -> np.ndarray:
    """A non-symmetric test image whose red channel (0..80) never reaches the fill's 124,
    even with noise (|n| < 40: over 7 sd)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 81, size=(H, W, 3)).astype(np.uint8)
    img[:, : W // 2, 1] = 200  # left half differs from the right: a flip is visible
    return img


def erased_mask(out_hwc: np.ndarray) -> np.ndarray:
    return np.all(out_hwc == np.array(views.ERASE_FILL, dtype=np.uint8), axis=-1)


def box_of(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """The mask's bounding box (top, left, h, w), asserting the mask is exactly that box."""
    if not mask.any():
        return None
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    top, left, h, w = rows[0], cols[0], rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    assert mask.sum() == h * w  # a full rectangle, nothing outside it
    return int(top), int(left), int(h), int(w)


def hwc(t: torch.Tensor) -> np.ndarray:
    assert t.dtype == torch.uint8 and t.shape == (3, H, W)
    return t.permute(1, 2, 0).numpy()


def test_fill_normalises_to_the_official_zero():
    assert views.ERASE_FILL == (124, 116, 104)
    normed = [(f / 255 - m) / s for f, m, s in zip(views.ERASE_FILL, MEAN, STD, strict=True)]
    assert normed == pytest.approx([0.00551, -0.00490, 0.00815], abs=1e-4)


def test_erase_box_bounds_and_placement():
    rng = np.random.default_rng(1)
    areas = []
    for _ in range(3000):
        top, left, eh, ew = views.erase_box(H, W, rng)
        assert 0 <= top <= H - eh and 0 <= left <= W - ew and 1 <= eh < H and 1 <= ew < W
        # sides are round(sqrt(a r)), round(sqrt(a / r)) with a in [0.02, 0.25] * H * W
        assert (eh - 0.5) * (ew - 0.5) <= 0.25 * H * W
        assert (eh + 0.5) * (ew + 0.5) >= 0.02 * H * W
        # and aspect sqrt(a r) / sqrt(a / r) = r in [0.3, 3.3]
        assert (eh - 0.5) / (ew + 0.5) <= 3.3 and (eh + 0.5) / (ew - 0.5) >= 0.3
        areas.append(eh * ew / (H * W))
    # area ~ U(0.02, 0.25): mean 0.135 (rounding adds little)
    assert np.mean(areas) == pytest.approx(0.135, abs=0.01)


class Largest:
    """A generator stand-in that always draws the top of the range: the largest, tallest box."""

    def __init__(self):
        self.uniform_calls = 0

    def random(self):
        return 0.0

    def uniform(self, lo, hi):
        self.uniform_calls += 1
        return hi

    def integers(self, lo, hi):
        raise AssertionError("no box fits: nothing is placed")


def test_erase_box_gives_up_after_ten_tries_like_torchvision():
    # 4 x 4, area 0.25 * 16, aspect 3.3: height round(sqrt(13.2)) = 4, not < 4, in every try
    rng = Largest()
    assert views.erase_box(4, 4, rng) is None and rng.uniform_calls == 20
    img = np.zeros((4, 4, 3), np.uint8)
    assert views.random_erasing(img, Largest()) is img


def test_random_erasing_writes_exactly_one_box_with_p_half():
    img = image()
    n_erased = 0
    for seed in range(400):
        out = views.random_erasing(img, np.random.default_rng(seed))
        mask = erased_mask(out)
        box = box_of(mask)
        assert np.array_equal(out[~mask], img[~mask])  # nothing else changes
        if box is not None:
            n_erased += 1
            # the same draws as erase_box after the p coin
            rng = np.random.default_rng(seed)
            assert rng.random() < 0.5 and views.erase_box(H, W, rng) == box
    assert 400 * 0.5 - 35 <= n_erased <= 400 * 0.5 + 35  # binomial(400, 0.5): sd 10
    assert img.flags.writeable and erased_mask(img).sum() == 0  # the input is never written


def test_noise_statistics_truncate_like_the_official_astype():
    grey = np.full((64, 64, 3), 128, np.uint8)
    out = views.gaussian_noise(grey, np.random.default_rng(0)).astype(np.float64)
    # floor(128 + N(0, 30)): mean 127.5, variance 30 + 1/12
    assert out.mean() == pytest.approx(127.5, abs=0.1)
    assert out.std() == pytest.approx(math.sqrt(30 + 1 / 12), abs=0.1)
    white = np.full((64, 64, 3), 255, np.uint8)
    out = views.gaussian_noise(white, np.random.default_rng(1))
    assert out.dtype == np.uint8 and out.shape == white.shape
    # clipped: n >= 0 gives 255, n < 0 gives floor(255 + n) <= 254
    assert (out == 255).mean() == pytest.approx(0.5, abs=0.02)
    black = np.zeros((64, 64, 3), np.uint8)
    assert (views.gaussian_noise(black, np.random.default_rng(2)) == 0).mean() == pytest.approx(
        0.5 + 0.5 * 0.145, abs=0.02
    )


def test_eac2_is_the_exact_flip_outside_its_box():
    img = image()
    erased = 0
    for seed in range(200):
        out = hwc(views.eac2_view(img, np.random.default_rng(seed)))
        mask = erased_mask(out)
        erased += box_of(mask) is not None
        assert np.array_equal(out[~mask], img[:, ::-1][~mask])
    assert 100 - 30 <= erased <= 100 + 30


def classify_scn(img: np.ndarray, out: np.ndarray) -> str:
    keep = ~erased_mask(out)
    if np.array_equal(out[keep], img[keep]):
        return "none"
    if np.array_equal(out[keep], img[:, ::-1][keep]):
        return "flip"
    assert np.abs(out[keep].astype(int) - img[keep].astype(int)).max() <= 40  # noise only (> 7 sd)
    return "noise"


def test_scn_view_composition_rates():
    img = image()
    counts = {"none": 0, "flip": 0, "noise": 0}
    erased = 0
    n = 800
    for seed in range(n):
        out = hwc(views.scn_view(img, np.random.default_rng(seed)))
        counts[classify_scn(img, out)] += 1
        erased += erased_mask(out).any()
    # official: p 0.5 augment, then flip or noise uniformly -> 0.5 / 0.25 / 0.25; erasing p 0.5
    assert abs(counts["none"] - n * 0.5) <= 45
    assert abs(counts["flip"] - n * 0.25) <= 40
    assert abs(counts["noise"] - n * 0.25) <= 40
    assert abs(erased - n * 0.5) <= 45


def test_eac1_noise_rate_and_never_flips():
    img = image()
    noised = 0
    for seed in range(400):
        out = hwc(views.eac1_view(img, np.random.default_rng(seed)))
        kind = classify_scn(img, out)
        assert kind != "flip"
        noised += kind == "noise"
    assert abs(noised - 200) <= 35


@pytest.mark.parametrize("name", ["scn", "eac1", "eac2"])
def test_views_depend_only_on_the_seed(name):
    kind = views.get(name)
    env = views.ViewEnv(H)

    def fn(img, rng):
        return kind.sample(img, rng, env)

    img = image(3)
    a = [fn(img, np.random.default_rng([7, e, i])) for e in range(2) for i in range(10)]
    b = [fn(img, np.random.default_rng([7, e, i])) for e in range(2) for i in range(10)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert len({x.numpy().tobytes() for x in a}) > 5  # different seeds give different views


def test_unknown_view_lists_the_known_ones():
    with pytest.raises(
        FernoiseError, match="unknown view 'weak2'; known views: eac1, eac2, scn, strong, weak"
    ):
        views.get("weak2")


def test_the_data_code_builds_them_from_one_rng_per_sample_in_order():
    from fernoise import data

    images = np.stack([image(s) for s in range(3)])
    batch = data.Batch(np.array([2, 0]), np.array([11, 12]), ("eac1", "eac2"))
    out = data.ViewBatches(images, H, 10)[batch]
    for b, (pos, seed) in enumerate([(2, 11), (0, 12)]):
        rng = np.random.default_rng(seed)
        x1, x2 = views.eac1_view(images[pos], rng), views.eac2_view(images[pos], rng)
        assert torch.equal(out["views"]["eac1"][b], x1) and torch.equal(out["views"]["eac2"][b], x2)
