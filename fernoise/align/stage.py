"""The ``align`` stage: a folder of images (+ labels) -> ``OUT/manifest.parquet`` + ``OUT/faces/``.

Reads every image file under ``raw`` (extensions in ``IMAGE_EXTENSIONS``, any case; hidden
files and folders, ``out`` itself and any folder holding fernoise output are skipped), its
labels (class folders, or a label file through :mod:`fernoise.formats`), optionally a
``--join`` CSV, and writes:

- ``OUT/manifest.parquet``: one row per image (per detected face with ``all_faces``), sorted
  by ``id``; columns in ``manifests/SCHEMA.md``; metadata ``classes``, ``label_space``,
  ``stage="align"``, ``params`` (= ``AlignParams.asdict()``), ``key``, ``lineage``,
  ``labels``/``join`` (what was read and matched) and ``counts`` (rows per status).
- ``OUT/faces/<src_path>.<ext>`` (``.f<k>.<ext>`` per face with ``all_faces``): the crops.
- ``OUT/.fernoise/``: the stage stamp, a summary (so a cache hit prints its table without
  reading the manifest) and the per-image records.

Caching, at two levels. The whole stage: :func:`fernoise.cache.run_stage` with a key over the
output-changing parameters and the sha256 of every source image and label/join file; a hit
checks the sha256 of the manifest and of every crop, and imports neither torch nor pandas.
Per image: a record (status, faces, crop sha256) keyed by the source's path and sha256 under
``.fernoise/align-records/<params hash>/``, written atomically after every batch, so a killed
run loses at most the two batches in flight and the next run re-aligns only what has no intact
record (a changed, added or tampered image, or a crop changed behind its back).

Shards (``shard=(i, n)``, ``i`` from 0 as torchrun's ``RANK``): image ``j`` of the sorted list
belongs to shard ``j % n``; shard ``i`` writes ``OUT/manifest.shard-<i+1>-of-<n>.parquet``
(named as ``--shard i+1/n``, 1-based like sweep's, :mod:`fernoise.shards`); when all ``n``
exist (same inputs and parameters) they are merged into ``OUT/manifest.parquet`` (also
:func:`merge_shards`).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fernoise.cache import (
    STAMP_DIR,
    Workspace,
    atomic_path,
    atomic_write_json,
    clean_stale_tmp,
    dict_hash,
    file_sha256,
    read_json,
    run_stage,
    stage_key,
    write_stamp,
)
from fernoise.errors import FernoiseError, destination_error, require_file, require_folder
from fernoise.progress import Counter as Progress  # (done, total)
from fernoise.safefiles import MAX_SOURCE_BYTES, printable, regular_problem

STAGE = "align"
VERSION = 2  # 2: labels index the dataset's own class list; group column; --max-rows
MANIFEST = "manifest.parquet"
FACES = "faces"
RECORDS = "align-records"
IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".jfif",
    ".png",
    ".bmp",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
    ".pbm",
)
SHARD_RE = re.compile(r"^manifest\.shard-(\d+)-of-(\d+)\.parquet$")


@dataclass(frozen=True)
class LabelSpec:
    """Where labels, splits and extra columns come from (the CLI's label options)."""

    files: tuple[str, ...] = ()
    """Label files (``--labels``, repeatable); none = class folders (or unlabelled)."""
    format: str | None = None
    """``rafdb``, ``ferplus``, ``affectnet`` or ``csv`` (``--format``), required with files."""
    path_column: str = "path"
    label_column: str | None = "label"
    split_column: str | None = None
    split_map: tuple[tuple[str, str], ...] = ()
    """``(FROM, TO)`` split renames applied after reading splits (``--split-map val=test``)."""
    join: str | None = None
    """A CSV whose extra columns are added (``--join``)."""
    join_on: str = "path"
    join_columns: tuple[str, ...] | None = None
    classes: tuple[str, ...] | None = None
    """The dataset's classes (``--classes``), an ordered subset of the canonical order; None =
    the format's (rafdb 7, ferplus 8, affectnet 7 or 8) or the classes that occur."""
    group_column: str | None = None
    """A label-file column kept as strings, exactly as written (``--group-column``, e.g. the
    subject), or the name of the column ``group_regex`` fills (default ``subject``)."""
    group_regex: str | None = None
    """A regex searched in each image's ``src_path``; its first group is the row's group."""
    max_rows: int | None = None
    """Keep a seeded subset of this many images, stratified by (split, label) (``--max-rows``)."""
    seed: int = 0
    """Seed of the ``max_rows`` subset (``--seed``)."""
    on_duplicate: str | None = None
    """Which row counts when rows of the label files name one image with different labels
    or splits: ``first`` or ``last`` (``--on-duplicate``); None refuses such a file."""
    label_regex: str | None = None
    """Labels from file names (``--label-regex``): searched in each ``src_path``, its group
    ``label`` (else its first group) is the code (:mod:`fernoise.formats.filenames`)."""
    label_map: tuple[tuple[str, str], ...] = ()
    """``(code, canonical class)`` pairs turning ``label_regex`` codes into classes
    (``--label-map AN=anger,...``); empty: the code must be a class name or alias."""

    def __post_init__(self) -> None:
        from fernoise.formats import FORMAT_NAMES, ON_DUPLICATE

        if self.on_duplicate is not None and self.on_duplicate not in ON_DUPLICATE:
            raise FernoiseError(
                f"unknown value {self.on_duplicate!r}; expected one of: {', '.join(ON_DUPLICATE)}",
                flag="--on-duplicate",
            )

        if self.files and not self.format:
            raise FernoiseError(
                f"--labels needs --format, one of: {', '.join(FORMAT_NAMES)}", flag="--format"
            )
        if self.format and self.format not in FORMAT_NAMES:
            raise FernoiseError(
                f"unknown label format {self.format!r}; expected one of: {', '.join(FORMAT_NAMES)}",
                flag="--format",
            )
        if self.format and not self.files:
            raise FernoiseError(
                f"--format {self.format} needs a label file: --labels FILE", flag="--labels"
            )
        for a, b in self.split_map:
            for s in (a, b):
                if s not in ("train", "val", "test"):
                    raise FernoiseError(
                        f"expected FROM=TO with train, val or test, got {a}={b}", flag="--split-map"
                    )
        _check_rows_spec(self)
        _check_label_regex(self)

    def key_params(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": self.format, "split_map": [list(p) for p in self.split_map]}
        if self.on_duplicate is not None:
            d["on_duplicate"] = self.on_duplicate
        if self.format == "csv":
            d.update(
                path_column=self.path_column,
                label_column=self.label_column,
                split_column=self.split_column,
            )
        if self.join:
            d.update(
                join_on=self.join_on,
                join_columns=list(self.join_columns) if self.join_columns else None,
            )
        if self.classes is not None:
            d["classes"] = list(self.classes)
        if self.group_column is not None or self.group_regex is not None:
            d.update(group_column=self.group_column, group_regex=self.group_regex)
        if self.max_rows is not None:
            d.update(max_rows=self.max_rows, seed=self.seed)
        if self.label_regex is not None:  # only when given: the keys of other runs stay
            d.update(label_regex=self.label_regex, label_map=[list(p) for p in self.label_map])
        return d


@dataclass
class AlignResult:
    """What :func:`align_folder` did. ``counts``: rows per status; ``info``: labels, join,
    images re-aligned vs reused from the per-image cache."""

    manifest: Path
    key: str
    hit: bool
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)
    rows: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    merged: Path | None = None


# ----------------------------------------------------------------------------- inputs
def fernoise_output_reason(
    folder: Path, filenames: Sequence[str], dirnames: Sequence[str]
) -> str | None:
    """Why ``folder`` holds fernoise's own output (so a scan of RAW must skip it), or None.

    A ``fernoise.lock``, a ``.fernoise`` stamp folder, or a Parquet file carrying fernoise's
    manifest metadata (only the schema is read, and only where a ``.parquet`` file is).
    """
    from fernoise.cache import LOCK_NAME

    if LOCK_NAME in filenames:
        return f"holds a {LOCK_NAME}"
    if STAMP_DIR in dirnames:
        return f"holds fernoise's {STAMP_DIR} stamp folder"
    for name in filenames:
        if name.lower().endswith(".parquet"):
            try:
                if regular_problem(folder / name, MAX_SOURCE_BYTES) is not None:
                    continue  # a FIFO named .parquet would block the read
                import pyarrow.parquet as pq

                from fernoise.manifest import META_KEY

                if META_KEY in (pq.read_schema(folder / name).metadata or {}):
                    return f"holds a fernoise manifest ({name})"
            except Exception:  # noqa: BLE001 - an unreadable Parquet file is simply not a manifest
                continue
    return None


def scan_images(
    raw: Path, exclude: Path | None = None, skipped: list[dict[str, str]] | None = None
) -> list[str]:
    """Image files under ``raw`` as sorted posix paths relative to it (broken links included).

    Skipped: hidden files and folders, ``exclude`` (OUT) and its ``faces/`` (when OUT is RAW
    itself), and every sub-folder holding fernoise's own output
    (:func:`fernoise_output_reason`), so an OUT equal to or inside RAW, or an older output
    folder there, is never re-ingested; each skipped folder is appended to ``skipped``
    as ``{"folder": relative path, "reason": ...}``.
    """
    raw = Path(raw)
    ex = exclude.resolve() if exclude is not None else None
    ex_faces = ex / FACES if ex is not None else None  # OUT's crops, when OUT is RAW itself
    out = []
    seen = {raw.resolve()}  # linked folders are followed once: a link cycle cannot loop
    for dirpath, dirnames, filenames in os.walk(raw, followlinks=True):
        d = Path(dirpath)
        if d != raw:
            why = fernoise_output_reason(d, filenames, dirnames)
            if why is not None:
                if skipped is not None:
                    skipped.append(
                        {"folder": printable(d.relative_to(raw).as_posix()), "reason": why}
                    )
                dirnames[:] = []
                continue
        keep = []
        for name in dirnames:
            if name.startswith("."):
                continue
            real = (d / name).resolve()
            if ex is not None and real in (ex, ex_faces):
                if skipped is not None:
                    skipped.append(
                        {
                            "folder": printable((d / name).relative_to(raw).as_posix()),
                            "reason": "is OUT"
                            if real == ex
                            else f"is OUT's {FACES}/ folder (OUT is RAW)",
                        }
                    )
                continue
            if real in seen:
                continue
            seen.add(real)
            keep.append(name)
        dirnames[:] = sorted(keep)
        for name in filenames:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            out.append((d / name).relative_to(raw).as_posix())
    return sorted(out)


def _sha_or_none(path: Path) -> str | None:
    """sha256 of a regular file of at most ``MAX_SOURCE_BYTES``; None for anything else (a
    FIFO or a device is never opened: its row gets its status from the decoder)."""
    try:
        if regular_problem(path, MAX_SOURCE_BYTES) is not None:
            return None
        return file_sha256(path)
    except OSError:
        return None


def hash_sources(raw: Path, src_paths: Sequence[str], workers: int = 1) -> list[str | None]:
    """sha256 of each source file (None where it cannot be read)."""
    paths = [raw / s for s in src_paths]
    if workers > 1 and len(paths) > 64:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(_sha_or_none, paths, chunksize=64))
    return [_sha_or_none(p) for p in paths]


def shard_from_env() -> tuple[int, int] | None:
    """``(RANK, WORLD_SIZE)`` under torchrun (WORLD_SIZE > 1), else None."""
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except (KeyError, ValueError):
        return None
    return (rank, world) if world > 1 else None


def manifest_name(shard: tuple[int, int] | None) -> str:
    """``manifest.parquet``, or a shard's ``manifest.shard-<i>-of-<n>.parquet`` named as
    ``--shard i/n`` numbers it (1-based; ``shard`` counts from 0)."""
    return MANIFEST if shard is None else f"manifest.shard-{shard[0] + 1}-of-{shard[1]}.parquet"


def summary_path(manifest: Path) -> Path:
    return manifest.parent / STAMP_DIR / f"{manifest.name}.summary.json"


def crop_rel(src: str, face: int | None, params) -> str:
    """The crop's path relative to OUT; a source name that is not UTF-8 gets ``\\xNN``
    escapes (:func:`fernoise.safefiles.printable`), as its ``src_path`` in the manifest."""
    tail = f".f{face}" if params.all_faces and face is not None else ""
    return f"{FACES}/{printable(src)}{tail}.{params.ext}"


# ----------------------------------------------------------------------------- labels
def _infer(values: list[Any]):
    """Strings from a CSV -> numbers where every non-empty value is one (ints as Int64)."""
    import pandas as pd

    s = pd.Series(values, dtype="object")
    s = s.where(~s.isin(["", None]), None)
    if s.isna().all():
        return s
    try:
        num = pd.to_numeric(s, errors="raise")
    except (ValueError, TypeError):
        return s
    nonnull = num.dropna()
    if (
        len(nonnull)
        and (nonnull == nonnull.round()).all()
        and not any("." in str(v) for v in s.dropna())
    ):
        return num.astype("Int64")
    return num


def resolve_labels(raw: Path, src_paths: list[str], spec: LabelSpec):
    """``(labels, splits, extras DataFrame, classes, label_space, info)`` per source path."""
    import pandas as pd

    info: dict[str, Any] = {}
    extras = pd.DataFrame(index=range(len(src_paths)))
    if spec.files:
        labels, splits, fixed, info["labels"] = _labels_from_file(raw, src_paths, spec, extras)
    elif spec.label_regex is not None:
        labels, splits, fixed, info["labels"] = _labels_from_names(src_paths, spec, extras)
    else:
        labels, splits, fixed, info["labels"] = _labels_from_folders(src_paths, spec)
    classes, space, labels = dataset_classes(labels, declared=spec.classes, fixed=fixed)
    groups = _add_groups(src_paths, spec, extras)
    if groups is not None:
        info["groups"] = groups
    mapping = dict(spec.split_map)
    with_default = [s or "train" for s in splits]
    named = [mapping.get(s, s) for s in with_default]
    if spec.join:
        info["join"] = _add_join(Path(spec.join), src_paths, spec, extras)
    return labels, named, extras, classes, space, info


def _labels_from_file(
    raw: Path, src_paths: list[str], spec: LabelSpec, extras
) -> tuple[list[int | None], list[str | None], str | None, dict[str, Any]]:
    """``(canonical labels, splits, label space, info)`` from the label files; the files'
    other columns are added to ``extras`` (``<name>_file`` where a manifest column has it)."""
    import pandas as pd

    from fernoise.formats import FormatOptions, match_paths, read_labels
    from fernoise.formats.folders import from_paths
    from fernoise.manifest import COLUMNS

    n = len(src_paths)
    assert spec.format is not None  # LabelSpec refuses label files without a format
    opts = FormatOptions(spec.path_column, spec.label_column, spec.split_column)
    table = read_labels(spec.format, spec.files, opts, on_duplicate=spec.on_duplicate)
    df = table.df
    alt = df["alt_key"].tolist() if "alt_key" in df.columns else None
    where = match_paths(src_paths, df["key"].tolist(), alt, what="label file", flag="--labels")
    _refuse_conflicts(table, where, src_paths, spec)
    if not where:
        ex_key = df["key"].iloc[0]
        ex_img = src_paths[0] if src_paths else "(no images)"
        raise FernoiseError(
            f"label file {Path(spec.files[0]).name} ({len(df)} rows) matches none of the {n} images in {raw} "
            f"(e.g. row {ex_key!r} vs image {ex_img!r}); expected image names relative to the folder",
            flag="--labels",
        )
    rows = [where.get(s) for s in src_paths]
    _, folder_splits = from_paths(src_paths, labelled=False)
    label_col = df["label"].tolist()
    split_col = df["split"].tolist()
    labels = [None if r is None or pd.isna(label_col[r]) else int(label_col[r]) for r in rows]
    splits = [
        (split_col[r] if r is not None and isinstance(split_col[r], str) else None) or fs
        for r, fs in zip(rows, folder_splits, strict=True)
    ]
    for c in df.columns:
        if c in ("key", "label", "split", "alt_key"):
            continue
        name = f"{c}_file" if c in COLUMNS or c in ("crop_sha256",) else c
        vals = df[c].tolist()
        col = [None if r is None else vals[r] for r in rows]
        if pd.api.types.is_integer_dtype(df[c].dtype):
            extras[name] = pd.array(col, dtype="Int64")
        elif pd.api.types.is_float_dtype(df[c].dtype):
            extras[name] = pd.array(col, dtype="Float64")
        else:
            extras[name] = _infer(col)
    matched = len(set(where.values()))
    info = {
        "format": spec.format,
        "files": [Path(f).name for f in spec.files],
        "rows": len(df),
        "matched_rows": matched,
        "unmatched_rows": len(df) - matched,
        "images_without_label_row": n - len(where),
        "on_duplicate": spec.on_duplicate,
        **table.info,
    }
    if spec.group_column and not spec.group_regex:
        extras[spec.group_column] = _group_from_file(df, rows, spec.group_column, spec.files[0])
    return labels, splits, table.label_space, info


def _labels_from_names(
    src_paths: list[str], spec: LabelSpec, extras
) -> tuple[list[int | None], list[str | None], None, dict[str, Any]]:
    """``(canonical labels, splits, None, info)`` from ``--label-regex`` on the file names
    (splits from split folders); each row's code and status go to ``extras``
    (``label_code``, ``label_status``)."""
    import pandas as pd

    from fernoise.formats.filenames import labels_from_names
    from fernoise.formats.folders import from_paths

    assert spec.label_regex is not None
    labels, codes, statuses, info = labels_from_names(
        src_paths, spec.label_regex, dict(spec.label_map)
    )
    _, splits = from_paths(src_paths, labelled=False)
    extras["label_code"] = pd.Series(codes, dtype="object")
    extras["label_status"] = pd.Series(statuses, dtype="object")
    return labels, splits, None, info


def _check_label_regex(spec: LabelSpec) -> None:
    """Checks of ``--label-regex`` and ``--label-map``: a valid pattern with a group, a map
    only with a pattern, neither with label files."""
    if spec.label_map and spec.label_regex is None:
        raise FernoiseError(
            "--label-map turns --label-regex codes into classes; add --label-regex PATTERN",
            flag="--label-map",
        )
    if spec.label_regex is None:
        return
    if spec.files:
        raise FernoiseError(
            "labels come from the label file or from the file names, not both; drop "
            "--label-regex or --labels",
            flag="--label-regex",
        )
    from fernoise.formats.filenames import compile_label_regex

    compile_label_regex(spec.label_regex)


def _labels_from_folders(
    src_paths: list[str], spec: LabelSpec
) -> tuple[list[int | None], list[str | None], None, dict[str, Any]]:
    """``(canonical labels, splits, None, info)`` from class and split folder names."""
    from fernoise.formats.folders import from_paths

    labels, splits = from_paths(src_paths, labelled=True)
    if spec.group_column and not spec.group_regex:
        raise FernoiseError(
            f"--group-column {spec.group_column} names a label-file column, but there is no "
            "label file; pass --labels FILE, or --group-regex to read it from the file names",
            flag="--group-column",
        )
    return (
        labels,
        splits,
        None,
        {"format": "folders" if any(x is not None for x in labels) else None},
    )


def _add_groups(src_paths: list[str], spec: LabelSpec, extras) -> dict[str, Any] | None:
    """Fill the ``--group-regex`` column of ``extras``; the groups' info, or None without groups."""
    name = spec.group_column or "subject"
    if spec.group_regex:
        if name in extras.columns:
            raise FernoiseError(
                f"the label file already has a column {name!r}; name the regex's column with "
                "--group-column OTHER",
                flag="--group-column",
            )
        extras[name] = groups_from_regex(src_paths, spec.group_regex)
    if not (spec.group_column or spec.group_regex):
        return None
    g = extras[name]
    return {
        "column": name,
        "source": "regex" if spec.group_regex else "labels",
        "groups": int(g.dropna().nunique()),
        "images_without_group": int(g.isna().sum()),
    }


def _add_join(jpath: Path, src_paths: list[str], spec: LabelSpec, extras) -> dict[str, Any]:
    """Add the ``--join`` file's columns to ``extras``; what was joined (the ``join`` info)."""
    from fernoise.formats import match_paths, read_csv
    from fernoise.manifest import COLUMNS

    require_file(jpath, "join file", flag="--join")
    jdf = read_csv(jpath)
    if spec.join_on not in jdf.columns:
        raise FernoiseError(
            f"{jpath.name} has no column {spec.join_on!r}; found {list(jdf.columns)[:12]}",
            flag="--join-on",
        )
    where = match_paths(src_paths, jdf[spec.join_on].tolist(), what="join file", flag="--join")
    taken = set(COLUMNS) | set(extras.columns) | {"crop_sha256", spec.join_on}
    if spec.join_columns:
        bad = [c for c in spec.join_columns if c not in jdf.columns]
        if bad:
            raise FernoiseError(
                f"{jpath.name} has no column(s) {bad}; found {list(jdf.columns)[:12]}",
                flag="--join-columns",
            )
        clash = [c for c in spec.join_columns if c in taken]
        if clash:
            raise FernoiseError(
                f"column(s) {clash} are already in the manifest; pick others",
                flag="--join-columns",
            )
        cols = list(spec.join_columns)
    else:
        cols = [c for c in jdf.columns if c not in taken]
    rows = [where.get(s) for s in src_paths]
    for c in cols:
        vals = jdf[c].tolist()
        extras[c] = _infer([None if r is None else vals[r] for r in rows])
    return {
        "file": jpath.name,
        "on": spec.join_on,
        "columns": cols,
        "matched_images": len(where),
        "rows": len(jdf),
    }


# ----------------------------------------------------------------------------- classes, groups, subset
def _check_rows_spec(spec: LabelSpec) -> None:
    """Checks of ``--classes``, ``--group-column``, ``--group-regex``, ``--max-rows``, ``--seed``."""
    from fernoise.labels import class_list

    if spec.classes is not None and list(spec.classes) != class_list(
        list(spec.classes), flag="--classes"
    ):
        raise FernoiseError(
            f"expected canonical class names in canonical order, got {list(spec.classes)}; "
            "build them with fernoise.labels.class_list",
            flag="--classes",
        )
    if spec.group_column is not None:
        from fernoise.manifest import COLUMNS  # not at the top: a cache hit imports no pandas

        if spec.group_column.strip() == "" or spec.group_column in COLUMNS:
            raise FernoiseError(
                f"--group-column must name a new column, not {spec.group_column!r} "
                f"(taken: {', '.join(COLUMNS)})",
                flag="--group-column",
            )
    if spec.group_regex is not None:
        try:
            rx = re.compile(spec.group_regex)
        except re.error as e:
            raise FernoiseError(
                f"{spec.group_regex!r} is not a valid regular expression ({e})",
                flag="--group-regex",
            ) from None
        if rx.groups < 1:
            raise FernoiseError(
                f"{spec.group_regex!r} has no group; put the subject part in parentheses, "
                r"e.g. 'S(\d+)_'",
                flag="--group-regex",
            )
    if spec.max_rows is not None and (
        isinstance(spec.max_rows, bool) or not isinstance(spec.max_rows, int) or spec.max_rows < 1
    ):
        raise FernoiseError(
            f"expected a positive number of rows, got {spec.max_rows!r}", flag="--max-rows"
        )
    if isinstance(spec.seed, bool) or not isinstance(spec.seed, int) or spec.seed < 0:
        raise FernoiseError(
            f"expected a non-negative integer seed, got {spec.seed!r}", flag="--seed"
        )


def dataset_classes(labels: list[int | None], *, declared: Sequence[str] | None, fixed: str | None):
    """``(classes, label_space, local labels)`` from canonical ``labels`` (None = unlabelled).

    The class list is ``declared`` (``--classes``: it must hold every class that occurs),
    else the format's label space ``fixed`` (rafdb, ferplus, affectnet), else the classes
    that occur (class folders, csv), in canonical order; ``basic7`` when nothing is labelled.
    Labels come back as indices into that list.
    """
    from fernoise.labels import CLASSES, LABEL_SPACES, label_space_of

    seen = sorted({x for x in labels if x is not None})
    if declared is not None:
        classes = list(declared)
        extra = [CLASSES[i] for i in seen if CLASSES[i] not in classes]
        if extra:
            n = sum(1 for x in labels if x is not None and CLASSES[x] in extra)
            raise FernoiseError(
                f"{n} images are labelled {', '.join(extra)}, which --classes "
                f"{','.join(classes)} leaves out; add them to --classes",
                flag="--classes",
            )
    elif fixed is not None:
        classes = list(LABEL_SPACES[fixed])
    elif seen:
        classes = [CLASSES[i] for i in seen]
    else:
        classes = list(LABEL_SPACES["basic7"])
    local = {CLASSES.index(c): i for i, c in enumerate(classes)}
    return classes, label_space_of(classes), [None if x is None else local[x] for x in labels]


def _group_from_file(df, rows: list[int | None], column: str, first_file: str):
    """The label file's ``column`` per image, as the strings the file holds (null without a row)."""
    import pandas as pd

    if column not in df.columns or column in ("key", "label", "split", "alt_key"):
        cols = [c for c in df.columns if c not in ("key", "label", "split", "alt_key")]
        raise FernoiseError(
            f"{Path(first_file).name} has no column {column!r}; found {cols[:12]}",
            flag="--group-column",
        )
    vals = df[column].tolist()
    out = []
    for r in rows:
        v = None if r is None else vals[r]
        out.append(None if v is None or pd.isna(v) or str(v).strip() == "" else str(v))
    return pd.Series(out, dtype="object")


def groups_from_regex(src_paths: Sequence[str], pattern: str):
    """The first group of ``pattern`` searched in each ``src_path`` (strings; null where it does
    not match). A pattern that matches no path is an error."""
    import pandas as pd

    rx = re.compile(pattern)
    out = []
    for s in src_paths:
        m = rx.search(s)
        out.append(printable(m.group(1)) if m and m.group(1) is not None else None)
    if src_paths and all(v is None for v in out):
        raise FernoiseError(
            f"--group-regex {pattern!r} matches none of the {len(src_paths)} image paths "
            f"(e.g. {src_paths[0]!r}); it is searched in the path relative to RAW",
            flag="--group-regex",
        )
    return pd.Series(out, dtype="object")


def _refuse_conflicts(table, where: dict[str, int], src_paths: list[str], spec: LabelSpec) -> None:
    """Refuse label rows that name one of the images twice with different labels or splits,
    unless ``--on-duplicate`` says which row counts (conflicts on rows naming no image here
    are only counted in ``info``)."""
    from fernoise.formats import _posix, describe_conflict

    if not table.conflicts or spec.on_duplicate is not None:
        return
    keys = table.df["key"].tolist()
    hit = [
        k
        for k in dict.fromkeys(_posix(keys[where[s]]) for s in src_paths if s in where)
        if k in table.conflicts
    ]
    if hit:
        files = ", ".join(Path(f).name for f in spec.files)
        raise FernoiseError(
            f"{len(hit)} image(s) are named by several rows of {files} with different labels or splits "
            f"(first: {describe_conflict(hit[0], table.conflicts[hit[0]])}); choose which row counts with "
            "--on-duplicate first|last, or fix the file",
            flag="--on-duplicate",
        )


# ----------------------------------------------------------------------------- per-image records
class RecordStore:
    """Per-image records under ``OUT/.fernoise/align-records/<params hash>/``.

    Each batch appends one chunk file (``chunk-<tag>-<time>-<pid>-<n>.json``, written
    atomically); :meth:`compact` folds this run's chunks into ``records-<tag>.json`` once it
    has finished. ``tag`` is ``all``, or ``s<i>of<n>`` for a shard, so shards running at once
    in one OUT never fold or delete each other's chunks. Every file is read on start.
    """

    def __init__(self, out: Path, params_hash: str, tag: str = "all"):
        self.dir = out / STAMP_DIR / RECORDS / params_hash[:16]
        self.tag = tag
        self.records: dict[str, dict[str, Any]] = {}
        self._n = 0
        self._lock = threading.Lock()
        if self.dir.is_dir():
            files = sorted(
                self.dir.glob("*.json"), key=lambda p: (p.name.startswith("chunk-"), p.name)
            )
            for f in files:
                data = read_json(f)
                if isinstance(data, dict):
                    self.records.update(data)

    @staticmethod
    def key(src: str, sha: str) -> str:
        return f"{sha}:{src}"

    def add_chunk(self, recs: dict[str, dict[str, Any]]) -> None:
        if not recs:
            return
        with self._lock:
            self._n += 1
            name = f"chunk-{self.tag}-{time.time_ns()}-{os.getpid()}-{self._n}.json"
        atomic_write_json(self.dir / name, recs)
        self.records.update(recs)

    def compact(self, keep: dict[str, dict[str, Any]]) -> None:
        old = list(self.dir.glob(f"chunk-{self.tag}-*.json"))
        atomic_write_json(self.dir / f"records-{self.tag}.json", keep)
        for f in old:
            with contextlib.suppress(OSError):
                f.unlink()


def _crop_intact(out: Path, face: dict[str, Any]) -> bool:
    p = face.get("path")
    if not p:
        return True
    try:
        return file_sha256(out / p) == face.get("crop_sha256")
    except OSError:
        return False


# ----------------------------------------------------------------------------- per-image work
def working_factor(params, w: int, h: int) -> int:
    """The integer factor a ``w`` x ``h`` source is decoded reduced by for the stage.

    Detection modes: as much as keeps the longer side at or above ``detect_size`` (the
    detector sees that size anyway); ``--detect-size 0`` keeps full size. ``whole``: as much
    as the crop's resize allows without losing detail. Faces that need more detail than the
    reduced copy holds are cropped from a finer decode (:func:`fernoise.align.faces.faces_from`).
    """
    from fernoise.align.faces import reduction_for

    if params.mode == "whole":
        return reduction_for(params.size / max(1, min(w, h)))
    if not params.detect_size:
        return 1
    return max(1, max(w, h) // int(params.detect_size))


def _decode(path: Path, params) -> dict[str, Any]:
    """Decode reduced (:func:`working_factor`) and prepare the detector's copy; ``size`` is
    the source's, ``factor`` the reduction (source pixel = factor x image pixel)."""
    from fernoise.align.faces import decode_image, detector_input

    d = decode_image(path, lambda w, h: working_factor(params, w, h))
    item: dict[str, Any] = {
        "img": d.image,
        "status": d.status,
        "reason": d.reason,
        "path": path,
        "factor": d.factor,
    }
    if d.image is not None:
        assert d.size is not None  # decode_image sets the size with every image
        item["size"] = list(d.size)
        if params.mode != "whole" and min(d.size) >= params.min_face_size:
            arr, back = detector_input(d.image, params)
            item["det_in"] = (arr, back * d.factor)
    return item


def _finer(path: Path):
    """``f -> (image, factor)``: ``path`` decoded again, reduced by at most ``f`` (memoised)."""
    from fernoise.align.faces import decode_image

    cache: dict[int, tuple[Any, int]] = {}

    def get(f: int):
        if f not in cache:
            d = decode_image(path, f)
            if d.image is None:
                raise RuntimeError(f"could not decode the image again for a finer crop: {d.reason}")
            cache[f] = (d.image, d.factor)
        return cache[f]

    return get


class OutsideOut(Exception):
    """A crop's destination resolves outside OUT (through a symbolic link planted under it)."""


def _inside(base: str, path: str) -> bool:
    return path == base or path.startswith(base.rstrip(os.sep) + os.sep)


def _destination(out: Path, rel: str) -> Path:
    """``out / rel``, after checking that its folder resolves inside OUT (links followed).

    A folder under OUT that is a link to elsewhere would make the write land outside OUT:
    that row gets status ``error`` and nothing is written (no folder created either).
    """
    path = out / rel
    base = os.path.realpath(out)
    real = os.path.realpath(path.parent)
    if not _inside(base, real):
        raise OutsideOut(
            f"refused to write the crop {rel}: its folder resolves to {real}, outside OUT {base} "
            "(a symbolic link under OUT); nothing was written, remove the link and re-run"
        )
    return path


def _save_crop(crop, path: Path, params) -> str:
    import io

    from fernoise.cache import bytes_sha256

    buf = io.BytesIO()
    if params.image_format == "png":
        crop.save(buf, format="PNG", compress_level=1)
    else:
        crop.save(buf, format="JPEG", quality=int(params.jpeg_quality))
    data = buf.getvalue()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return bytes_sha256(data)


def _finish(
    src: str, sha: str | None, item: dict[str, Any], det, out: Path, params
) -> dict[str, Any]:
    """The record of one image: status, reason, faces (with crop paths and sha256), saved crops."""
    rec: dict[str, Any] = {
        "src": src,
        "sha": sha,
        "status": item["status"],
        "reason": item["reason"],
        "n_faces": 0,
        "size": item.get("size"),
        "faces": [],
    }
    if item["img"] is None:
        return rec
    try:
        if params.mode != "whole" and "det_in" in item:
            rec["n_faces"] = len(det)
        status, reason = _outcome(item, det, params)
        if status == "whole":
            rec.update(status=status, reason=reason, faces=[_whole_crop(src, item, out, params)])
        elif status == "ok":
            rec.update(status=status, reason=None, faces=_face_crops(src, item, det, out, params))
        else:
            rec.update(status=status, reason=reason)
        return rec
    except Exception as e:  # noqa: BLE001 - one bad image gets status error, the run goes on
        if destination_error(e) is not None:
            raise  # a full disk or a read-only OUT stops the run (one line), it is not the image's fault
        reason = (
            str(e)
            if isinstance(e, OutsideOut)
            else f"{e.__class__.__name__}: {' '.join(str(e).split())}"
        )
        rec.update(status="error", reason=reason, faces=[])
        return rec


def _outcome(item: dict[str, Any], det, params) -> tuple[str, str | None]:
    """``(status, reason)`` of a decoded image: ``ok`` (its detected faces are cropped),
    ``whole`` (the whole image resized), ``too_small`` or ``no_face`` (no crop)."""
    if params.mode == "whole":
        return "whole", "detection off (--mode whole): the whole image was resized"
    if "det_in" not in item:
        w, h = item["size"]
        return (
            "too_small",
            f"image is {w}x{h} px, smaller than the minimum face size {params.min_face_size} px",
        )
    if len(det) == 0:
        if params.on_no_face == "whole":
            return "whole", "no face detected (--on-no-face whole): the whole image was resized"
        return "no_face", f"the detector found no face with probability >= {params.min_prob}"
    return "ok", None


def _whole_crop(src: str, item: dict[str, Any], out: Path, params) -> dict[str, Any]:
    """Save the whole image resized (decoded finer where the reduced copy lacks detail); its face entry."""
    from fernoise.align.faces import crop_whole, reduction_for

    rel = f"{FACES}/{printable(src)}.{params.ext}"
    w, h = item["size"]
    need = reduction_for(params.size / max(1, min(w, h)))
    whole_src = item["img"] if item["factor"] <= need else _finer(item["path"])(need)[0]
    sha_c = _save_crop(crop_whole(whole_src, params), _destination(out, rel), params)
    return {
        "face": None,
        "det_prob": None,
        "bbox": None,
        "landmarks": None,
        "path": rel,
        "crop_sha256": sha_c,
    }


def _face_crops(src: str, item: dict[str, Any], det, out: Path, params) -> list[dict[str, Any]]:
    """Save the crop of each detected face (the most confident only, without ``all_faces``);
    their face entries."""
    from fernoise.align.faces import faces_from

    faces = faces_from(
        item["img"],
        det,
        params,
        max_faces=None if params.all_faces else 1,
        factor=item["factor"],
        finer=_finer(item["path"]),
    )
    recs = []
    for k, f in enumerate(faces):
        rel = crop_rel(src, k, params)
        recs.append(
            {
                "face": k,
                "det_prob": f.det_prob,
                # faces_from sets both (they are None only for a whole-image Face)
                "bbox": None if f.bbox is None else list(f.bbox),
                "landmarks": None if f.landmarks is None else list(f.landmarks),
                "path": rel,
                "crop_sha256": _save_crop(f.crop, _destination(out, rel), params),
            }
        )
    return recs


def _resolve_detector_device(device: str) -> str:
    if device == "auto" and "LOCAL_RANK" in os.environ:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


def process_images(
    raw: Path,
    out: Path,
    todo: list[tuple[str, str | None]],
    params,
    store: RecordStore | None,
    *,
    workers: int = 1,
    batch_size: int = 32,
    device: str = "auto",
    detector=None,
    progress: Progress | None = None,
    done0: int = 0,
    total: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Align ``todo`` (``(src_path, sha256)`` pairs) in batches; one chunk of records per batch.

    Decoding of the next batch and warping/saving of the previous one overlap detection of
    the current one (a thread pool of ``workers``); a killed run loses at most two batches.
    """
    total = total if total is not None else len(todo)
    results: dict[str, dict[str, Any]] = {}
    if not todo:
        return results
    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    pool = ThreadPoolExecutor(max(1, workers))
    state = {"done": done0}

    def submit(batch):
        return [pool.submit(_decode, raw / s, params) for s, _ in batch]

    def collect(batch, futs) -> None:
        chunk = {}
        for (s, sha), f in zip(batch, futs, strict=True):
            rec = f.result()
            results[s] = rec
            if sha is not None:
                chunk[RecordStore.key(s, sha)] = rec
        if store is not None:
            store.add_chunk(chunk)
        state["done"] += len(batch)
        if progress:
            progress(state["done"], total)

    try:
        pending = submit(batches[0])
        finishing = None
        for b, batch in enumerate(batches):
            items = [f.result() for f in pending]
            if b + 1 < len(batches):
                pending = submit(batches[b + 1])
            dets, detector = _detect_batch(items, params, detector, device)
            futs = [
                pool.submit(_finish, s, sha, it, d, out, params)
                for (s, sha), it, d in zip(batch, items, dets, strict=True)
            ]
            del items
            # crops of this batch are warped and saved while the next batch is detected
            if finishing is not None:
                collect(*finishing)
            finishing = (batch, futs)
        if finishing is not None:
            collect(*finishing)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results


def _detect_batch(items: list[dict[str, Any]], params, detector, device: str):
    """``(detections, detector)``: one detection per decoded item that has a detector copy
    (None for the others); the detector is made on first need and handed back for reuse."""
    from fernoise.align.faces import detect_images

    need = [i for i, it in enumerate(items) if "det_in" in it]
    dets: list[Any] = [None] * len(items)
    if need:
        if detector is None:
            from fernoise.align.detect import make_detector

            detector = make_detector(_resolve_detector_device(device))
        found = detect_images(
            [items[i]["img"] for i in need],
            params,
            detector,
            arrays=[items[i]["det_in"] for i in need],
        )
        for i, d in zip(need, found, strict=True):
            dets[i] = d
    return dets, detector


# ----------------------------------------------------------------------------- rows
def rows_from(src: str, sha: str | None, rec: dict[str, Any], params) -> list[dict[str, Any]]:
    src = printable(src)  # a name that is not UTF-8: escaped, as Parquet stores only valid text
    base = {
        "src_path": src,
        "src_sha256": sha,
        "status": rec["status"],
        "reason": rec["reason"],
        "n_faces": int(rec.get("n_faces") or 0),
    }
    faces = rec.get("faces") or []
    if not params.all_faces:
        faces = faces[:1]
    if not faces:
        rid = f"{src}#0" if params.all_faces else src
        return [
            {
                **base,
                "id": rid,
                "path": None,
                "crop_sha256": None,
                "face": None,
                "det_prob": None,
                "bbox": None,
                "landmarks": None,
            }
        ]
    out = []
    for f in faces:
        k = f["face"]
        rid = f"{src}#{0 if k is None else k}" if params.all_faces else src
        out.append(
            {
                **base,
                "id": rid,
                "path": f["path"],
                "crop_sha256": f["crop_sha256"],
                "face": k,
                "det_prob": f["det_prob"],
                "bbox": f["bbox"],
                "landmarks": f["landmarks"],
            }
        )
    return out


ORDER = [
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
]


def count_statuses(statuses) -> dict[str, int]:
    from fernoise.manifest import STATUSES

    counts = {s: 0 for s in STATUSES}
    for s in statuses:
        counts[s] = counts.get(s, 0) + 1
    return {k: v for k, v in counts.items() if v}


# ----------------------------------------------------------------------------- the stage
def align_folder(
    raw: str | os.PathLike,
    out: str | os.PathLike,
    params=None,
    labels: LabelSpec = LabelSpec(),
    *,
    workers: int = 1,
    batch_size: int = 32,
    shard: tuple[int, int] | None = None,
    device: str = "auto",
    detector=None,
    progress: Progress | None = None,
    force: bool = False,
    workspace: Workspace | None = None,
    dataset: str | None = None,
) -> AlignResult:
    """Align every image under ``raw`` into ``out`` (see the module docstring).

    ``dataset`` names the data set in the manifest's metadata (``dataset``; later stages keep
    it), e.g. ``synthetic-faces`` for ``fernoise demo``; None leaves it out (and the key as it was).

    ``workers``, ``batch_size``, ``device`` and ``progress`` never change the output, so they
    are not in the key. Returns an :class:`AlignResult` (``hit`` = whole-stage cache hit).
    """
    from fernoise.align.faces import AlignParams

    t0 = time.perf_counter()
    params = params if params is not None else AlignParams()
    raw, out = Path(raw), Path(out)
    require_folder(raw, "RAW", flag="RAW")
    require_folder(out, "OUT", flag="OUT", may_be_missing=True)
    stamps = (
        out / STAMP_DIR
    )  # records, stamps and summaries: a planted link must not take them outside OUT
    if stamps.is_symlink() and not _inside(os.path.realpath(out), os.path.realpath(stamps)):
        raise FernoiseError(
            f"{stamps} is a symbolic link to {os.path.realpath(stamps)}, outside OUT; fernoise "
            "writes only inside OUT: remove the link and re-run",
            flag="OUT",
        )
    if workers < 1:
        raise FernoiseError(f"expected at least 1 worker, got {workers}", flag="--workers")
    if batch_size < 1:
        raise FernoiseError(
            f"expected a batch size of at least 1, got {batch_size}", flag="--batch-size"
        )
    created = not out.exists()
    try:
        return _align_folder(
            raw,
            out,
            params,
            labels,
            workers=workers,
            batch_size=batch_size,
            shard=shard,
            device=device,
            detector=detector,
            progress=progress,
            force=force,
            workspace=workspace,
            t0=t0,
            dataset=dataset,
        )
    except BaseException:
        if created:
            _remove_empty_tree(out)  # a failed first run leaves no empty OUT behind
        raise


def _remove_empty_tree(root: Path) -> None:
    """Remove ``root`` and its sub-folders where they hold no file (bottom-up, links untouched)."""
    for dirpath, _dirnames, _filenames in sorted(os.walk(root), key=lambda t: -len(t[0])):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)  # fails, as it should, on a folder that still holds something


def _clean_own_tmp(out: Path) -> None:
    """Remove the leftovers of killed writers, only where align writes: its manifests in
    OUT itself, and its own ``faces/`` and ``.fernoise/`` folders. OUT may be the user's
    project folder: no other file there, and no other folder, is ever looked at."""
    clean_stale_tmp(out, target=re.compile(r"manifest(\.shard-\d+-of-\d+)?\.parquet"))
    for own in (out / STAMP_DIR, out / FACES):
        if own.is_dir() and not own.is_symlink():
            clean_stale_tmp(own, recursive=True)


def _align_folder(
    raw: Path,
    out: Path,
    params,
    labels: LabelSpec,
    *,
    workers,
    batch_size,
    shard,
    device,
    detector,
    progress,
    force,
    workspace,
    t0,
    dataset=None,
) -> AlignResult:
    skipped: list[dict[str, str]] = []
    src_all = scan_images(raw, exclude=out, skipped=skipped)
    if not src_all:
        raise FernoiseError(
            f"no image files found in {raw} (looked for {', '.join(IMAGE_EXTENSIONS)})", flag="RAW"
        )
    shas_all = hash_sources(raw, src_all, workers)
    out.mkdir(parents=True, exist_ok=True)
    _clean_own_tmp(out)  # what a killed run or a full disk left half-written
    key_params, inputs = _key_parts(src_all, shas_all, params, labels, dataset)
    base_key = stage_key(STAGE, VERSION, key_params, inputs)
    if shard is not None:
        key_params = {**key_params, "shard": list(shard)}
    manifest = out / manifest_name(shard)
    holder: dict[str, Any] = {}

    def build(key: str) -> list[Path]:
        if shard is None:
            _refuse_other_dataset(manifest, raw, shas_all, force)
        written, summary = _build(
            raw,
            out,
            manifest,
            src_all,
            shas_all,
            params,
            labels,
            key=key,
            base_key=base_key,
            shard=shard,
            workers=workers,
            batch_size=batch_size,
            device=device,
            detector=detector,
            progress=progress,
            dataset=dataset,
        )
        holder["summary"] = summary
        return written

    # rows with status error are retried on every run (never a whole-stage hit, never a cached record)
    retry = bool((read_json(summary_path(manifest)) or {}).get("counts", {}).get("error"))
    res = run_stage(
        stage=STAGE,
        version=VERSION,
        params=key_params,
        inputs=inputs,
        output=manifest,
        build=build,
        workspace=workspace if shard is None else None,
        force=force or retry,
    )
    summary = holder.get("summary") or read_json(summary_path(manifest)) or {}
    result = _result(manifest, res.key, res.hit, summary)
    if skipped:
        result.info = {**result.info, "skipped_folders": skipped}
    if shard is not None:
        result.merged = merge_shards(out, n=shard[1], workspace=workspace, quiet=True)
    result.seconds = time.perf_counter() - t0
    return result


def _refuse_other_dataset(
    manifest: Path, raw: Path, shas: Sequence[str | None], force: bool
) -> None:
    """Refuse (one line) to replace OUT's manifest when it was made from another data set:
    none of its source images (by sha256) is among RAW's. ``force`` replaces it."""
    if force or not manifest.is_file():
        return
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(manifest, columns=["src_path", "src_sha256"])
    except (OSError, ValueError, KeyError):  # not a manifest of ours: the build says what is wrong
        return
    old = {s for s in table.column("src_sha256").to_pylist() if s}
    if not old or not {s for s in shas if s} or old & set(shas):
        return
    example = next((p for p in table.column("src_path").to_pylist() if p), "?")
    raise FernoiseError(
        f"{manifest} was made from another data set ({len(old):,} images such as {example!r}); "
        f"RAW {raw} shares none of them: choose another OUT, or pass --force to replace it",
        flag="OUT",
    )


def _result(manifest: Path, key: str, hit: bool, summary: dict[str, Any]) -> AlignResult:
    """The :class:`AlignResult` of a run or a hit from its summary (``seconds`` set later)."""
    return AlignResult(
        manifest=manifest,
        key=key,
        hit=hit,
        seconds=0.0,
        counts=summary.get("counts", {}),
        rows=summary.get("rows", 0),
        info=summary.get("info", {}),
    )


def _key_parts(
    src_all: list[str], shas_all: list[str | None], params, labels: LabelSpec, dataset: str | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(params, inputs)`` of the stage key (without the shard): the output-changing
    parameters, and the hashes of every source image, label file and join file."""
    key_params: dict[str, Any] = {"align": params.asdict(), "labels": labels.key_params()}
    if dataset is not None:
        key_params["dataset"] = dataset
    inputs = {
        "images": dict_hash([[s, h] for s, h in zip(src_all, shas_all, strict=True)]),
        "label_files": [_sha_or_none(Path(f)) for f in labels.files],
        "join": _sha_or_none(Path(labels.join)) if labels.join else None,
    }
    return key_params, inputs


def _build(
    raw,
    out,
    manifest,
    src_all,
    shas_all,
    params,
    labels,
    *,
    key,
    base_key,
    shard,
    workers,
    batch_size,
    device,
    detector,
    progress,
    dataset=None,
) -> tuple[list[Path], dict[str, Any]]:
    """Align this run's images (reusing intact per-image records) and write the manifest and
    its summary; ``(files written, summary)``."""
    from fernoise.manifest import stage_meta, write_manifest

    lab, splits, extras, classes, space, info = resolve_labels(raw, src_all, labels)
    idx = _chosen_rows(src_all, lab, splits, labels, shard, info)
    src = [src_all[j] for j in idx]
    shas = [shas_all[j] for j in idx]
    records, reused, realigned = _aligned_records(
        raw,
        out,
        src,
        shas,
        params,
        shard,
        workers=workers,
        batch_size=batch_size,
        device=device,
        detector=detector,
        progress=progress,
    )
    df = _manifest_frame(idx, src, shas, records, params, lab, splits, classes, extras)
    counts = count_statuses(df["status"])
    info = {
        **info,
        "images": len(src),
        "realigned": realigned,
        "reused": reused,
        "classes": classes,
        "label_space": space,
    }
    meta = stage_meta(
        None,
        stage=STAGE,
        params=params.asdict(),
        key=key,
        classes=classes,
        label_space=space,
        counts=counts,
        labels=info.get("labels"),
        join=info.get("join"),
        base_key=base_key,
        shard=list(shard) if shard else None,
        images=len(src),
        groups=info.get("groups"),
        subset=info.get("subset"),
        dataset=dataset if dataset is not None else Path(raw).resolve().name,
    )
    write_manifest(df, manifest, meta)
    summary = {"counts": counts, "rows": len(df), "info": info, "key": key}
    atomic_write_json(summary_path(manifest), summary)
    crops = [out / p for p in df["path"].dropna().unique()]
    return [manifest, summary_path(manifest), *crops], summary


def _chosen_rows(
    src_all: list[str],
    lab: list[int | None],
    splits: list[str],
    labels: LabelSpec,
    shard: tuple[int, int] | None,
    info: dict[str, Any],
) -> list[int]:
    """Indices into ``src_all`` this run aligns: the ``--max-rows`` subset (recorded in
    ``info["subset"]``), then this shard's share."""
    idx = list(range(len(src_all)))
    if labels.max_rows is not None:
        from fernoise.subset import stratified_subset

        # src_all is sorted, so the subset does not depend on the order the folder lists files in
        idx = stratified_subset(
            [(splits[j], lab[j]) for j in idx], labels.max_rows, labels.seed
        ).tolist()
        info["subset"] = {
            "max_rows": labels.max_rows,
            "seed": labels.seed,
            "images_total": len(src_all),
            "images_kept": len(idx),
            "stratified_by": ["split", "label"],
        }
    if shard is not None:
        idx = [j for j in idx if j % shard[1] == shard[0]]
    return idx


def _aligned_records(
    raw: Path,
    out: Path,
    src: list[str],
    shas: list[str | None],
    params,
    shard: tuple[int, int] | None,
    *,
    workers: int,
    batch_size: int,
    device: str,
    detector,
    progress: Progress | None,
) -> tuple[dict[str, dict[str, Any]], int, int]:
    """``(record per src_path, images reused, images re-aligned)``: intact records of the
    per-image cache are reused, the rest go through :func:`process_images`; the store is
    compacted afterwards."""
    store = RecordStore(
        out, dict_hash(params.asdict()), "all" if shard is None else f"s{shard[0]}of{shard[1]}"
    )
    records: dict[str, dict[str, Any]] = {}
    todo: list[tuple[str, str | None]] = []
    for s, h in zip(src, shas, strict=True):
        rec = store.records.get(RecordStore.key(s, h)) if h is not None else None
        # an unexpected error (or a refused write) is retried on the next run, never cached
        if (
            rec is not None
            and rec.get("status") != "error"
            and all(_crop_intact(out, f) for f in rec.get("faces") or [])
        ):
            records[s] = rec
        else:
            todo.append((s, h))
    reused = len(records)
    if progress:
        progress(reused, len(src))
    records.update(
        process_images(
            raw,
            out,
            todo,
            params,
            store,
            workers=workers,
            batch_size=batch_size,
            device=device,
            detector=detector,
            progress=progress,
            done0=reused,
            total=len(src),
        )
    )
    store.compact(
        {RecordStore.key(s, h): records[s] for s, h in zip(src, shas, strict=True) if h is not None}
    )
    return records, reused, len(todo)


def _manifest_frame(
    idx: list[int],
    src: list[str],
    shas: list[str | None],
    records: dict[str, dict[str, Any]],
    params,
    lab: list[int | None],
    splits: list[str],
    classes: list[str],
    extras,
):
    """The manifest's rows (``ORDER`` columns, then ``extras``), sorted by ``id``."""
    import pandas as pd

    rows = []
    for j, s, h in zip(idx, src, shas, strict=True):
        for r in rows_from(s, h, records[s], params):
            r["_j"] = j
            rows.append(r)
    df = pd.DataFrame(rows)
    jj = df["_j"].to_numpy()
    df["split"] = [splits[j] for j in jj]
    df["label"] = pd.array([lab[j] for j in jj], dtype="Int64")
    df["label_name"] = [
        None if lab[j] is None else classes[lab[j]] if lab[j] < len(classes) else None for j in jj
    ]
    df = df[ORDER].reset_index(drop=True)
    if len(extras.columns):
        df = pd.concat([df, extras.iloc[jj].reset_index(drop=True)], axis=1)
    return df.sort_values("id", kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------- shards
def merge_shards(
    out: str | os.PathLike,
    *,
    n: int | None = None,
    workspace: Workspace | None = None,
    quiet: bool = False,
) -> Path | None:
    """Merge ``manifest.shard-<i>-of-<n>.parquet`` of ``out`` into ``manifest.parquet``.

    All ``n`` shards must exist and share one ``base_key`` (same inputs and parameters); the
    merged manifest gets that key (so an unsharded run of the same command is a cache hit).
    With ``quiet`` a missing shard returns None instead of raising.
    """
    import pandas as pd

    from fernoise.manifest import read_manifest

    out = Path(out)
    shards = _shard_files(out, n, quiet=quiet)
    if shards is None:
        return None
    n = len(shards)
    parts = [read_manifest(p) for p in shards]
    keys = {m.meta.get("base_key") for m in parts}
    base_key = keys.pop() if len(keys) == 1 else None
    if not isinstance(base_key, str):  # every shard fernoise writes records its base_key
        if quiet:
            return None
        raise FernoiseError(
            f"the {n} shard manifests in {out} come from different inputs or parameters; re-run them",
            flag="--merge",
        )
    df = (
        pd.concat([m.df for m in parts], ignore_index=True)
        .sort_values("id", kind="stable")
        .reset_index(drop=True)
    )
    return _write_merged(out, df, dict(parts[0].meta), base_key, n, workspace)


def _shard_files(out: Path, n: int | None, *, quiet: bool) -> list[Path] | None:
    """The ``n`` shard manifests of ``out`` in shard order (``n`` None: the one shard count
    present); a missing one raises, or returns None with ``quiet``."""
    found: dict[int, dict[int, Path]] = {}
    for p in out.glob("manifest.shard-*-of-*.parquet"):
        m = SHARD_RE.match(p.name)
        if m:
            found.setdefault(int(m.group(2)), {})[int(m.group(1)) - 1] = p  # named 1-based
    if n is None:
        if len(found) != 1:
            if quiet:
                return None
            raise FernoiseError(
                f"expected shard manifests of one shard count in {out}, found counts {sorted(found)}",
                flag="--merge",
            )
        n = next(iter(found))
    have = found.get(n, {})
    missing = [i for i in range(n) if i not in have]
    if missing:
        if quiet:
            return None
        raise FernoiseError(
            f"shards {[i + 1 for i in missing]} of {n} are missing in {out}; run them with --shard i/{n}",
            flag="--merge",
        )
    return [have[i] for i in range(n)]


def _write_merged(
    out: Path, df, meta: dict[str, Any], base_key: str, n: int, workspace: Workspace | None
) -> Path:
    """Write the merged ``OUT/manifest.parquet`` (keyed ``base_key``), its summary and stamp,
    and record it in the workspace."""
    from fernoise.manifest import write_manifest

    counts = count_statuses(df["status"])
    meta.update(
        key=base_key,
        shard=None,
        counts=counts,
        images=int(df["src_path"].nunique()),
        lineage=[{"stage": STAGE, "key": base_key, "params": meta.get("params")}],
    )
    meta.pop("schema_version", None)
    meta.pop("fernoise_version", None)
    target = out / MANIFEST
    write_manifest(df, target, meta)
    summary = {"counts": counts, "rows": len(df), "info": {"merged_shards": n}, "key": base_key}
    atomic_write_json(summary_path(target), summary)
    crops = [out / p for p in df["path"].dropna().unique()]
    write_stamp(
        target,
        base_key,
        [target, summary_path(target), *crops],
        stage=STAGE,
        params={"merged_from_shards": n},
    )
    if workspace is not None:
        workspace.record(STAGE, key=base_key, output=target, params=meta.get("params") or {})
    return target
