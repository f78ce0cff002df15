"""The array cache and the views: decoded once, deterministic per seed, right shapes."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from fernoise import data


def write_pngs(root, n=6, size=20):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = root / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (size, size, 3)).astype(np.uint8)).save(p)
        paths.append(p)
    return paths


def test_array_cache_is_built_once_and_memory_mapped(tmp_path):
    paths = write_pngs(tmp_path)
    ids = [p.name for p in paths]
    events = []
    arr = data.array_cache(paths, ids, size=16, cache_dir=tmp_path / "c", progress=events.append)
    assert arr.shape == (6, 16, 16, 3) and arr.dtype == np.uint8 and isinstance(arr, np.memmap)
    assert events and events[-1] == {"event": "decode", "done": 6, "total": 6}
    f = data.cache_file(tmp_path / "c", ids, data.crop_fingerprint(paths), 16)
    mtime = f.stat().st_mtime_ns
    events.clear()
    again = data.array_cache(paths, ids, size=16, cache_dir=tmp_path / "c", progress=events.append)
    assert (
        f.stat().st_mtime_ns == mtime and np.array_equal(arr, again) and events == []
    )  # not decoded again
    assert not [p for p in (tmp_path / "c").iterdir() if p.name.endswith(".tmp")]
    other = data.cache_file(tmp_path / "c", ids, data.crop_fingerprint(paths), 24)
    assert other != f  # keyed by size


def test_views_depend_only_on_the_seed():
    img = np.random.default_rng(1).integers(0, 255, (32, 32, 3)).astype(np.uint8)
    ra = data.RandAugment(32, 10)
    a = ra(data.weak_view(img, np.random.default_rng(5)), np.random.default_rng(6))
    b = ra(data.weak_view(img, np.random.default_rng(5)), np.random.default_rng(6))
    assert a.shape == (3, 32, 32) and a.dtype == torch.uint8 and torch.equal(a, b)
    # pad 4 + crop + flip: each output is a shifted (maybe flipped) copy of the input
    w = data.weak_view(img, np.random.default_rng(7)).permute(1, 2, 0).numpy()
    found = False
    for flip in (False, True):
        src = img[:, ::-1] if flip else img
        pad = np.zeros((40, 40, 3), np.uint8)
        pad[4:36, 4:36] = src
        for dy in range(9):
            for dx in range(9):
                found |= np.array_equal(pad[dy : dy + 32, dx : dx + 32], w)
    assert found


def test_epoch_batches_cover_each_row_once_and_split_across_ranks():
    rows = np.arange(100, 150)  # 50 training rows, array-cache indices 100..149
    b = data.epoch_batches(rows, 16, seed=0, epoch=1, views=("weak",))
    got = np.concatenate([x.positions for x in b])
    assert sorted(got.tolist()) == rows.tolist() and [len(x.positions) for x in b] == [
        16,
        16,
        16,
        2,
    ]  # a last batch of 2 is kept
    assert not np.array_equal(
        got,
        np.concatenate(
            [x.positions for x in data.epoch_batches(rows, 16, seed=0, epoch=2, views=("weak",))]
        ),
    )
    r0 = np.concatenate(
        [
            x.positions
            for x in data.epoch_batches(
                rows, 5, seed=0, epoch=1, views=("weak", "strong"), rank=0, world=2
            )
        ]
    )
    r1 = np.concatenate(
        [
            x.positions
            for x in data.epoch_batches(
                rows, 5, seed=0, epoch=1, views=("weak", "strong"), rank=1, world=2
            )
        ]
    )
    assert len(r0) == len(r1) == 25 and set(r0) | set(r1) == set(rows.tolist())
