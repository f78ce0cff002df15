"""Label noise, exact and reproducible: ``sym``, ``asym``, ``matrix``, ``column`` and ``list`` kinds.

Reads a manifest DataFrame (columns ``id``, ``split``, ``label``; ``label`` an index into the
manifest's own class list ``classes``) and returns a new one with

- ``label``: the label to train on (noisy), ``Int64``;
- ``label_clean``: the label before this stage, ``Int64``;
- ``is_noisy``: ``label != label_clean`` (bool; False where either is null);
- ``label_name``: the canonical name of the new ``label``;

every other column unchanged, plus an ``info`` dict with the realised noise (see
:func:`corrupt`). No I/O here: reading, keys and writing live in :mod:`fernoise.corrupt.stage`.

Exactness (docs/data.md, "Noise kinds"):

- Only rows with ``split == "train"`` and a non-null ``label`` change. They are first sorted by
  ``id`` (UTF-8 byte order), so the result does not depend on the row order of the input.
- One generator, ``np.random.default_rng(seed)``, drawn class by class in class-index order.
- ``sym``/``asym``: in class c (n_c training rows), exactly ``exact_count(rate, n_c)`` rows
  are flipped, chosen without replacement. **Rounding is half-up**:
  ``floor(rate * n_c + 0.5)`` (with ``rate * n_c`` first rounded to 9 decimals so that
  0.3 * 5 counts as 1.5). Python's ``round`` rounds half to even and differs when
  ``rate * n_c`` ends in exactly .5 (e.g. 0.3 * 15 = 4.5: half-up 5, ``round`` 4).
  ``sym`` sends each flipped row to a class drawn uniformly from the other C-1 classes
  (C = ``len(classes)``); ``asym`` sends it to its class's partner
  (:data:`fernoise.labels.ASYM_PAIRS` unless ``pairs`` is given).
- ``matrix``: a C x C row-stochastic matrix M (rows = true class, columns = noisy class).
  Row c's counts are the largest-remainder rounding of ``n_c * M[c]`` (products rounded to
  9 decimals; ties in the remainders go to the lower class index), so they sum to n_c exactly.
  The rows of class c are permuted once and cut into consecutive blocks, class 0 first: the
  diagonal block is kept, the others are flipped. ``rate`` is not used.
- ``column``: real annotator noise. The column ``params.column`` (canonical class indices 0-7,
  or class names/aliases), mapped by name into ``classes``, becomes ``label``; the old label is
  kept as ``label_clean``. A training row whose column value is null gets a **null** ``label``
  (no second annotation, so nothing to train on; counted in ``info["missing"]``), and so does
  one whose value is a class the manifest does not have (counted per class in
  ``info["outside"]``); both get ``is_noisy`` False and are left out of the realised matrix
  and rates. ``seed`` and ``rate`` are not used.
- ``list``: a peer's noisy-label list (SCN, RUL, EAC ship them: ``<image name> <label>`` per
  line), read by :func:`fernoise.corrupt.stage.load_noise_list` into ``params.listed``
  (image key -> canonical class name). A training row whose key (:func:`image_key` of its
  ``src_path``) the list names gets that class (null when the manifest lacks the class,
  counted in ``info["outside"]``); training rows the list does not name keep their label
  and are counted (``info["list"]["unlisted_rows"]``, first few named), as are the list's
  names that match no row and names of rows outside the training split. ``seed`` and
  ``rate`` are not used.

Every kind draws only from ``classes``, the manifest's own class list (an ordered subset of
the canonical order, e.g. ``[happy, sad, anger]``): ``label`` values are indices into it, sym
picks among its other classes, asym partners outside it are an error, a matrix is C x C of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from fernoise.errors import FernoiseError
from fernoise.labels import asym_partners, canonical_name

ROW_SUM_TOL = 1e-6


# ----------------------------------------------------------------------------- rounding
def exact_count(rate: float, n: int) -> int:
    """Rows of a class of ``n`` to flip at ``rate``: ``floor(rate * n + 0.5)`` (half-up).

    ``rate * n`` is rounded to 9 decimals first so binary fractions do not move a .5 down
    (0.3 * 5 is 1.4999999999999998 in floating point; it counts as 1.5 and gives 2).
    """
    return int(math.floor(round(rate * n, 9) + 0.5))


def largest_remainder(n: int, probs: Sequence[float]) -> np.ndarray:
    """Integer counts (int64, one per entry of ``probs``) summing to ``n``, closest to ``n * probs``.

    Floors first, then gives the leftover units to the largest fractional parts; equal
    remainders go to the lower index. ``probs`` must sum to 1 (within 1e-6).
    """
    quota = np.round(n * np.asarray(probs, dtype=np.float64), 9)
    counts = np.floor(quota).astype(np.int64)
    left = n - int(counts.sum())
    if left > 0:
        order = np.argsort(-(quota - counts), kind="stable")
        counts[order[:left]] += 1
    elif left < 0:  # rows summing a hair above 1: take from the smallest remainders
        order = np.argsort(quota - counts, kind="stable")
        for i in order:
            if left == 0:
                break
            take = min(counts[i], -left)
            counts[i] -= take
            left += take
    return counts


# ----------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class CorruptParams:
    """What to corrupt and how. Built by the CLI; checked here (messages name the CLI flag)."""

    kind: str
    """Noise kind: one of :data:`KINDS` (sym, asym, matrix, column)."""
    rate: float | None = None
    """Fraction of each class to flip, in [0, 1); sym and asym only."""
    seed: int = 0
    """Seed of the one generator (``np.random.default_rng(seed)``); not used by column."""
    pairs: Mapping[str, str] | None = None
    """asym only: canonical class name -> partner name, replacing ASYM_PAIRS."""
    matrix: tuple[tuple[float, ...], ...] | None = None
    """matrix only: C x C transition probabilities, rows = true class, rows sum to 1."""
    column: str | None = None
    """column only: the manifest column holding the second (noisy) annotation."""
    listed: Mapping[str, str] | None = None
    """list only: image key (:func:`image_key`) -> canonical class name, from ``--from``."""
    numbering: str | None = None
    """list only: how the list numbers its labels (:data:`NUMBERINGS`), as read."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise FernoiseError(
                f"unknown noise kind {self.kind!r}; expected one of: {', '.join(KINDS)}",
                flag="--kind",
            )
        uses = KINDS[self.kind].uses
        if "rate" in uses:
            if self.rate is None:
                raise FernoiseError(
                    f"--kind {self.kind} needs a rate in [0, 1), e.g. --rate 0.3", flag="--rate"
                )
            if not (
                isinstance(self.rate, int | float)
                and math.isfinite(self.rate)
                and 0 <= self.rate < 1
            ):
                raise FernoiseError(
                    f"expected a rate in [0, 1), found {self.rate!r}; e.g. --rate 0.3",
                    flag="--rate",
                )
        elif self.rate is not None:
            raise FernoiseError(
                f"--kind {self.kind} does not use a rate (found {self.rate}); drop --rate",
                flag="--rate",
            )
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise FernoiseError(
                f"expected a non-negative integer seed, found {self.seed!r}", flag="--seed"
            )
        if self.pairs is not None and self.kind != "asym":
            raise FernoiseError(
                f"pairs are for --kind asym, not {self.kind}; drop --pairs", flag="--pairs"
            )
        if self.kind == "asym" and self.pairs is not None:
            for a, b in self.pairs.items():
                if a == b:
                    raise FernoiseError(
                        f"class {a!r} is paired with itself; a flip must change the class",
                        flag="--pairs",
                    )
        if self.kind == "matrix":
            if self.matrix is None:
                raise FernoiseError(
                    "--kind matrix needs --matrix FILE (CSV or .npy, C x C)", flag="--matrix"
                )
            check_matrix(np.asarray(self.matrix, dtype=np.float64))
        elif self.matrix is not None:
            raise FernoiseError(
                f"a matrix is for --kind matrix, not {self.kind}; drop --matrix", flag="--matrix"
            )
        if self.kind == "column":
            if not self.column:
                raise FernoiseError(
                    "--kind column needs --column NAME (the noisy annotation)", flag="--column"
                )
        elif self.column is not None:
            raise FernoiseError(
                f"a column is for --kind column, not {self.kind}; drop --column", flag="--column"
            )
        if self.kind == "list" and not self.listed:
            raise FernoiseError(
                "--kind list needs --from FILE (a noisy-label list: '<image name> <label>' per line)",
                flag="--from",
            )
        if self.kind != "list" and self.listed is not None:
            raise FernoiseError(
                f"a noisy-label list is for --kind list, not {self.kind}; drop --from",
                flag="--from",
            )

    def key_params(self) -> dict[str, Any]:
        """The parameters that change the output (the ones this kind uses), for the stage key."""
        uses = KINDS[self.kind].uses
        out: dict[str, Any] = {"kind": self.kind}
        if "rate" in uses:
            out["rate"] = float(self.rate)  # type: ignore[arg-type]
        if "seed" in uses:
            out["seed"] = self.seed
        if self.kind == "asym":
            out["pairs"] = dict(sorted(self.pairs.items())) if self.pairs is not None else None
        if self.kind == "matrix":
            out["matrix"] = [list(map(float, r)) for r in self.matrix]  # type: ignore[union-attr]
        if self.kind == "column":
            out["column"] = self.column
        if self.kind == "list":
            out["numbering"] = self.numbering  # the file itself enters as its sha256 (stage)
        return out


def check_matrix(
    m: np.ndarray, n_classes: int | None = None, classes: Sequence[str] | None = None
) -> None:
    """Raise unless ``m`` is a square (C x C when ``n_classes`` is given) row-stochastic matrix."""
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise FernoiseError(
            f"expected a square C x C matrix, found shape {m.shape}", flag="--matrix"
        )
    if n_classes is not None and m.shape[0] != n_classes:
        raise FernoiseError(
            f"expected a {n_classes}x{n_classes} matrix for the classes {list(classes or [])}, "
            f"found {m.shape[0]}x{m.shape[1]}",
            flag="--matrix",
        )
    if not np.isfinite(m).all() or (m < 0).any():
        raise FernoiseError(
            "expected non-negative finite probabilities in the matrix", flag="--matrix"
        )
    sums = m.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1) > ROW_SUM_TOL)
    if len(bad):
        i = int(bad[0])
        raise FernoiseError(
            f"every row must sum to 1 (within {ROW_SUM_TOL:g}); row {i} sums to {sums[i]:.8g}",
            flag="--matrix",
        )


# ----------------------------------------------------------------------------- kinds
@dataclass
class _Ctx:
    """What a kind function sees: the classes, parameters, generator and the rows' frame."""

    classes: list[str]
    params: CorruptParams
    rng: np.random.Generator
    df: pd.DataFrame
    rows: np.ndarray  # positions in df of the labelled training rows, in id order
    info: dict[str, Any] = field(default_factory=dict)


def _class_blocks(y: np.ndarray, n_classes: int) -> list[np.ndarray]:
    """Positions of each class in ``y`` (ascending, i.e. id order), one array per class."""
    order = np.argsort(y, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(y, minlength=n_classes))])
    return [order[bounds[c] : bounds[c + 1]] for c in range(n_classes)]


def _sym(y: np.ndarray, ctx: _Ctx) -> np.ndarray:
    n_classes = len(ctx.classes)
    rate = float(ctx.params.rate)  # type: ignore[arg-type]
    out = y.copy()
    for c, idx in enumerate(_class_blocks(y, n_classes)):
        k = exact_count(rate, len(idx))
        if k == 0:
            continue
        if n_classes < 2:
            raise FernoiseError("sym noise needs at least 2 classes", flag="--kind")
        pick = idx[ctx.rng.choice(len(idx), size=k, replace=False)]
        # offsets 1..C-1: uniform over the other classes, never the own class
        out[pick] = (c + ctx.rng.integers(1, n_classes, size=k)) % n_classes
    return out


def _asym(y: np.ndarray, ctx: _Ctx) -> np.ndarray:
    classes = tuple(ctx.classes)
    partners = asym_partners(
        classes, dict(ctx.params.pairs) if ctx.params.pairs is not None else None
    )
    rate = float(ctx.params.rate)  # type: ignore[arg-type]
    out = y.copy()
    for c, idx in enumerate(_class_blocks(y, len(classes))):
        k = exact_count(rate, len(idx))
        if k == 0:
            continue
        if partners[c] == c:
            raise FernoiseError(f"class {classes[c]!r} is paired with itself", flag="--pairs")
        pick = idx[ctx.rng.choice(len(idx), size=k, replace=False)]
        out[pick] = partners[c]
    ctx.info["partners"] = {classes[c]: classes[p] for c, p in enumerate(partners)}
    return out


def _matrix(y: np.ndarray, ctx: _Ctx) -> np.ndarray:
    n_classes = len(ctx.classes)
    m = np.asarray(ctx.params.matrix, dtype=np.float64)
    check_matrix(m, n_classes, ctx.classes)
    out = y.copy()
    planned = np.zeros((n_classes, n_classes), dtype=np.int64)
    for c, idx in enumerate(_class_blocks(y, n_classes)):
        counts = largest_remainder(len(idx), m[c])
        planned[c] = counts
        perm = idx[ctx.rng.permutation(len(idx))]
        out[perm] = np.repeat(np.arange(n_classes, dtype=np.int64), counts)
    ctx.info["planned"] = planned.tolist()
    return out


OUTSIDE = -2  # column_indices: a class the manifest does not have


def column_indices(
    values: pd.Series, classes: Sequence[str], *, column: str
) -> tuple[np.ndarray, dict[str, int]]:
    """Indices into ``classes`` of a second annotation column: ``(int64 array, outside)``.

    Values are mapped **by name** into the manifest's class list: integers are canonical
    indices 0-7 (0 neutral ... 7 contempt; *not* a dataset's own numbering, nor positions in
    ``classes``), strings are class names or aliases (any case, e.g. ``angry``,
    ``Happiness``) or digit strings. A null or empty value gives -1; a real class that is not
    in ``classes`` (``neutral`` on a dataset without neutral) gives :data:`OUTSIDE` (-2) and is
    counted in ``outside`` (canonical name -> rows). Anything else (``bored``, 9, 2.5) raises
    (flag ``--column``).
    """
    from fernoise.labels import CLASSES

    local = {name: i for i, name in enumerate(classes)}
    if pd.api.types.is_bool_dtype(values.dtype):
        raise FernoiseError(f"column {column!r} holds booleans, not class labels", flag="--column")
    if pd.api.types.is_numeric_dtype(values.dtype):
        v = values.to_numpy(dtype=np.float64, na_value=np.nan)
        null = np.isnan(v)
        good = v[~null]
        bad = good[(good != np.floor(good)) | (good < 0) | (good >= len(CLASSES))]
        if len(bad):
            raise FernoiseError(
                f"column {column!r} has {len(bad)} values that are not canonical class indices 0-7 "
                f"(0 neutral ... 7 contempt), e.g. {bad[0]:g}; use canonical indices or class names",
                flag="--column",
            )
        names = [CLASSES[int(x)] for x in good]
    else:
        strings = values.astype(object).where(values.notna(), None).to_numpy()
        null = np.array([x is None or str(x).strip() == "" for x in strings], dtype=bool)
        by_value: dict[Any, str] = {}
        for u in pd.unique(strings[~null]):
            s = str(u).strip()
            if s.isdigit():
                if int(s) >= len(CLASSES):
                    raise FernoiseError(
                        f"column {column!r} has value {s}, not a canonical class index 0-7 (0 neutral ... 7 contempt)",
                        flag="--column",
                    )
                by_value[u] = CLASSES[int(s)]
                continue
            try:
                by_value[u] = canonical_name(s)
            except FernoiseError:
                raise FernoiseError(
                    f"column {column!r} has value {s!r}, which is not a class name, an alias of one, nor an index 0-7 "
                    f"(this manifest's classes: {', '.join(classes)})",
                    flag="--column",
                ) from None
        names = [by_value[u] for u in strings[~null]]
    out = np.full(len(null), -1, dtype=np.int64)
    mapped = np.array([local.get(n, OUTSIDE) for n in names], dtype=np.int64)
    out[~null] = mapped
    outside: dict[str, int] = {}
    for n, i in zip(names, mapped, strict=True):
        if i == OUTSIDE:
            outside[n] = outside.get(n, 0) + 1
    return out, {c: outside[c] for c in CLASSES if c in outside}


def _column(y: np.ndarray, ctx: _Ctx) -> np.ndarray:
    name = ctx.params.column
    assert name is not None
    if name not in ctx.df.columns:
        extra = [
            c
            for c in ctx.df.columns
            if c not in ("id", "src_path", "path", "split", "label", "label_name")
        ]
        raise FernoiseError(
            f"the manifest has no column {name!r}; columns beyond the standard ones: {extra[:20]}",
            flag="--column",
        )
    if name in ("label", "label_clean"):
        raise FernoiseError(
            f"--column must name a second annotation, not {name!r}", flag="--column"
        )
    noisy, outside = column_indices(ctx.df[name].iloc[ctx.rows], ctx.classes, column=name)
    # a class the dataset does not have cannot be trained on: such rows get a null label,
    # like rows without a second annotation, and are counted apart
    ctx.info["missing"] = int((noisy == -1).sum())
    ctx.info["outside"] = outside
    return np.where(noisy == OUTSIDE, -1, noisy)


def image_key(name: str) -> str:
    """The name a noisy-label list and a manifest row are matched on: the file name without
    folders and extension, and without RAF-DB's ``_aligned`` ending (SCN's lists name
    ``.../train_00001_aligned.jpg``, EAC's and RUL's ``train_00001.jpg``: both ``train_00001``)."""
    base = str(name).replace("\\", "/").rsplit("/", 1)[-1]
    stem = base.rsplit(".", 1)[0] if "." in base else base
    return stem[: -len("_aligned")] if stem.endswith("_aligned") else stem


SHOWN = 5  # names shown (first, in sorted order) of each kind of mismatch


def _list(y: np.ndarray, ctx: _Ctx) -> np.ndarray:
    listed = dict(ctx.params.listed or {})
    col = "src_path" if "src_path" in ctx.df.columns else "id"
    keys = np.array([image_key(v) for v in ctx.df[col].astype(str)], dtype=object)
    train_keys = keys[ctx.rows]
    owners: dict[str, set[str]] = {}
    for k, src in zip(train_keys, ctx.df[col].iloc[ctx.rows].astype(str), strict=True):
        owners.setdefault(k, set()).add(src)
    twice = sorted(k for k, v in owners.items() if len(v) > 1 and k in listed)
    if twice:
        ex = sorted(owners[twice[0]])[:2]
        raise FernoiseError(
            f"{len(twice)} names of the list match several training images (e.g. {twice[0]!r}: "
            f"{ex}); names are matched without folders, so they must be unique",
            flag="--from",
        )
    named = np.array([k in listed for k in train_keys], dtype=bool)
    if not named.any():
        raise FernoiseError(
            f"the list names none of the {len(train_keys):,} training rows (e.g. list name "
            f"{min(listed)!r}, row {min(train_keys) if len(train_keys) else '-'!r}); names are "
            "matched without folders, extension and a trailing _aligned",
            flag="--from",
        )
    noisy_names = pd.Series([listed.get(k) for k in train_keys], dtype=object)
    idx, outside = column_indices(noisy_names[named], ctx.classes, column="--from")
    out = y.copy()
    out[named] = np.where(idx == OUTSIDE, -1, idx)
    all_keys = set(keys.tolist())
    unmatched = sorted(k for k in listed if k not in all_keys)
    not_train = sorted(k for k in listed if k in all_keys and k not in owners)
    unlisted = sorted(ctx.df["id"].iloc[ctx.rows[~named]].astype(str))
    ctx.info["outside"] = outside
    ctx.info["list"] = {
        "names": len(listed),
        "numbering": ctx.params.numbering,
        "named_rows": int(named.sum()),
        "unlisted_rows": len(unlisted),
        "unlisted_examples": unlisted[:SHOWN],
        "unmatched_names": len(unmatched),
        "unmatched_examples": unmatched[:SHOWN],
        "non_train_names": len(not_train),
        "non_train_examples": not_train[:SHOWN],
    }
    return out


@dataclass(frozen=True)
class NoiseKind:
    """A registered noise kind: its function and which parameters it uses."""

    fn: Callable[[np.ndarray, _Ctx], np.ndarray]
    uses: frozenset[str]
    help: str


KINDS: dict[str, NoiseKind] = {
    "sym": NoiseKind(
        _sym, frozenset({"rate", "seed"}), "round(R*n_c) rows per class to a uniform other class"
    ),
    "asym": NoiseKind(
        _asym, frozenset({"rate", "seed"}), "round(R*n_c) rows per class to its partner class"
    ),
    "matrix": NoiseKind(
        _matrix, frozenset({"seed"}), "per-class counts from a C x C transition matrix"
    ),
    "column": NoiseKind(_column, frozenset(), "a second annotation column becomes the label"),
    "list": NoiseKind(
        _list, frozenset(), "a peer's noisy-label list (--from FILE) gives the labels"
    ),
}

# How a noisy-label list numbers its labels (``--label-numbering``): RAF-DB's 1-7 (EAC, RUL),
# RAF-DB's order from 0 (SCN), fernoise's canonical 0-7, or class names.
NUMBERINGS = ("raf", "raf0", "canonical", "names")


# ----------------------------------------------------------------------------- the stage
def _labels(df: pd.DataFrame, column: str, n_classes: int, classes: Sequence[str]) -> np.ndarray:
    """``df[column]`` as int64 with -1 for null; raises on values outside 0..C-1."""
    lab = df[column].to_numpy(dtype=np.float64, na_value=np.nan)
    null = np.isnan(lab)
    good = lab[~null]
    bad = good[(good < 0) | (good >= n_classes) | (good != np.floor(good))]
    if len(bad):
        raise FernoiseError(
            f"{len(bad)} rows have a {column} outside 0..{n_classes - 1} (classes {list(classes)}), e.g. {bad[0]:g}",
            flag="MANIFEST",
        )
    out = np.full(len(lab), -1, dtype=np.int64)
    out[~null] = good.astype(np.int64)
    return out


def _int64(values: np.ndarray) -> pd.arrays.IntegerArray:
    mask = values < 0
    return pd.arrays.IntegerArray(np.where(mask, 0, values).astype(np.int64), mask)


def _rates(t: np.ndarray) -> tuple[list[int], list[int], list[float | None], float | None]:
    n = t.sum(axis=1)
    flipped = n - np.diag(t)
    per_class = [float(f / c) if c else None for f, c in zip(flipped, n, strict=True)]
    total = int(n.sum())
    overall = float(flipped.sum() / total) if total else None
    return n.tolist(), flipped.tolist(), per_class, overall


def corrupt(
    df: pd.DataFrame,
    *,
    classes: Sequence[str],
    params: CorruptParams,
    allow_noisy: bool = False,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Corrupt the training labels of a manifest frame; return ``(new_df, info)``.

    ``df`` needs ``id``, ``split`` and ``label`` (class index into ``classes``, nullable).
    A frame that already has ``label_clean`` (already corrupted) is refused unless
    ``allow_noisy``: then noise is added to the current ``label`` and the existing
    ``label_clean`` (the original clean label) is kept, so ``is_noisy`` stays relative to it.

    ``info`` (JSON-ready): ``kind``, ``rate``, ``seed``, ``pairs``/``partners``, ``matrix``
    (+ ``planned`` counts), ``column`` (+ ``missing``, ``outside``), ``classes``, ``transition`` (C x C
    counts over the labelled training rows, rows = label before, columns = label after),
    ``n`` / ``flipped`` / ``rate_per_class`` (per class), ``rate_overall``, ``n_train``.
    """
    classes = list(classes)
    n_classes = len(classes)
    _check_frame(df, n_classes, allow_noisy)
    lab = _labels(df, "label", n_classes, classes)
    rows = _training_rows(df, lab)
    y = lab[rows]

    rng = np.random.default_rng(params.seed)
    ctx = _Ctx(classes=classes, params=params, rng=rng, df=df, rows=rows)
    noisy = KINDS[params.kind].fn(y, ctx)

    new = lab.copy()
    new[rows] = noisy
    if allow_noisy and "label_clean" in df.columns:
        clean = _labels(df, "label_clean", n_classes, classes)
    else:
        clean = lab
    out = _with_labels(df, new, clean, classes)

    kept = noisy >= 0
    t = np.bincount(y[kept] * n_classes + noisy[kept], minlength=n_classes * n_classes).reshape(
        n_classes, n_classes
    )
    n, flipped, per_class, overall = _rates(t)
    info: dict[str, Any] = {
        "kind": params.kind,
        "rate": None,
        "seed": None,
        **params.key_params(),
        **ctx.info,
    }
    info.update(
        classes=classes,
        transition=t.tolist(),
        n=n,
        flipped=flipped,
        rate_per_class=per_class,
        rate_overall=overall,
        n_train=int(len(rows)),
        # NEP 19: Generator streams are stable within a numpy version, not promised across
        numpy=np.__version__,
    )
    return out, info


def _check_frame(df: pd.DataFrame, n_classes: int, allow_noisy: bool) -> None:
    """Refuse a manifest without a class list or the needed columns, or an already
    corrupted one unless ``allow_noisy``."""
    if n_classes == 0:
        raise FernoiseError(
            "the manifest has no class list in its metadata; make it with `fernoise align`",
            flag="MANIFEST",
        )
    missing = [c for c in ("id", "split", "label") if c not in df.columns]
    if missing:
        raise FernoiseError(f"the manifest lacks columns {missing}", flag="MANIFEST")
    if "label_clean" in df.columns and not allow_noisy:
        raise FernoiseError(
            "this manifest is already corrupted (it has label_clean); corrupting it again would "
            "make label_clean no longer the clean label of the labels you train on; corrupt the "
            "clean manifest instead, or pass --force for noise on noise (label_clean is kept)",
            flag="--force",
        )


def _training_rows(df: pd.DataFrame, lab: np.ndarray) -> np.ndarray:
    """Positions of the labelled training rows, in ``id`` order (the order the noise is
    chosen in); raises when there are none, or when their ids are null or repeated."""
    train = (df["split"] == "train").to_numpy(dtype=bool, na_value=False) & (lab >= 0)
    sel = np.flatnonzero(train)
    if len(sel) == 0:
        raise FernoiseError(
            "the manifest has no labelled training rows (split == 'train' with a label); nothing to corrupt",
            flag="MANIFEST",
        )
    ids = pa.array(df["id"], type=pa.large_string(), from_pandas=True).take(pa.array(sel))
    if ids.null_count:
        raise FernoiseError(
            "some training rows have a null id; ids must be unique and non-null", flag="MANIFEST"
        )
    n_ids = len(ids)
    if n_ids > 1 and not pc.any(pc.less(ids.slice(1), ids.slice(0, n_ids - 1))).as_py():
        order = np.arange(n_ids)  # already in id order (align writes rows so): skip the sort
        sorted_ids = ids
    else:
        order = pc.sort_indices(ids).to_numpy()
        sorted_ids = ids.take(pa.array(order))
    if len(sorted_ids) > 1:
        dup = pc.equal(sorted_ids.slice(1), sorted_ids.slice(0, len(sorted_ids) - 1))
        if pc.any(dup).as_py():
            first = sorted_ids[
                int(np.flatnonzero(dup.to_numpy(zero_copy_only=False))[0]) + 1
            ].as_py()
            raise FernoiseError(
                f"training row ids are not unique (e.g. {first!r}); the noise is chosen in id order, "
                "so ids must be unique",
                flag="MANIFEST",
            )
    return sel[order]


def _with_labels(
    df: pd.DataFrame, new: np.ndarray, clean: np.ndarray, classes: list[str]
) -> pd.DataFrame:
    """``df`` with ``label``/``label_name`` from ``new`` and ``label_clean``, ``is_noisy``
    (from ``clean``) right after ``label_name`` (-1 = null)."""
    is_noisy = (new >= 0) & (clean >= 0) & (new != clean)
    out = df.copy(deep=False)
    out["label"] = _int64(new)
    names = np.array([*classes, None], dtype=object)
    out["label_name"] = pd.Series(names[new], index=out.index, dtype=object)
    out["label_clean"] = _int64(clean)
    out["is_noisy"] = is_noisy
    cols = [c for c in out.columns if c not in ("label_clean", "is_noisy")]
    at = cols.index("label_name") + 1
    return out[cols[:at] + ["label_clean", "is_noisy"] + cols[at:]]
