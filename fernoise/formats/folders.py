"""Labels and splits from the folder names of the image paths (no label file).

Layouts: ``root/<img>`` (unlabelled), ``root/<class>/<img>``, ``root/<split>/<img>``,
``root/<split>/<class>/<img>`` and ``root/<class>/<split>/<img>``. Split folders are
train/val/test and their aliases (valid, validation, test, ...); class folders are the
class names and aliases of :mod:`fernoise.labels`, in any case. Any other folder name is an
error listing the accepted names (never a silent new class). An image with no split folder
goes to ``train``.
"""

from __future__ import annotations

from collections.abc import Sequence

from fernoise.errors import FernoiseError
from fernoise.formats import SPLIT_ALIASES
from fernoise.labels import ALIASES, CLASSES, accepted_names


def from_paths(
    src_paths: Sequence[str], *, labelled: bool = True
) -> tuple[list[int | None], list[str | None]]:
    """``(labels, splits)`` per path (canonical index or None; split or None).

    With ``labelled=False`` (a label file gives the labels) only split folders are read and
    other folder names are ignored.
    """
    labels: list[int | None] = []
    splits: list[str | None] = []
    for s in src_paths:
        dirs = s.split("/")[:-1]
        label = split = None
        for d in dirs:
            key = d.strip().lower()
            if key in SPLIT_ALIASES and split is None:
                split = SPLIT_ALIASES[key]
            elif not labelled:
                continue
            elif key in ALIASES and label is None:
                label = CLASSES.index(ALIASES[key])
            else:
                raise FernoiseError(
                    f"folder {d!r} (in {s}) is neither a class nor a split; class folders must be one of: "
                    f"{accepted_names()}; split folders: train, val, test (or pass --labels FILE --format ...)",
                    flag="RAW",
                )
        labels.append(label)
        splits.append(split)
    return labels, splits
