"""Seeded, stratified subsets of rows (``align --max-rows``; meant for ``train --max-rows`` too).

:func:`stratified_subset` keeps ``n`` of the rows, each stratum (e.g. a class, or a
``(split, label)`` pair; None is a stratum of its own) getting the largest-remainder rounding
of its share ``n * n_s / N``, so the counts add up to ``n`` exactly and every stratum keeps its
proportion within one row. Rows are drawn without replacement with their own
``np.random.default_rng([seed, 0x5B5])``, stratum by stratum in a fixed order, so the
same strata, ``n`` and seed give the same rows on any machine. Positions refer to the order
the caller passes: pass rows in a stable order (e.g. sorted by ``id``).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from fernoise.errors import FernoiseError


def _largest_remainder(n: int, sizes: np.ndarray) -> np.ndarray:
    """Integer shares of ``n`` proportional to ``sizes`` (int64, summing to ``n``); equal
    remainders go to the lower index."""
    total = int(sizes.sum())
    quota = np.round(n * sizes / total, 9)
    counts = np.floor(quota).astype(np.int64)
    left = n - int(counts.sum())
    order = np.argsort(-(quota - counts), kind="stable")
    counts[order[:left]] += 1
    return counts


def _stratum_key(s: Hashable) -> tuple:
    """A total order over mixed strata: None first, then numbers by value, then the rest by
    type name and repr; tuples element by element."""
    if isinstance(s, tuple):
        return (1, tuple(_stratum_key(x) for x in s))
    if s is None or (isinstance(s, float) and s != s):
        return (0, "")
    if isinstance(s, int | float | np.integer | np.floating) and not isinstance(s, bool):
        return (2, float(s), "")
    return (3, type(s).__name__, repr(s))


def stratified_subset(
    strata: Sequence[Hashable], n: int, seed: int = 0, *, flag: str = "--max-rows"
) -> np.ndarray:
    """Sorted positions (int64) of ``min(n, len(strata))`` rows, stratified by ``strata``.

    ``strata[i]`` is row i's stratum (any hashable: a label, a ``(split, label)`` tuple,
    None). With ``n >= len(strata)`` every row is kept. Raises (naming ``flag``) when ``n < 1``.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise FernoiseError(f"expected a positive number of rows, got {n!r}", flag=flag)
    total = len(strata)
    if n >= total:
        return np.arange(total, dtype=np.int64)
    groups: dict[Hashable, list[int]] = {}
    for i, s in enumerate(strata):
        if isinstance(s, float) and s != s:
            s = None
        groups.setdefault(s, []).append(i)
    keys = sorted(groups, key=_stratum_key)
    sizes = np.array([len(groups[k]) for k in keys], dtype=np.int64)
    take = _largest_remainder(int(n), sizes)
    rng = np.random.default_rng([int(seed), 0x5B5])
    picked: list[np.ndarray] = []
    for k, m in zip(keys, take, strict=True):
        rows = np.asarray(groups[k], dtype=np.int64)
        picked.append(rows[rng.choice(len(rows), size=int(m), replace=False)])
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)
