"""The audit's cross-fitting folds: every audited row is scored by a model that never saw it.

The audited rows are the manifest's labelled ``train`` rows. They are cut into K folds,
stratified by label, and by group when the manifest has a group column (``subject``: no
subject in two folds), with :func:`fernoise.split.make_folds` (deterministic, exact; one group
per row when there is no group column). Fold i's manifest holds:

- ``train``: the audited rows of the other K - 1 folds (``fernoise train`` carves its
  validation rows from them, with their given labels, unless the manifest has ``val`` rows);
- ``val``: the manifest's own ``val`` rows, unchanged, when it has them;
- ``test``: fold i's rows, which the run's evaluation scores (``predictions.parquet``).

The manifest's ``test`` rows and its unlabelled rows are left out of every fold. Fold
manifests are written as ``fold-<i>-of-<K>.parquet`` in the audit's ``folds/`` folder, with
crop paths re-based to that folder, and metadata ``stage_meta(parent, stage="audit-fold")``.
Writing them again gives the same bytes' content, so each fold's training run is a cache hit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from fernoise.errors import FernoiseError
from fernoise.manifest import rebase_paths, stage_meta, write_manifest_table

FOLD_STAGE = "audit-fold"


def audited_positions(df: pd.DataFrame) -> np.ndarray:
    """Positions (0-based) of the rows an audit scores: labelled rows of the train split."""
    lab = df["label"].notna().to_numpy() if "label" in df.columns else np.zeros(len(df), bool)
    return np.flatnonzero((df["split"].astype(str).to_numpy() == "train") & lab)


def check_audit_rows(
    labels: np.ndarray, classes: list[str], folds: int, groups: np.ndarray | None
) -> None:
    """One-line errors before anything runs: fewer than 2 folds, fewer than 2 classes among
    the audited rows, a class with fewer rows than folds, fewer groups than folds."""
    if folds < 2:
        raise FernoiseError(f"expected 2 or more folds, got {folds}", flag="--folds")
    counts = np.bincount(labels, minlength=len(classes))
    present = np.flatnonzero(counts)
    if len(present) < 2:
        only = classes[int(present[0])] if len(present) else "none"
        raise FernoiseError(
            f"the manifest's training rows hold one class ({only}); an audit needs at least 2 "
            "classes to tell a wrong label from a right one"
        )
    small = [(classes[c], int(counts[c])) for c in present if counts[c] < folds]
    if small:
        name, n = small[0]
        raise FernoiseError(
            f"class {name!r} has {n} training rows, fewer than --folds {folds}: every fold must "
            "hold each class; use fewer folds"
            + (f" ({len(small) - 1} more classes too)" if len(small) > 1 else ""),
            flag="--folds",
        )
    if groups is not None and len(set(groups.tolist())) < folds:
        raise FernoiseError(
            f"the training rows have {len(set(groups.tolist()))} groups, fewer than --folds {folds}",
            flag="--folds",
        )


def assign_folds(
    ids: np.ndarray, labels: np.ndarray, num_classes: int, folds: int, seed: int, groups=None
) -> np.ndarray:
    """The fold (0..K-1) of each audited row: stratified by label, whole groups when
    ``groups`` is given (else each row is its own group)."""
    from fernoise.split import SplitParams, make_folds

    params = SplitParams(folds=folds, seed=seed, val_fraction=0.0)
    g = groups if groups is not None else ids
    out = np.full(len(ids), -1, dtype=np.int64)
    for fold in make_folds(list(g), labels.tolist(), num_classes, params):
        out[fold.split == "test"] = fold.index
    assert (out >= 0).all()
    return out


def fold_table(table: pa.Table, audited: np.ndarray, is_test: np.ndarray) -> pa.Table:
    """The audited rows of ``table`` (``test`` where ``is_test``, else ``train``) and its
    ``val`` rows."""
    split = np.asarray(table.column("split").to_pylist(), dtype=object)
    keep_val = np.flatnonzero(split == "val")
    rows = np.concatenate([audited, keep_val])
    new_split = np.concatenate(
        [np.where(is_test, "test", "train"), np.full(len(keep_val), "val")]
    ).astype(object)
    out = table.take(pa.array(rows))
    idx = out.column_names.index("split")
    return out.set_column(idx, "split", pa.array(new_split.tolist(), type=pa.string()))


def write_fold_manifests(
    table: pa.Table,
    meta: dict[str, Any],
    source: Path,
    audited: np.ndarray,
    tests: dict[str, np.ndarray],
    out_dir: Path,
    audit_key: str,
) -> list[Path]:
    """Write one manifest per entry of ``tests`` (file name -> test mask over the audited
    rows) into ``out_dir`` (atomic, crop paths re-based) and return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = rebase_paths(table, source.parent, out_dir)
    written = []
    for name, is_test in tests.items():
        params = {"manifest": name, "audit": audit_key}
        fmeta = stage_meta(meta, stage=FOLD_STAGE, params=params, key=f"{audit_key}-{name}")
        path = out_dir / name
        written.append(write_manifest_table(fold_table(table, audited, is_test), path, fmeta))
    return written


def fold_tests(fold_of: np.ndarray) -> dict[str, np.ndarray]:
    """``fold-<i>-of-<K>.parquet`` -> fold i's test mask, for every fold."""
    k = int(fold_of.max()) + 1
    return {f"fold-{i}-of-{k}.parquet": fold_of == i for i in range(k)}
