"""AffectNet ``training.csv`` / ``validation.csv``.

Columns ``subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,
expression,valence,arousal``; expression 0-7 = Neutral, Happiness, Sadness, Surprise, Fear,
Disgust, Anger, Contempt (the canonical order); 8 None, 9 Uncertain and 10 No-Face give a
null label (the image still gets its row). Split from the file name: ``validation*`` -> val,
otherwise train (AffectNet's test set is not public; ``--split-map val=test`` evaluates on
the validation set). Other columns are kept as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from fernoise.formats import FormatOptions, LabelTable, read_csv, require_columns

PATH, EXPR = "subDirectory_filePath", "expression"


def read(files: Sequence[Path], options: FormatOptions) -> LabelTable:
    frames = []
    for path in files:
        df = read_csv(path)
        require_columns(df, [PATH, EXPR], path, "affectnet")
        df["split"] = "val" if "valid" in path.name.lower() else "train"
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    expr = pd.to_numeric(df[EXPR], errors="coerce")
    label = expr.where((expr >= 0) & (expr <= 7)).astype("Int64")
    out = pd.DataFrame({"key": df[PATH].str.strip(), "label": label, "split": df["split"]})
    for c in df.columns:
        if c not in (PATH, "split"):
            out[c] = df[c].to_numpy()
    info = {"rows": len(df), "dropped_expression": int(label.isna().sum())}
    space = "basic8" if (label == 7).any() else "basic7"
    return LabelTable(out, label_space=space, info=info)
