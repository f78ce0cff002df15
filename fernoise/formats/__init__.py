"""Label sources for ``fernoise align``: one reader per format, picked by name.

A reader turns one or more label files into a :class:`LabelTable`: one row per labelled
image with ``key`` (the image path as the file names it), ``label`` (canonical class index,
``<NA>`` where the file gives none), ``split`` (``train``/``val``/``test`` or ``<NA>``) and
the file's other columns, kept as they are. :func:`match_paths` then pairs keys with the
images found in the folder (exact path, or one path a suffix of the other at a ``/``).

Class sub-folders (``root/<class>/<img>``, ``root/<split>/<class>/<img>``) are read from the
image paths themselves by :mod:`fernoise.formats.folders` when no label file is given.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fernoise.errors import FernoiseError, require_file

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

# Spellings of the three splits in label files and folder names (lower case).
SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "training": "train",
    "trn": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "publictest": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
    "privatetest": "test",
}


def normalize_split(value: Any, *, flag: str | None = None) -> str | None:
    """A split name or alias -> ``train``/``val``/``test``; empty -> None; unknown -> error."""
    if value is None:
        return None
    text = str(value).strip()
    if text == "" or text.lower() in ("nan", "<na>", "none"):
        return None
    key = text.lower()
    if key not in SPLIT_ALIASES:
        raise FernoiseError(
            f"unknown split {text!r}; expected one of: {', '.join(sorted(SPLIT_ALIASES))} "
            "(map others with --split-map FROM=TO)",
            flag=flag,
        )
    return SPLIT_ALIASES[key]


@dataclass(frozen=True)
class FormatOptions:
    """Column names for ``--format csv`` (other formats have fixed columns)."""

    path_column: str = "path"
    label_column: str | None = "label"
    split_column: str | None = None


@dataclass
class LabelTable:
    """Rows of one or more label files: ``df`` with ``key``, ``label``, ``split``, optional
    ``alt_key`` (a second file name the image may have, e.g. RAF-DB's ``*_aligned.jpg``),
    and the file's other columns. ``label_space`` is ``basic7``/``basic8`` or None (infer)."""

    df: pd.DataFrame
    label_space: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    conflicts: dict[str, list[tuple[int | None, str | None]]] = field(default_factory=dict)
    """Keys named by several rows that disagree: key -> the distinct ``(label, split)`` pairs
    in file order (filled by :func:`collapse_duplicates`)."""


ON_DUPLICATE = ("first", "last")


def _registry() -> dict[str, Callable[[Sequence[Path], FormatOptions], LabelTable]]:
    from fernoise.formats import affectnet, csvfile, ferplus, rafdb

    return {
        "rafdb": rafdb.read,
        "ferplus": ferplus.read,
        "affectnet": affectnet.read,
        "csv": csvfile.read,
    }


FORMAT_NAMES = ("rafdb", "ferplus", "affectnet", "csv")


def collapse_duplicates(table: LabelTable, on_duplicate: str | None = None) -> LabelTable:
    """One row per key (paths compared after ``./`` and ``\\`` normalisation).

    Rows that repeat a key with the same label and split are merged; keys whose rows disagree
    are listed in ``conflicts`` and keep their ``first`` or ``last`` row (``on_duplicate``;
    None keeps the last for now: the caller refuses when such a key names an image).
    ``info`` gains ``duplicate_rows`` (rows dropped) and ``conflicting_names``.
    """
    import pandas as pd

    if on_duplicate is not None and on_duplicate not in ON_DUPLICATE:
        raise FernoiseError(
            f"unknown value {on_duplicate!r}; expected one of: {', '.join(ON_DUPLICATE)}",
            flag="--on-duplicate",
        )
    df = table.df
    key = df["key"].map(_posix)
    dup = key.duplicated(keep=False)
    conflicts: dict[str, list[tuple[int | None, str | None]]] = {}
    if dup.any():
        sub = pd.DataFrame({"k": key[dup], "label": df["label"][dup], "split": df["split"][dup]})
        for k, g in sub.groupby("k", sort=False):
            pairs = list(
                dict.fromkeys(
                    (None if pd.isna(lab) else int(lab), None if not isinstance(sp, str) else sp)
                    for lab, sp in zip(g["label"], g["split"], strict=True)
                )
            )
            if len(pairs) > 1:
                conflicts[str(k)] = pairs
    out = df[~key.duplicated(keep="first" if on_duplicate == "first" else "last")].reset_index(
        drop=True
    )
    info = {**table.info, "duplicate_rows": len(df) - len(out), "conflicting_names": len(conflicts)}
    return LabelTable(out, table.label_space, info, conflicts)


def describe_conflict(key: str, pairs: Sequence[tuple[int | None, str | None]]) -> str:
    """``'a.png': happy (train) vs sad (train)`` for an error message."""
    from fernoise.labels import CLASSES

    parts = [
        f"{'no label' if lab is None else CLASSES[lab]} ({sp or 'no split'})" for lab, sp in pairs
    ]
    return f"{key!r}: {' vs '.join(parts)}"


def read_labels(
    fmt: str,
    files: Sequence[str | os.PathLike],
    options: FormatOptions = FormatOptions(),
    on_duplicate: str | None = None,
) -> LabelTable:
    """Read ``files`` as format ``fmt`` (one row per key: :func:`collapse_duplicates`); an
    unknown format is an error listing the valid ones."""
    readers = _registry()
    if fmt not in readers:
        raise FernoiseError(
            f"unknown label format {fmt!r}; expected one of: {', '.join(FORMAT_NAMES)}",
            flag="--format",
        )
    paths = [Path(f) for f in files]
    for p in paths:
        require_file(p, "label file", flag="--labels")
    table = readers[fmt](paths, options)
    if len(table.df) == 0:
        raise FernoiseError(
            f"label file {', '.join(map(str, paths))} has no rows in {fmt} format", flag="--labels"
        )
    return collapse_duplicates(table, on_duplicate)


def read_csv(path: Path, **kw: Any) -> pd.DataFrame:
    """A CSV as strings (no type guessing), or a one-line error."""
    import pandas as pd

    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, **kw)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise FernoiseError(
            f"{path} is not a readable CSV file ({' '.join(str(e).split())})", flag="--labels"
        ) from None


def require_columns(
    df: pd.DataFrame, columns: Sequence[str], path: Path, fmt: str, flag: str = "--format"
) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise FernoiseError(
            f"{path.name} lacks column(s) {missing} expected for --format {fmt}; found {list(df.columns)[:12]}",
            flag=flag,
        )


def _posix(p: str) -> str:
    p = str(p).strip().replace("\\", "/")
    while p.startswith("./"):
        p = p[2:]
    return p


def _suffix_of(a: str, b: str) -> bool:
    """True when path ``a`` equals ``b`` or is a suffix of it at a ``/`` boundary."""
    return a == b or b.endswith("/" + a)


def match_paths(
    src_paths: Sequence[str],
    keys: Sequence[str],
    alt_keys: Sequence[str | None] | None = None,
    *,
    what: str = "label file",
    flag: str = "--labels",
) -> dict[str, int]:
    """``src_path -> row index`` of the key that names it.

    A key names an image when the two paths are equal, or one is a suffix of the other at a
    ``/`` (``fer0028638.png`` vs ``FER2013Valid/fer0028638.png``). An exact match wins;
    otherwise an image named by two rows, or a row naming two images, is ambiguous: an error.
    """
    by_base: dict[str, list[str]] = {}
    for s in src_paths:
        by_base.setdefault(s.rsplit("/", 1)[-1], []).append(s)
    exact = set(src_paths)
    found: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        alt = alt_keys[i] if alt_keys is not None else None
        names = [k, alt] if alt else [k]
        for name in names:
            name = _posix(name)
            if not name:
                continue
            if name in exact:
                hits = [name]
            else:
                cands = by_base.get(name.rsplit("/", 1)[-1], [])
                hits = [s for s in cands if _suffix_of(s, name) or _suffix_of(name, s)]
                if len(hits) > 1:
                    raise FernoiseError(
                        f"{what} row {name!r} matches {len(hits)} images ({hits[0]}, {hits[1]}, ...); "
                        "give paths relative to the image folder",
                        flag=flag,
                    )
            for h in hits:
                found.setdefault(h, []).append(i)
    out: dict[str, int] = {}
    for s, rows in found.items():
        rows = sorted(set(rows))
        if len(rows) > 1:
            exact_rows = [r for r in rows if _posix(keys[r]) == s]
            if len(exact_rows) == 1:
                rows = exact_rows
            else:
                raise FernoiseError(
                    f"image {s} is named by {len(rows)} rows of the {what} ({keys[rows[0]]!r}, {keys[rows[1]]!r}); "
                    "make the paths unique",
                    flag=flag,
                )
        out[s] = rows[0]
    return out
