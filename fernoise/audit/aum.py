"""The area under the margin (AUM) of each training row of one run (``--scorer aum``):
Pleiss et al. 2020, "Identifying Mislabeled Data using the Area Under the Margin Ranking".

Reads the run folder's ``margins.npy`` (float32 ``(epochs, n_train)``: each training row's
mean margin per epoch, ``logit[given] - max other logit`` on the logits its training steps
computed, NaN where a row was not trained on that epoch) and ``margins_ids.json`` (the
manifest id of each column), both written by ``fernoise train --record-margins``
(:mod:`fernoise.train.margins`). Writes nothing. Numpy only (no torch).

The AUM of a row is the mean of its margins over the epochs it was trained in (NaN for a row
never trained on). A mislabelled row is one the network only memorises late, if at all: its
given label's logit stays below another class's for most of training, so its AUM is low or
negative, while a correctly labelled row's margin grows early.

The issue rule here is ``AUM < 0`` (:data:`THRESHOLD`): on average over training the model
preferred another class to the given one. This is a deliberate simplification of the
paper, which trains a second time with "threshold samples" (a share of rows relabelled to a
fake extra class) and flags rows whose AUM is below the 99th percentile of those samples'
AUM; that needs a second run and a model with one more output, and 0 is the natural margin
where the preference flips.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from fernoise.errors import FernoiseError

MARGINS = "margins.npy"  # the names fernoise.train.margins writes (torch-free here)
MARGIN_IDS = "margins_ids.json"
THRESHOLD = 0.0
"""Rows whose AUM is below this are label issues (see the module docstring)."""
SCALE = 1.0
"""Logit units per step of the quality's logistic: :func:`aum_quality`."""


def aum_scores(run_dir: str | os.PathLike) -> tuple[list[str], np.ndarray, int]:
    """``(ids, aum, epochs_used)`` of the run folder ``run_dir``: the manifest id of each
    training row, its AUM (float64 ``(n_train,)``, NaN for a row never trained on) and the
    number of epochs in ``margins.npy``. Raises FernoiseError when the files are missing,
    unreadable or disagree (the run was not trained with ``--record-margins``)."""
    run = Path(run_dir)
    path, ids_path = run / MARGINS, run / MARGIN_IDS
    if not path.is_file() or not ids_path.is_file():
        raise FernoiseError(
            f"{run} has no {MARGINS} and {MARGIN_IDS}; train the run with --record-margins"
        )
    try:
        margins = np.load(path, allow_pickle=False)
        ids = json.loads(ids_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FernoiseError(
            f"{path} or {ids_path} is unreadable ({e.__class__.__name__})"
        ) from None
    if (
        margins.ndim != 2
        or not isinstance(ids, list)
        or not all(isinstance(i, str) for i in ids)
        or margins.shape[1] != len(ids)
    ):
        raise FernoiseError(
            f"{path} (shape {margins.shape}) does not match the {len(ids) if isinstance(ids, list) else '?'} "
            f"ids of {ids_path.name}; train the run again"
        )
    m = margins.astype(np.float64)
    seen = np.isfinite(m)
    count = seen.sum(axis=0)
    total = np.where(seen, m, 0.0).sum(axis=0)
    aum = np.full(m.shape[1], np.nan)
    np.divide(total, count, out=aum, where=count > 0)
    return ids, aum, int(m.shape[0])


def aum_quality(aum: np.ndarray, scale: float = SCALE) -> np.ndarray:
    """Label quality in [0, 1] from the AUM: the logistic ``1 / (1 + exp(-aum / scale))``,
    monotone increasing, 0.5 at the issue threshold 0 (an AUM of +-``scale`` logits gives
    0.73 / 0.27). NaN (a row never trained on) stays NaN."""
    a = np.asarray(aum, dtype=np.float64)
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-a / scale))


def aum_issues(aum: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """bool per row: ``aum < threshold`` (0 by default: the model on average preferred another
    class). NaN (never trained on) is never an issue."""
    a = np.asarray(aum, dtype=np.float64)
    return np.isfinite(a) & (a < threshold)
