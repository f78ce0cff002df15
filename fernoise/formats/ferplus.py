"""FER+ ``fer2013new.csv``: ``Usage,Image name,<10 vote columns>``.

Label: the FER+ majority (docs/data.md): votes of 1 are dropped, the top class is kept when it
holds more than half of the remaining votes, and a row whose winner is ``unknown`` or ``NF``
(or with no majority) gets a null label. Split from ``Usage``: Training -> train,
PublicTest -> val, PrivateTest -> test. Rows with an empty ``Image name`` (non-faces) are
skipped. A name on two rows that disagree (``fer0033120.png`` in the test split) is refused
unless ``--on-duplicate``: ``last`` is right for FER+ (its generator wrote the image of the
last row), and the ferplus presets say so. Every column is kept as it is, the 10 votes as
integers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fernoise.formats import FormatOptions, LabelTable, normalize_split, read_csv, require_columns
from fernoise.labels import CLASSES, FERPLUS_VOTE_COLUMNS, canonical_name

NAME, USAGE = "Image name", "Usage"


def majority(votes: np.ndarray) -> np.ndarray:
    """``(N, 10)`` votes in FER+ order -> canonical class index, or -1 where there is none."""
    v = np.asarray(votes, dtype=np.float64).copy()
    v[v <= 1] = 0  # drop single (stray) votes
    top = v.argmax(1)
    total = v.sum(1)
    keep = (v.max(1) > total / 2) & (total > 0)
    index = np.array(
        [CLASSES.index(canonical_name(n)) for n in FERPLUS_VOTE_COLUMNS[:8]] + [-1, -1]
    )
    return np.where(keep, index[top], -1)


def read(files: Sequence[Path], options: FormatOptions) -> LabelTable:
    frames = []
    for path in files:
        df = read_csv(path)
        require_columns(df, [USAGE, NAME, *FERPLUS_VOTE_COLUMNS], path, "ferplus")
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    n_file = len(df)
    df = df[df[NAME].str.strip() != ""]
    n_nonface = n_file - len(df)
    df = df.reset_index(drop=True)
    for c in FERPLUS_VOTE_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce").fillna(0).astype("int64")
    lab = majority(df[list(FERPLUS_VOTE_COLUMNS)].to_numpy())
    out = pd.DataFrame(
        {
            "key": df[NAME].str.strip(),
            "label": pd.array([None if x < 0 else int(x) for x in lab], dtype="Int64"),
            "split": [normalize_split(u, flag="--labels") for u in df[USAGE]],
        }
    )
    for c in df.columns:
        if c != NAME:
            out[c] = df[c].to_numpy()
    info = {"rows": n_file, "non_face_rows": n_nonface, "no_majority": int((lab < 0).sum())}
    return LabelTable(out, label_space="basic8", info=info)
