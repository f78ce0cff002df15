"""Writing torch checkpoints safely, shared by train and pretrain: atomically (a killed run
leaves the old file or none) and with one line for a full disk instead of a traceback."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

from fernoise.cache import atomic_path
from fernoise.errors import FernoiseError

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
"""Write failures that mean "no room": a full disk, an exhausted quota, a file size limit."""
_WRITER_FAILED = ("PytorchStreamWriter", "unexpected pos", "file write failed")


def disk_full_reason(e: BaseException) -> str | None:
    """Why a write failed for lack of room (an OSError with ENOSPC, EDQUOT or EFBIG, or torch's
    stream writer's RuntimeError, which hides the errno), else None."""
    if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
        return {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                errno.EFBIG: "file too large for the file system or the process's file size limit"}[e.errno]
    if isinstance(e, RuntimeError) and any(s in str(e) for s in _WRITER_FAILED):
        return "the write failed (torch's file writer: " + " ".join(str(e).split())[-80:] + "), most likely a full disk"
    return None


def save_torch(obj: Any, path: Path, *, resume: str) -> None:
    """``torch.save(obj)`` to ``path`` atomically: the one place train and pretrain write
    checkpoint.pt, model.pt and backbone.pt. A write that fails for lack of room leaves the old file (or none), removes its
    temporary file and raises one FernoiseError naming ``path`` and what a re-run does
    (``resume``); any other failure propagates."""
    import torch

    try:
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
    except (OSError, RuntimeError) as e:
        why = disk_full_reason(e)
        if why is None:
            raise
        raise FernoiseError(f"disk full writing {path}: {why}; free space on the disk holding {path.parent} "
                            f"and re-run the same command: {resume}") from None
