"""Training data: the decoded uint8 array cache, the weak and strong views, and the loaders.

Reads a manifest's usable rows (a crop in ``path``, status ok/whole). Writes one array cache
per (row list, crop content, image size):
``<cache_dir>/<rows hash[:8]>-<content[:16]>-<size>.npy``, an ``(N, size, size, 3)`` uint8
array in manifest row order, decoded once with ``fernoise.images.load_rgb`` and written
atomically, and beside it ``.skipped.json`` (the rows whose crop could not be used, with the
reason); every epoch memory-maps it instead of decoding JPEG/PNG files again.

The content fingerprint (:func:`crop_fingerprint`) covers, per row, the crop's sha256 as align
recorded it (``crop_sha256``, when the manifest has it) and the file's size and modification
time: a crop changed, replaced or deleted after the cache was built changes the fingerprint, so
the cache is rebuilt and the old pixels are never trained on. While building, a crop that is
missing, cannot be decoded (truncated, not an image), is not a regular file of at most
``fernoise.safefiles.MAX_CROP_BYTES`` (a FIFO, ``/dev/zero``: never opened or read for ever)
or differs from its recorded sha256 is a skipped row (zeros in the array, listed in
``.skipped.json``), never a crash.

Views by name (docs/methods.md, paper §3.2; the method says which, ``Method.views``): weak =
zero-pad 4 px, random crop back to the size, horizontal flip p=0.5; strong = the weak view
plus RandAugment (2 ops, magnitude out of 31 bins) with torchvision's exact op table; any
other name is a function of ``fernoise/methods/views.py``. Every random choice comes from a per-sample seed that the
epoch's generator draws, so a sample's views depend only on (seed, epoch, position), never on
worker count or scheduling: a resumed run sees the same pixels as an uninterrupted one.
Augmentation runs in DataLoader workers on uint8 tensors; normalisation (ImageNet statistics)
happens on the training device.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from fernoise.cache import atomic_path, atomic_write_json, bytes_sha256, clean_stale_tmp, read_json
from fernoise.images import MEAN, STD, load_rgb

# The views live in the one registry both view paths use; these names stay importable here.
from fernoise.methods.views import PAD, RANDAUG_BINS, RandAugment, ViewEnv, weak_view  # noqa: F401
from fernoise.progress import Progress
from fernoise.safefiles import MAX_CROP_BYTES, UnsafeFile, read_regular

USABLE_STATUSES = ("ok", "whole")


def usable(df: pd.DataFrame) -> pd.Series:
    """Bool mask of rows with a crop: status ok/whole and a non-null ``path``."""
    return df["status"].isin(USABLE_STATUSES) & df["path"].notna()


# ----------------------------------------------------------------------------- array cache
def crop_fingerprint(
    paths: Sequence[str | os.PathLike], shas: Sequence[str | None] | None = None
) -> str:
    """sha256 over every row's recorded crop sha256 (or ``-``) and the file's size and
    modification time (``missing`` when it does not exist): one ``stat`` per file."""
    h = hashlib.sha256()
    for i, p in enumerate(paths):
        try:
            st = os.stat(p)
            state = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            state = "missing"
        sha = shas[i] if shas is not None else None
        h.update(f"{p}\t{sha or '-'}\t{state}\n".encode())
    return h.hexdigest()


def cache_file(cache_dir: Path, ids: Sequence[str], content: str, size: int) -> Path:
    """``<cache_dir>/<rows hash[:8]>-<content[:16]>-<size>.npy``."""
    rows = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:8]
    return Path(cache_dir) / f"{rows}-{content[:16]}-{size}.npy"


def _skipped_file(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".npy") + ".skipped.json")


@dataclass
class Decoded:
    """The memory-mapped ``(N, size, size, 3)`` uint8 crops and the rows that were skipped
    (``{row position: reason}``; their pixels are zeros and must not be used)."""

    array: np.ndarray
    skipped: dict[int, str] = field(default_factory=dict)
    path: Path | None = None


def _decode(path: str | os.PathLike, sha: str | None, size: int) -> np.ndarray | str:
    """One crop, or the reason (a string) when it is missing, differs from ``sha`` or is no image."""
    try:
        raw = read_regular(path, MAX_CROP_BYTES)  # a FIFO or /dev/zero: a skipped row, never a hang
    except FileNotFoundError:
        return "missing"
    except UnsafeFile as e:
        return str(e)
    except OSError as e:
        return f"unreadable ({e.__class__.__name__})"
    if sha and bytes_sha256(raw) != sha:
        return "differs from the sha256 align recorded"
    try:
        return load_rgb(io.BytesIO(raw), size)
    except Exception as e:  # noqa: BLE001 - PIL raises many types for truncated or foreign files
        return f"not a readable image ({e.__class__.__name__})"


def preallocate(path: str | os.PathLike) -> None:
    """Give the (sparse) file at ``path`` its disk blocks now: writing through a memory map into
    a hole of a full file system kills the process with SIGBUS, while ``posix_fallocate`` fails
    up front with ENOSPC (an OSError naming ``path``). File systems without it are left as they are."""
    if not hasattr(os, "posix_fallocate"):  # macOS
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            e.filename = os.fspath(path)
            raise
    finally:
        os.close(fd)


def decoded_crops(
    paths: Sequence[str | os.PathLike],
    ids: Sequence[str],
    *,
    size: int,
    cache_dir: Path,
    shas: Sequence[str | None] | None = None,
    progress: Progress | None = None,
) -> Decoded:
    """The crops at ``paths`` decoded once into the array cache (see the module docstring).

    A call whose rows, crops (recorded sha256, size, mtime) and size match an earlier one
    memory-maps its cache; otherwise the cache is rebuilt and stale caches of the same rows
    are removed.
    """
    content = crop_fingerprint(paths, shas)
    path = cache_file(cache_dir, ids, content, size)
    side = _skipped_file(path)
    rec = read_json(side)
    if path.is_file() and isinstance(rec, dict) and rec.get("content") == content:
        with contextlib.suppress(ValueError, OSError):
            arr = np.load(path, mmap_mode="r")
            if arr.shape == (len(paths), size, size, 3):
                return Decoded(arr, {int(k): v for k, v in rec.get("skipped", {}).items()}, path)
    skipped: dict[int, str] = {}
    clean_stale_tmp(cache_dir)  # a cache half-written by a killed run (kill -9, SIGBUS)
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3)
        )
        preallocate(tmp)
        step = max(1, len(paths) // 100)
        for i, p in enumerate(paths):
            img = _decode(p, shas[i] if shas is not None else None, size)
            if isinstance(img, str):  # why it could not be used
                skipped[i] = img
                out[i] = 0
            else:
                out[i] = img
            if progress and (i % step == 0 or i == len(paths) - 1):
                progress({"event": "decode", "done": i + 1, "total": len(paths)})
        out.flush()
        del out
        atomic_write_json(
            side, {"content": content, "skipped": {str(k): v for k, v in skipped.items()}}
        )
    prefix, suffix = path.name.split("-")[0], f"-{size}.npy"
    for old in Path(cache_dir).glob(f"{prefix}-*{suffix}"):  # stale caches of the same rows
        if old != path:
            old.unlink(missing_ok=True)
            _skipped_file(old).unlink(missing_ok=True)
    return Decoded(np.load(path, mmap_mode="r"), skipped, path)


def array_cache(
    paths: Sequence[str | os.PathLike],
    ids: Sequence[str],
    *,
    size: int,
    cache_dir: Path,
    manifest_key: str | None = None,
    shas: Sequence[str | None] | None = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """The crops at ``paths`` as a memory-mapped ``(N, size, size, 3)`` uint8 array, keyed on
    the crops' content (``manifest_key`` is not needed and ignored). Raises FernoiseError
    when a crop could not be used; :func:`decoded_crops` skips and reports such rows."""
    from fernoise.errors import FernoiseError

    got = decoded_crops(paths, ids, size=size, cache_dir=cache_dir, shas=shas, progress=progress)
    if got.skipped:
        i, why = next(iter(got.skipped.items()))
        raise FernoiseError(
            f"{len(got.skipped)} crops could not be used, e.g. {paths[i]}: {why}; re-run `fernoise align`"
        )
    return got.array


# ----------------------------------------------------------------------------- views
@dataclass(frozen=True)
class Batch:
    """Row positions ``(B,)`` into the array cache, one augmentation seed per row, and the
    names of the views to build (``weak``, ``strong`` or a ``fernoise.methods.views`` name)."""

    positions: np.ndarray
    seeds: np.ndarray
    views: tuple[str, ...] = ("weak",)


def sample_views(
    img: np.ndarray, rng: np.random.Generator, names: Sequence[str], randaug: RandAugment | None
) -> dict:
    """The views ``names`` of one ``(H, W, 3)`` uint8 image, each ``(3, H, W)`` uint8, all from
    the one per-sample ``rng`` in the order of ``names`` (``fernoise.methods.views.sample_views``)."""
    from fernoise.methods import views

    return views.sample_views(img, rng, names, ViewEnv(img.shape[0], randaug))


class ViewBatches(Dataset):
    """Turns a :class:`Batch` into ``{"positions": (B,), "views": {name: uint8 (B,3,H,W)}}``."""

    def __init__(self, images: np.ndarray, size: int, randaug_magnitude: int):
        self.images = images
        self.randaug = RandAugment(size, randaug_magnitude)
        self.env = ViewEnv(size, self.randaug)

    def __len__(self) -> int:  # batches come from the sampler; this is never used for indexing
        return 0

    def __getitem__(self, batch: Batch) -> dict:
        from fernoise.methods import views

        per_sample = [
            views.sample_views(
                self.images[pos], np.random.default_rng(int(seed)), batch.views, self.env
            )
            for pos, seed in zip(batch.positions, batch.seeds, strict=True)
        ]
        return {
            "positions": torch.from_numpy(batch.positions),
            "views": {name: torch.stack([v[name] for v in per_sample]) for name in batch.views},
        }


def epoch_batches(
    rows: np.ndarray,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    views: Sequence[str] = ("weak",),
    rank: int = 0,
    world: int = 1,
    salt: tuple[int, ...] = (),
) -> list[Batch]:
    """This rank's batches of the training ``rows`` (array-cache indices) for ``epoch``.

    A permutation seeded by (seed, epoch, *salt) (``salt``: a method's further streams and
    their rounds, ``Method.epoch_rows``; empty for the one stream), padded to a multiple of ``world`` (as
    DistributedSampler does) and dealt out ``perm[rank::world]``; one augmentation seed per
    training sample. A final batch of one sample is dropped (BatchNorm cannot train on it).
    """
    n = len(rows)
    rng = np.random.default_rng([seed, epoch, *salt])
    perm = rng.permutation(n)
    seeds = rng.integers(0, 2**63 - 1, size=n)
    total = -(-n // world) * world
    order = np.concatenate([perm, perm[: total - n]])[rank::world]
    out = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        if len(idx) < 2:
            continue
        out.append(Batch(np.asarray(rows)[idx].astype(np.int64), seeds[idx], tuple(views)))
    return out


def loader(
    dataset: ViewBatches, batches: list[Batch], *, workers: int, pin_memory: bool = False
) -> Iterator[dict]:
    """Iterate ``batches`` through ``dataset`` in ``workers`` processes (0 = in this process)."""
    return iter(
        DataLoader(
            dataset,
            batch_size=None,
            sampler=batches,
            num_workers=workers,
            pin_memory=pin_memory,
            prefetch_factor=4 if workers else None,
            multiprocessing_context="fork" if workers and os.name == "posix" else None,
        )
    )


def normalize(
    x: torch.Tensor,
    device: torch.device,
    *,
    channels_last: bool = False,
    mean: Sequence[float] = MEAN,
    std: Sequence[float] = STD,
) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` -> float ``(x / 255 - mean) / std`` on ``device``: ImageNet
    statistics by default, the backbone card's (``fernoise.backbones.Card.mean``/``std``) when
    given."""
    x = x.to(device, non_blocking=True).float().div_(255)
    m = torch.tensor(tuple(mean), device=device).view(1, 3, 1, 1)
    sd = torch.tensor(tuple(std), device=device).view(1, 3, 1, 1)
    x = (x - m) / sd
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def eval_batches(
    images: np.ndarray, positions: np.ndarray, batch_size: int
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Test-time batches (resize only): ``(positions, uint8 (B, 3, H, W))``."""
    for start in range(0, len(positions), batch_size):
        pos = positions[start : start + batch_size]
        x = torch.from_numpy(np.ascontiguousarray(images[pos]))
        yield pos, x.permute(0, 3, 1, 2)
