"""The Parquet manifest: columns, statuses, metadata, atomic read/write and validation.

A manifest has one row per input image (or per detected face with ``--all-faces``); rows are
never dropped. Its file metadata (key ``fernoise`` in the Parquet schema metadata) carries the
schema version, the class list and label space, the producing stage with its parameters and
key, the fernoise version, and ``content`` (``{"rows": N, "columns": {name: sha256}}``: a
digest of every column's values, written with the file). ``manifests/SCHEMA.md`` documents
every column and status.

Caches key on content: a stage that reads a manifest takes :meth:`Manifest.content_key` of the
columns it uses as its input identity (one pass over those columns), so a manifest edited with
another tool while keeping its metadata (rows dropped, labels changed) misses every cache, and
:meth:`Manifest.edited` says which recorded column digests no longer match.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fernoise import __version__
from fernoise.cache import atomic_path
from fernoise.errors import FernoiseError

SCHEMA_VERSION = 1
META_KEY = b"fernoise"
MANIFEST_FILE = "manifest.parquet"  # what a folder given for a manifest means (resolve_manifest)
SPLITS = ("train", "val", "test")

# One vocabulary of row statuses. Every status but "ok" and "whole" comes with a `reason`.
STATUSES: dict[str, str] = {
    "ok": "a face was detected and aligned; `path` is its crop",
    "whole": "the entire image was resized and saved as the crop: detection was off "
    "(--mode whole) or found no face (--on-no-face whole); reason says which",
    "no_face": "the image decoded but the detector found no face; no crop",
    "unreadable": "the file could not be read or decoded (empty, truncated, broken link, not a regular file, "
    "no permission, not an image); no crop",
    "too_small": "the image is too small for detection or alignment; no crop",
    "error": "an unexpected failure while processing this file; reason holds the message",
}

# column -> (pyarrow type, nullable, meaning). Label-file columns beyond these are kept as is.
COLUMNS: dict[str, tuple[pa.DataType, bool, str]] = {
    "id": (pa.string(), False, "stable row id: src_path, plus '#k' per face with --all-faces"),
    "src_path": (pa.string(), False, "source image, relative to the raw root (posix)"),
    "src_sha256": (pa.string(), True, "sha256 of the source file bytes; null if unreadable"),
    "path": (pa.string(), True, "aligned crop, relative to the manifest's folder; null if none"),
    "split": (pa.string(), False, "train, val or test"),
    "label": (pa.int64(), True, "class index in the canonical order; null when unlabelled"),
    "label_name": (pa.string(), True, "canonical class name of `label`"),
    "status": (pa.string(), False, "one of STATUSES"),
    "reason": (pa.string(), True, "one line, for every status but ok"),
    "face": (pa.int64(), True, "index of the face in its photo (0 = most confident)"),
    "n_faces": (pa.int64(), False, "faces the detector found in the photo"),
    "det_prob": (pa.float64(), True, "detector confidence of this face"),
    "bbox": (pa.list_(pa.float64()), True, "x1, y1, x2, y2 in source pixels"),
    "landmarks": (
        pa.list_(pa.float64()),
        True,
        "5 (x, y) points in source pixels: eyes, nose, mouth corners",
    ),
}
REQUIRED = ("id", "src_path", "split", "label", "status")


# ----------------------------------------------------------------------------- content digests
def column_digest(col: pa.Array | pa.ChunkedArray) -> str:
    """sha256 of one column's type, validity and values (equal values give equal digests,
    whatever the chunking or buffer layout). Strings: lengths then bytes; numbers and bools:
    their values as 64-bit numbers; lists: lengths then the flattened values."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    t = col.type
    shown = (
        f"list<{t.value_type}>" if pa.types.is_list(t) or pa.types.is_large_list(t) else str(t)
    )  # Parquet renames list items
    h = hashlib.sha256(f"{shown}|{len(col)}|".encode())
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    h.update(np.packbits(valid).tobytes())
    if (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
    ):
        filled = pc.fill_null(
            col, "" if not pa.types.is_binary(t) and not pa.types.is_large_binary(t) else b""
        )
        if isinstance(filled, pa.ChunkedArray):
            filled = filled.combine_chunks()
        large = pa.types.is_large_string(t) or pa.types.is_large_binary(t)
        _, offsets, data = filled.buffers()  # read in place: lengths, then the bytes
        offs = np.frombuffer(offsets, dtype=np.int64 if large else np.int32)[
            filled.offset : filled.offset + len(filled) + 1
        ]
        h.update(np.diff(offs).astype(np.int64).tobytes())
        if len(filled) and data is not None:
            h.update(memoryview(data)[int(offs[0]) : int(offs[-1])])
    elif pa.types.is_boolean(t):
        h.update(pc.fill_null(col, False).to_numpy(zero_copy_only=False).astype(np.int64).tobytes())
    elif pa.types.is_integer(t):
        h.update(pc.fill_null(col, 0).to_numpy(zero_copy_only=False).astype(np.int64).tobytes())
    elif pa.types.is_floating(t):
        h.update(pc.fill_null(col, 0.0).to_numpy(zero_copy_only=False).astype(np.float64).tobytes())
    elif pa.types.is_list(t) or pa.types.is_large_list(t):
        h.update(
            pc.fill_null(pc.list_value_length(col), 0)
            .to_numpy(zero_copy_only=False)
            .astype(np.int64)
            .tobytes()
        )
        h.update(column_digest(col.flatten()).encode())
    else:
        h.update(json.dumps(col.to_pylist(), sort_keys=True, default=str).encode())
    return h.hexdigest()


def content_digests(table: pa.Table, columns: Iterable[str] | None = None) -> dict[str, str]:
    """``{column: column_digest}`` for ``columns`` present in ``table`` (default: all)."""
    names = (
        table.column_names if columns is None else [c for c in columns if c in table.column_names]
    )
    return {name: column_digest(table.column(name)) for name in names}


def _with_content(table: pa.Table, meta: dict[str, Any]) -> dict[str, Any]:
    return {**meta, "content": {"rows": table.num_rows, "columns": content_digests(table)}}


@dataclass
class Manifest:
    """A manifest in memory: the rows, the file metadata and (when read) the Arrow table."""

    df: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    table: pa.Table | None = None

    def digests(self, columns: Iterable[str]) -> dict[str, str]:
        """Digests of ``columns`` (those present), computed from the rows as read."""
        table = (
            self.table if self.table is not None else _arrow_table(self.df.reset_index(drop=True))
        )
        return content_digests(table, columns)

    def content_key(self, columns: Iterable[str]) -> str:
        """A stage's input identity: sha256 of the row count and the digests of ``columns``."""
        digests = self.digests(columns)
        n = self.table.num_rows if self.table is not None else len(self.df)
        return hashlib.sha256(
            json.dumps({"rows": n, "columns": digests}, sort_keys=True).encode()
        ).hexdigest()

    def edited(self, columns: Iterable[str]) -> list[str]:
        """Columns among ``columns`` whose values differ from the digests recorded when the
        file was written (``rows`` when the row count differs); [] when they match or the file
        records none (written before content digests existed)."""
        recorded = self.meta.get("content") or {}
        if not recorded:
            return []
        n = self.table.num_rows if self.table is not None else len(self.df)
        out = ["rows"] if recorded.get("rows") != n else []
        stored = recorded.get("columns") or {}
        now = self.digests(columns)
        out += [c for c, d in now.items() if stored.get(c) != d]
        return out

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes", []))

    @property
    def key(self) -> str | None:
        return self.meta.get("key")

    @property
    def root(self) -> Path:
        """The folder crop paths are relative to."""
        assert self.path is not None
        return self.path.parent


def _is_missing(v: Any) -> bool:
    return v is None or (not hasattr(v, "__len__") and pd.isna(v))


def _arrow_table(df: pd.DataFrame) -> pa.Table:
    """Known columns get their declared types; other (label-file) columns are inferred."""
    arrays, names = [], []
    for name in df.columns:
        col = df[name]
        if name in COLUMNS:
            typ = COLUMNS[name][0]
            try:
                arr = pa.array(col, type=typ, from_pandas=True)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
                if pa.types.is_list(typ):
                    values = [None if _is_missing(v) else [float(x) for x in v] for v in col]
                else:
                    values = [None if _is_missing(v) else v for v in col.tolist()]
                arr = pa.array(values, type=typ)
        else:
            arr = pa.array(col, from_pandas=True)
        arrays.append(arr)
        names.append(name)
    return pa.Table.from_arrays(arrays, names=names)


def write_manifest(df: pd.DataFrame, path: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Write ``df`` with ``meta`` to ``path`` atomically; fills the schema/version fields."""
    meta = {"schema_version": SCHEMA_VERSION, "fernoise_version": __version__, **meta}
    table = _arrow_table(df.reset_index(drop=True))
    meta = _with_content(table, meta)
    table = table.replace_schema_metadata(
        {META_KEY: json.dumps(meta, sort_keys=True, default=str).encode()}
    )
    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def write_manifest_table(table: pa.Table, path: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Like :func:`write_manifest` for an Arrow table whose columns are already typed.

    For stages that change a few columns of a large manifest: they splice new columns into
    the table from ``pq.read_table`` and skip the pandas round trip of the untouched ones
    (the list columns ``bbox``/``landmarks`` cost about a second per million rows each way).
    """
    meta = _with_content(
        table, {"schema_version": SCHEMA_VERSION, "fernoise_version": __version__, **meta}
    )
    table = table.replace_schema_metadata(
        {META_KEY: json.dumps(meta, sort_keys=True, default=str).encode()}
    )
    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def rebase_paths(
    table: pa.Table, from_dir: str | os.PathLike, to_dir: str | os.PathLike
) -> pa.Table:
    """``table`` with its relative crop paths (``path``) re-based from ``from_dir`` (the input
    manifest's folder) to ``to_dir`` (the output's), so they resolve from the new folder;
    absolute and null paths stay as they are, and so does a table written to the same folder."""
    src, dst = Path(from_dir).resolve(), Path(to_dir).resolve()
    if src == dst or "path" not in table.column_names:
        return table
    rebased = [
        p if p is None or os.path.isabs(p) else Path(os.path.relpath(src / p, dst)).as_posix()
        for p in table.column("path").to_pylist()
    ]
    at = table.column_names.index("path")
    return table.set_column(at, "path", pa.array(rebased, type=pa.string()))


def resolve_manifest(path: str | os.PathLike, *, flag: str | None = "MANIFEST") -> Path:
    """The manifest file a user means by ``path``: a file as it is, a folder (the output of
    ``fernoise align``, ``corrupt`` or ``split``) its ``manifest.parquet``.

    Every command that takes a manifest calls this, so a folder means the same everywhere.
    Raises a one-line FernoiseError (naming ``flag``) for a folder without a manifest.parquet
    and for a path that does not exist; reads nothing.
    """
    p = Path(path)
    if p.is_dir():
        if (p / MANIFEST_FILE).is_file():
            return p / MANIFEST_FILE
        raise FernoiseError(
            f"{p} is a folder without a {MANIFEST_FILE}; pass a manifest .parquet file "
            f"or a folder that holds a {MANIFEST_FILE}",
            flag=flag,
        )
    if not p.is_file():
        raise FernoiseError(
            f"manifest {p} does not exist; pass a manifest .parquet file", flag=flag
        )
    return p


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Only the metadata of a manifest (cheap: reads the footer)."""
    if Path(path).is_dir():
        raise FernoiseError(
            f"manifest {path} is a folder, not a file; pass a manifest .parquet file"
        )
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise FernoiseError(
            f"{path} is not a readable Parquet manifest ({e.__class__.__name__})"
        ) from None
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise FernoiseError(
            f"{path} has no fernoise metadata; make manifests with `fernoise align`"
        )
    return json.loads(raw)


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read a manifest and check its required columns; labels come back as pandas ``Int64``."""
    path = Path(path)
    if path.is_dir():
        hint = (
            f"; pass {path / MANIFEST_FILE}"
            if (path / MANIFEST_FILE).is_file()
            else "; pass a manifest .parquet file"
        )
        raise FernoiseError(f"manifest {path} is a folder, not a file{hint}")
    if not path.is_file():
        raise FernoiseError(f"manifest {path} does not exist")
    meta = read_meta(path)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise FernoiseError(
            f"{path} is not a readable Parquet manifest ({e.__class__.__name__}); re-write it"
        ) from None
    df = table.to_pandas()
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise FernoiseError(f"manifest {path} lacks columns {missing}")
    check_unique_ids(df["id"], path)
    for name in ("label", "label_clean", "face", "n_faces"):
        if name in df.columns:
            df[name] = df[name].astype("Int64")
    return Manifest(df=df, meta=meta, path=path, table=table)


def check_unique_ids(ids: pd.Series | pa.Array | pa.ChunkedArray, path: str | os.PathLike) -> None:
    """Raise a one-line FernoiseError naming the first repeated ids and how many there are:
    one row per image (per face with ``--all-faces``), or a row would train or count twice."""
    s = (
        ids
        if isinstance(ids, pd.Series)
        else pd.Series(ids.to_pylist() if hasattr(ids, "to_pylist") else ids)
    )
    dup = s[s.duplicated(keep=False)]
    if dup.empty:
        return
    counts = dup.value_counts(sort=False)
    first = ", ".join(f"{k!r} x{n}" for k, n in list(counts.items())[:3])
    raise FernoiseError(
        f"{path}: {len(counts):,} ids occur more than once ({len(dup) - len(counts):,} extra rows), first: {first}; "
        "ids must be unique (one row per image): drop the repeated rows or re-run `fernoise align`",
        flag="MANIFEST",
    )


def unknown_splits(df: pd.DataFrame) -> str | None:
    """A one-line warning naming the ``split`` values no stage reads (``train``, ``val``,
    ``test`` are read) and their row counts, or None when every row has one of those."""
    if "split" not in df.columns:
        return None
    other = df.loc[~df["split"].isin(SPLITS), "split"]
    if other.empty:
        return None
    counts = other.astype(str).where(other.notna(), "<null>").value_counts()
    named = ", ".join(f"{k!r} ({n:,} rows)" for k, n in counts.items())
    return (
        f"{len(other):,} rows have a split no stage reads: {named}; they are left out of training, validation "
        f"and test (expected one of {', '.join(SPLITS)}: rename the split to use them)"
    )


def stage_meta(
    parent: dict[str, Any] | None, *, stage: str, params: dict[str, Any], key: str, **extra: Any
) -> dict[str, Any]:
    """Metadata for a manifest made by ``stage`` from a manifest with metadata ``parent``.

    Keeps the parent's class list, label space and ``dataset`` name, and appends this stage to ``lineage``
    (a list of ``{"stage", "key", "params"}`` from align onwards), so a later stage can find,
    for example, the align parameters of the crops or the noise a manifest carries.
    """
    parent = dict(parent or {})
    lineage = list(parent.get("lineage", []))
    lineage.append({"stage": stage, "key": key, "params": params})
    meta = {k: v for k, v in parent.items() if k in ("classes", "label_space", "dataset")}
    meta.update(stage=stage, params=params, key=key, lineage=lineage, **extra)
    return meta


def find_stage(meta: dict[str, Any], stage: str) -> dict[str, Any] | None:
    """The last ``lineage`` entry of ``stage`` in ``meta``, or None."""
    for entry in reversed(meta.get("lineage", [])):
        if entry.get("stage") == stage:
            return entry
    return None


def check_labels(df: pd.DataFrame, classes: list[str], *, column: str = "label") -> None:
    """Raise unless every non-null ``column`` value is a valid class index."""
    labels = df[column].dropna()
    bad = labels[(labels < 0) | (labels >= len(classes))]
    if len(bad):
        raise FernoiseError(
            f"{len(bad)} rows have a {column} outside 0..{len(classes) - 1} "
            f"(classes {classes}); e.g. {int(bad.iloc[0])}"
        )
