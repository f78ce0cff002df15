"""Any CSV: ``--path-column`` (default ``path``), ``--label-column`` (default ``label``; class
names or aliases in any case, or canonical indices 0-7; empty = unlabelled) and optionally
``--split-column`` (train/val/test or their aliases: valid, validation, PublicTest, ...).
Other columns are kept as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from fernoise.errors import FernoiseError
from fernoise.formats import FormatOptions, LabelTable, normalize_split, read_csv, require_columns
from fernoise.labels import CLASSES, accepted_names, canonical_name


def parse_label(value: str, *, where: str) -> int | None:
    text = str(value).strip()
    if text == "":
        return None
    if text.lstrip("-").isdigit():
        i = int(text)
        if not 0 <= i < len(CLASSES):
            raise FernoiseError(
                f"{where}: label {i} is outside the canonical 0-7", flag="--label-column"
            )
        return i
    try:
        return CLASSES.index(canonical_name(text))
    except FernoiseError:
        raise FernoiseError(
            f"{where}: unknown class name {text!r}; expected one of: {accepted_names()} or 0-7",
            flag="--label-column",
        ) from None


def read(files: Sequence[Path], options: FormatOptions) -> LabelTable:
    frames = []
    for path in files:
        df = read_csv(path)
        cols = [options.path_column] + [
            c for c in (options.label_column, options.split_column) if c
        ]
        missing = [c for c in cols if c not in df.columns]
        if missing:
            flag = {
                options.path_column: "--path-column",
                options.label_column: "--label-column",
            }.get(missing[0], "--split-column")
            raise FernoiseError(
                f"{path.name} has no column {missing[0]!r}; found {list(df.columns)[:12]}",
                flag=flag,
            )
        require_columns(df, cols, path, "csv")
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    keys = df[options.path_column].str.strip()
    if options.label_column:
        seen: dict[str, int | None] = {}
        for v in df[options.label_column].unique():
            seen[v] = parse_label(v, where=f"column {options.label_column}")
        label = pd.array([seen[v] for v in df[options.label_column]], dtype="Int64")
    else:
        label = pd.array([None] * len(df), dtype="Int64")
    split = (
        [normalize_split(v, flag="--split-column") for v in df[options.split_column]]
        if options.split_column
        else [None] * len(df)
    )
    out = pd.DataFrame({"key": keys, "label": label, "split": split})
    used = {options.path_column, options.label_column, options.split_column}
    for c in df.columns:
        if c not in used:
            out[c] = df[c].to_numpy()
    return LabelTable(out, label_space=None, info={"rows": len(df)})
