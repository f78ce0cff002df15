"""Writing torch checkpoints safely, shared by train and pretrain: atomically (a killed run
leaves the old file or none), and with a full disk reported as the ``OSError`` it is.

torch's file writer turns a failed write into a ``RuntimeError`` ("unexpected pos") that has
lost the errno; :func:`save_torch` keeps the ``OSError`` the write raised and re-raises it, so
the one rule for writes the destination refused (:func:`fernoise.errors.destination_error`:
a full disk, a quota, a file size limit) says it in one line, as for every other write.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any, cast

from fernoise.cache import atomic_path


class _Writes:
    """The file ``torch.save`` writes to, keeping the ``OSError`` a write raised."""

    def __init__(self, f):
        self.f = f
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def save_torch(obj: Any, path: Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically: the one place train and pretrain write
    checkpoint.pt, model.pt and backbone.pt. A failed write leaves the old file (or none),
    removes its temporary file and raises the write's ``OSError`` naming ``path``."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        out = _Writes(f)
        try:
            # torch.save writes to any object with write and flush (its docs); its annotation says IO
            torch.save(obj, cast(IO[bytes], out))
        except RuntimeError:
            if out.error is None:
                raise
            raise out.error from None
