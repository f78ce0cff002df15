"""``--record-margins``: the margin of every training row at every epoch, as training saw it
(the data of ``fernoise audit --scorer aum``: Pleiss et al. 2020, "Identifying Mislabeled
Data using the Area Under the Margin Ranking").

The margin of one sample in one step is ``logit[given label] - max over the other classes
of logit``, on the logits the training step computed (``LossOut.logits``, the rows' first
view: the weak view of multi-view methods; for a method that mixes its inputs, e.g. RUL's
mixup, the logits of the mixed image) and always against the GIVEN label (the manifest's,
never a label a method substituted). :class:`fernoise.train.loop.EpochTally` sums the
margins and counts per row (float64, summed across processes under torch.distributed);
:class:`MarginLog` turns each epoch's sums into the epoch's mean margin per row.

Files in the run folder (rank 0, atomically):

- ``margins.npy``: float32, shape ``(epochs done, n_train)``; row ``e - 1`` is epoch ``e``,
  column ``j`` the ``j``-th training row (``Plan.train_pos`` order: the manifest's usable
  training rows, validation rows carved out excluded); NaN where a row was not trained on in
  that epoch (a method that left it out, a stream that skipped it). Rewritten after every
  epoch's checkpoint, and when the run folder is opened (a resumed run: the checkpoint's
  epochs).
- ``margins_ids.json``: the manifest ``id`` of each column, a JSON list of strings.

Resume: the margins of the epochs done live in ``checkpoint.pt`` (``"margins"``: a float32
tensor of the shape above), saved with the weights they belong to; a resumed run restores
them, so its ``margins.npy`` equals an uninterrupted run's.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from fernoise.cache import atomic_write_bytes, atomic_write_json

MARGINS = "margins.npy"
MARGIN_IDS = "margins_ids.json"


def batch_margins(logits, y):
    """float64 ``(N,)``: ``logits[i, y[i]] - max_{c != y[i]} logits[i, c]`` for ``(N, C)``
    logits and int64 ``(N,)`` labels (C >= 2)."""

    z = logits.detach().double()
    given = z.gather(1, y.view(-1, 1)).squeeze(1)
    others = z.scatter(1, y.view(-1, 1), float("-inf"))
    return given - others.amax(dim=1)


class MarginLog:
    """The epochs' mean margins of the training rows ``train_pos`` (positions into the
    per-row sums) and their ``ids``; written to the run folder as ``margins.npy`` and
    ``margins_ids.json``."""

    def __init__(self, train_pos: np.ndarray, ids: list[str]):
        self.train_pos = np.asarray(train_pos, dtype=np.int64)
        self.ids = list(ids)
        self.epochs = np.zeros((0, len(self.train_pos)), dtype=np.float32)

    def end_epoch(self, m_sum, m_cnt) -> None:
        """Append the epoch of the per-row sums ``m_sum`` and counts ``m_cnt`` (float64
        tensors over every row, already summed across processes)."""
        s = m_sum.numpy()[self.train_pos]
        c = m_cnt.numpy()[self.train_pos]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(c > 0, s / np.where(c > 0, c, 1), np.nan)
        self.epochs = np.vstack([self.epochs, mean.astype(np.float32)[None]])

    def state(self):
        """What the checkpoint keeps: the float32 tensor ``(epochs done, n_train)``."""
        import torch

        return torch.from_numpy(self.epochs.copy())

    def restore(self, saved: Any, epoch: int) -> bool:
        """Take the checkpoint's margins of its ``epoch`` epochs; False when they are missing
        or of another shape (the checkpoint is then not this run's)."""
        import torch

        if not isinstance(saved, torch.Tensor) or tuple(saved.shape) != (
            epoch,
            len(self.train_pos),
        ):
            return False
        self.epochs = saved.to(torch.float32).numpy().copy()
        return True

    def files(self, run_dir: Path) -> list[Path]:
        return [run_dir / MARGINS, run_dir / MARGIN_IDS]

    def write(self, run_dir: Path, *, ids: bool = False) -> None:
        """``margins.npy`` (and ``margins_ids.json`` with ``ids``), atomically."""
        buf = io.BytesIO()
        np.save(buf, self.epochs, allow_pickle=False)
        atomic_write_bytes(run_dir / MARGINS, buf.getvalue())
        if ids:
            atomic_write_json(run_dir / MARGIN_IDS, self.ids)
