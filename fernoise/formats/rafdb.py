"""RAF-DB ``EmoLabel/list_patition_label.txt``: ``train_00001.jpg 5`` per line.

Labels 1..7 = Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral (docs/data.md),
mapped to the canonical order. Split from the name's prefix (``train_``/``test_``). The
aligned images are ``Image/aligned/<stem>_aligned.jpg``: both names are matched.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from fernoise.errors import FernoiseError
from fernoise.formats import FormatOptions, LabelTable, normalize_split
from fernoise.labels import CLASSES, RAFDB_ORDER


def read(files: Sequence[Path], options: FormatOptions) -> LabelTable:
    keys, labels, splits, alts, raw = [], [], [], [], []
    for path in files:
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise FernoiseError(
                    f"{path.name} line {n}: expected '<image name> <label 1-7>' (RAF-DB format), found {line.strip()[:60]!r}",
                    flag="--format",
                )
            name, value = parts[0], int(parts[1])
            if value not in RAFDB_ORDER:
                raise FernoiseError(
                    f"{path.name} line {n}: RAF-DB labels are 1-7, found {value}", flag="--labels"
                )
            stem, dot, ext = name.rpartition(".")
            keys.append(name)
            alts.append(f"{stem}_aligned.{ext}" if dot else f"{name}_aligned")
            labels.append(CLASSES.index(RAFDB_ORDER[value]))
            prefix = name.split("_", 1)[0]
            splits.append(normalize_split(prefix) if prefix.lower() in ("train", "test") else None)
            raw.append(value)
    df = pd.DataFrame(
        {
            "key": keys,
            "label": pd.array(labels, dtype="Int64"),
            "split": splits,
            "alt_key": alts,
            "rafdb_label": raw,
        }
    )
    return LabelTable(df, label_space="basic7", info={"rows": len(keys)})
