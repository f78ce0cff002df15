"""Subject-independent k-fold and leave-one-subject-out splits: one manifest per fold.

Reads a manifest with a group column (``subject``: from align's ``--group-column`` or
``--group-regex``) and writes, for each fold i of K, ``<stem>.fold-<i>-of-<K>-s<seed>.parquet``
(``<stem>.loso-<i>-of-<G>-s<seed>.parquet`` with ``loso``; i from 0) beside the input or in
``out``. Every row is kept; only ``split`` changes (and ``path``, re-based, when the fold goes to
another folder):

- ``test``: the rows of fold i's groups. Every row is a test row in exactly one fold.
- ``val``: the rows of whole groups carved from the other groups (``val_fraction`` of them,
  rounded half up, at least 1 when the fraction is above 0 and at least 2 groups remain).
- ``train``: the rows of the remaining groups.

No group is in two parts of a fold. Groups are assigned greedily (as sklearn's
``StratifiedGroupKFold``, but deterministic and exact): in a seeded order, larger groups first
(labelled rows; ties in ``np.random.default_rng([seed, 0x5F1D])`` order), each group goes to
the fold where it least raises ``sum_c (count_fc - n_c / K)^2 / n_c``, ties to the fold with
fewer labelled rows, then fewer groups, then the lower index. So when every group holds one
row, or every group holds the same class counts, each class's test count differs between folds
by at most 1. LOSO: fold i is the i-th group in sorted order. Val groups are picked the same
way between two bins (val, train) whose targets are the shares of the fold's remaining rows,
in the order of ``np.random.default_rng([seed, 0x7A1, i])``, each bin taking only its number
of groups.

Metadata of each fold: the parent's ``classes``/``label_space``; ``lineage`` + ``{"stage":
"split", "key", "params": {"folds", "fold", "group_column", "seed", "val_fraction"}}``
(the shape ``report`` aggregates folds by); ``split`` (``loso``, ``groups``, ``test_groups``,
``val_groups``, per-part rows and class counts). A manifest that already carries noise
(``label_clean``) is refused: split the clean manifest, then corrupt each fold, so test and
val rows keep their clean labels.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fernoise.errors import FernoiseError

STAGE = "split"
VERSION = 2  # 2: keyed on the content of every column of the input, not only its recorded key


@dataclass(frozen=True)
class SplitParams:
    """How to split. Built by the CLI; checked here (messages name the CLI flag)."""

    group_column: str = "subject"
    """The manifest column whose value is the row's group (subject); no group in two parts."""
    folds: int | None = 10
    """K, the number of folds (2 or more); None with ``loso``."""
    loso: bool = False
    """Leave one subject out: one fold per group (``--loso``)."""
    seed: int = 0
    """Seed of the group order (k-fold ties) and of the val groups."""
    val_fraction: float = 0.1
    """Share of each fold's non-test groups that become ``val``, in [0, 1) (0 = no val)."""

    def __post_init__(self) -> None:
        if not isinstance(self.group_column, str) or not self.group_column.strip():
            raise FernoiseError(
                f"expected a column name, got {self.group_column!r}", flag="--group-column"
            )
        if self.loso:
            if self.folds is not None:
                raise FernoiseError(
                    "--loso makes one fold per subject; drop --folds", flag="--folds"
                )
        elif isinstance(self.folds, bool) or not isinstance(self.folds, int) or self.folds < 2:
            raise FernoiseError(
                f"expected at least 2 folds, got {self.folds!r}; or --loso", flag="--folds"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise FernoiseError(
                f"expected a non-negative integer seed, got {self.seed!r}", flag="--seed"
            )
        v = self.val_fraction
        if (
            isinstance(v, bool)
            or not isinstance(v, int | float)
            or not math.isfinite(v)
            or not 0 <= v < 1
        ):
            raise FernoiseError(f"expected a fraction in [0, 1), got {v!r}", flag="--val-fraction")


@dataclass
class Fold:
    """One fold: ``split`` per row (``train``/``val``/``test``) and what went where."""

    index: int
    split: np.ndarray
    test_groups: list[str]
    val_groups: list[str]
    info: dict[str, Any] = field(default_factory=dict)


def _half_up(x: float) -> int:
    return int(math.floor(round(x, 9) + 0.5))


def _greedy(
    counts: np.ndarray,
    order: Sequence[int] | np.ndarray,
    targets: np.ndarray,
    capacity: Sequence[int] | None = None,
) -> np.ndarray:
    """Bin of each group (rows of ``counts``, G x C) placed in ``order``; ``targets`` B x C.

    A group goes to the bin where it least raises ``sum_c (count_bc - target_bc)^2 / n_c``;
    ties to fewer labelled rows, then fewer groups, then the lower bin. ``capacity``: groups
    per bin at most.
    """
    n_bins = targets.shape[0]
    n_c = counts.sum(axis=0).astype(np.float64)
    w = np.where(n_c > 0, 1.0 / np.maximum(n_c, 1), 0.0)
    have = np.zeros(targets.shape, dtype=np.float64)
    rows = np.zeros(n_bins, dtype=np.int64)
    groups = np.zeros(n_bins, dtype=np.int64)
    out = np.full(counts.shape[0], -1, dtype=np.int64)
    for g in order:
        x = counts[g].astype(np.float64)
        cost = ((2 * (have - targets) + x) * x * w).sum(axis=1)
        best = None
        for b in range(n_bins):
            if capacity is not None and groups[b] >= capacity[b]:
                continue
            cand = (round(float(cost[b]), 9), int(rows[b]), int(groups[b]), b)
            if best is None or cand < best:
                best = cand
        assert best is not None
        b = best[3]
        out[g] = b
        have[b] += x
        rows[b] += int(x.sum())
        groups[b] += 1
    return out


def make_folds(
    groups: Sequence[Any], labels: Sequence[int], n_classes: int, params: SplitParams
) -> list[Fold]:
    """The folds of rows with group ``groups[i]`` and label ``labels[i]`` (-1 = unlabelled).

    Pure: no I/O. Raises when a group is null or there are fewer groups than folds.
    """
    g_arr = np.asarray(
        [None if g is None or (isinstance(g, float) and g != g) else str(g) for g in groups],
        dtype=object,
    )
    null = np.array([g is None for g in g_arr], dtype=bool)
    if null.any():
        raise FernoiseError(
            f"{int(null.sum())} rows have no {params.group_column} (e.g. row {int(np.flatnonzero(null)[0])}); every "
            "row needs a group: fix the label file's column or align's --group-regex",
            flag="--group-column",
        )
    names, inv = np.unique(g_arr.astype(str), return_inverse=True)
    n_groups = len(names)
    y = np.asarray(labels, dtype=np.int64)
    counts = np.zeros((n_groups, n_classes), dtype=np.int64)
    lab = y >= 0
    np.add.at(counts, (inv[lab], y[lab]), 1)
    k = n_groups if params.loso else int(params.folds)  # type: ignore[arg-type]
    if n_groups < 2:
        raise FernoiseError(
            f"column {params.group_column!r} has {n_groups} group; a split needs at least 2",
            flag="--group-column",
        )
    if k > n_groups:
        raise FernoiseError(
            f"--folds {k} needs at least {k} groups; column {params.group_column!r} has {n_groups}; "
            "use fewer folds or --loso",
            flag="--folds",
        )
    if params.loso:
        fold_of = np.arange(n_groups, dtype=np.int64)
    else:
        rng = np.random.default_rng([params.seed, 0x5F1D])
        perm = rng.permutation(n_groups)
        order = perm[np.argsort(-counts.sum(axis=1)[perm], kind="stable")]
        targets = np.tile(counts.sum(axis=0) / k, (k, 1))
        fold_of = _greedy(counts, order, targets)

    folds = []
    for i in range(k):
        test_g = np.flatnonzero(fold_of == i)
        rest = np.flatnonzero(fold_of != i)
        n_val = 0
        if params.val_fraction > 0 and len(rest) >= 2:
            n_val = min(max(1, _half_up(params.val_fraction * len(rest))), len(rest) - 1)
        val_g = np.zeros(0, dtype=np.int64)
        if n_val:
            rng = np.random.default_rng([params.seed, 0x7A1, i])
            order = rng.permutation(len(rest))
            share = n_val / len(rest)
            total = counts[rest].sum(axis=0)
            targets = np.stack([total * share, total * (1 - share)])
            bins = _greedy(counts[rest], order, targets, capacity=[n_val, len(rest) - n_val])
            val_g = rest[bins == 0]
        part = np.full(n_groups, "train", dtype=object)
        part[test_g] = "test"
        part[val_g] = "val"
        split = part[inv]
        info = {
            "rows": {s: int((split == s).sum()) for s in ("train", "val", "test")},
            "class_counts": {
                s: np.bincount(y[lab & (split == s)], minlength=n_classes).tolist()
                for s in ("train", "val", "test")
            },
        }
        folds.append(Fold(i, split, names[test_g].tolist(), names[val_g].tolist(), info))
    return folds


# ----------------------------------------------------------------------------- the stage
def fold_name(input_path: str | os.PathLike, params: SplitParams, i: int, k: int) -> str:
    stem = Path(input_path).stem
    return f"{stem}.{'loso' if params.loso else 'fold'}-{i}-of-{k}-s{params.seed}.parquet"


@dataclass
class SplitResult:
    """What :func:`run_split` did: the fold manifests (in fold order) and whether each hit the cache."""

    input: Path
    outputs: list[Path]
    hits: list[bool]
    folds: list[Fold]
    groups: int
    key: str


def lineage_params(params: SplitParams, i: int, k: int) -> dict[str, Any]:
    """The lineage entry's params (``report`` aggregates folds by exactly these keys)."""
    return {
        "folds": k,
        "fold": i,
        "group_column": params.group_column,
        "seed": params.seed,
        "val_fraction": float(params.val_fraction),
    }


def run_split(
    manifest: str | os.PathLike | None,
    params: SplitParams,
    *,
    out: str | os.PathLike | None = None,
    force: bool = False,
    workspace=None,
) -> SplitResult:
    """Run the split stage: one cached manifest per fold (see the module docstring).

    Each fold is its own cached stage output (key over the params, the fold and the input
    manifest's key); the workspace lock records stage ``split`` with the first fold as its
    output and every fold in ``params.outputs``.
    """
    import pandas as pd

    from fernoise.cache import Workspace, file_sha256, run_stage, stage_key
    from fernoise.manifest import Manifest, read_meta, resolve_manifest

    ws = workspace or Workspace()
    path = resolve_manifest(
        manifest
        if manifest is not None
        else ws.latest("clean", "align", what="manifest", flag="MANIFEST")
    )
    meta = read_meta(path)
    table, groups, labels, n_classes = _read_input(path, meta, params)
    folds = make_folds(groups, labels, n_classes, params)
    k = len(folds)

    out_dir = Path(out) if out is not None else path.parent
    input_key = meta.get("key") or file_sha256(path)
    # The rows themselves, not only the recorded key: a manifest edited behind its metadata
    # (rows dropped, labels or groups changed) is a new input.
    content = Manifest(df=pd.DataFrame(), meta=meta, path=path, table=table).content_key(
        table.column_names
    )
    n_groups = len({str(g) for g in groups})
    base = {**lineage_params(params, 0, k), "loso": params.loso}
    base.pop("fold")
    whole_key = stage_key(STAGE, VERSION, base, {"manifest": input_key, "content": content})
    cols = _columns_for(table, path, out_dir)

    outputs, hits = [], []
    for fold in folds:
        target = out_dir / fold_name(path, params, fold.index, k)
        if target.resolve() == path.resolve():
            raise FernoiseError(
                f"{target} is the input manifest; choose another --out", flag="--out"
            )
        lp = lineage_params(params, fold.index, k)
        info = _fold_info(fold, params, n_groups, input_key, whole_key)

        def build(
            key: str, fold: Fold = fold, target: Path = target, lp: dict = lp, info: dict = info
        ) -> list[Path]:
            return _write_fold(table, cols, fold, target, meta, lp, key, info)

        res = run_stage(
            stage=STAGE,
            version=VERSION,
            params={**lp, "loso": params.loso},
            inputs={"manifest": input_key, "content": content},
            output=target,
            build=build,
            workspace=None,
            force=force,
        )
        outputs.append(target)
        hits.append(res.hit)
    ws.record(
        STAGE,
        key=whole_key,
        output=outputs[0],
        params={**base, "outputs": [str(p.resolve()) for p in outputs]},
    )
    return SplitResult(
        input=path, outputs=outputs, hits=hits, folds=folds, groups=n_groups, key=whole_key
    )


# The columns `fernoise align` writes (a missing group column is looked for among the others).
_ALIGN_COLUMNS = {
    "id",
    "src_path",
    "src_sha256",
    "path",
    "crop_sha256",
    "split",
    "label",
    "label_name",
    "status",
    "reason",
    "face",
    "n_faces",
    "det_prob",
    "bbox",
    "landmarks",
}


def _read_input(path: Path, meta: dict[str, Any], params: SplitParams):
    """``(table, groups, labels, number of classes)`` of the clean manifest ``path``: its
    Arrow table, the group column's values and the labels (-1 for none), after checking it
    has a class list, no noise yet, the group column and labels inside the class list."""
    import pyarrow.parquet as pq

    classes = list(meta.get("classes") or [])
    if not classes:
        raise FernoiseError(
            f"{path} has no class list in its metadata; make it with `fernoise align`",
            flag="MANIFEST",
        )
    names = pq.read_schema(path).names
    if "label_clean" in names:
        raise FernoiseError(
            f"{path.name} already carries noise (it has label_clean), which would leak into test and val rows; "
            "split the clean manifest, then corrupt each fold",
            flag="MANIFEST",
        )
    if params.group_column not in names:
        extra = [n for n in names if n not in _ALIGN_COLUMNS]
        raise FernoiseError(
            f"{path.name} has no column {params.group_column!r}; its extra columns are {extra[:20]} (keep one at "
            "align with --group-column NAME, or make one with --group-regex 'S(\\d+)_')",
            flag="--group-column",
        )
    table = pq.read_table(path)
    groups = table.column(params.group_column).to_pylist()
    lab = table.column("label").to_pylist()
    labels = [-1 if v is None else int(v) for v in lab]
    bad = [v for v in labels if v >= len(classes)]
    if bad:
        raise FernoiseError(
            f"{path.name} has labels outside 0..{len(classes) - 1} (classes {classes})",
            flag="MANIFEST",
        )
    return table, groups, labels, len(classes)


def _columns_for(table, path: Path, out_dir: Path) -> list:
    """The input's Arrow columns for fold manifests in ``out_dir``, crop paths re-based
    (:func:`fernoise.manifest.rebase_paths`)."""
    from fernoise.manifest import rebase_paths

    return list(rebase_paths(table, path.parent, out_dir).columns)


def _fold_info(
    fold: Fold, params: SplitParams, n_groups: int, input_key: str, whole_key: str
) -> dict[str, Any]:
    """The ``split`` entry of a fold manifest's metadata."""
    return {
        "loso": params.loso,
        "groups": n_groups,
        "test_groups": fold.test_groups,
        "val_groups": fold.val_groups,
        **fold.info,
        "input_key": input_key,
        "split_key": whole_key,
    }


def _write_fold(
    table,
    cols: list,
    fold: Fold,
    target: Path,
    meta: dict[str, Any],
    lp: dict[str, Any],
    key: str,
    info: dict[str, Any],
) -> list[Path]:
    """Write one fold's manifest: the input's columns with the fold's ``split``."""
    import pyarrow as pa

    from fernoise.manifest import stage_meta, write_manifest_table

    names = table.column_names
    c = list(cols)
    c[names.index("split")] = pa.array(fold.split.tolist(), type=pa.string())
    new_meta = stage_meta(meta, stage=STAGE, params=lp, key=key, split=info)
    write_manifest_table(pa.Table.from_arrays(c, names=names), target, new_meta)
    return [target]
