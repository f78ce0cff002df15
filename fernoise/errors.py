"""The one exception type the CLI turns into a one-line message and a non-zero exit, and the
shared checks and translations that produce it.

- :class:`FernoiseError`: what was expected, what was found, what to do (``flag`` names the
  CLI option at fault).
- :func:`require_file` / :func:`require_folder`: a path given for a file that is a folder (or
  the other way round) is said as such, never as "does not exist".
- :func:`destination_error`: an ``OSError`` of a *write* that the user must fix (no
  permission, read-only file system, full disk, quota) -> a :class:`FernoiseError` naming the
  path; None for any other error. ``fernoise.cli.common.handle_errors`` applies it to every
  command.
"""

from __future__ import annotations

import errno
import os

# Write failures that are the destination's fault, not a bug: the user frees space or picks
# another folder. Stages re-raise these instead of recording a per-row error.
DESTINATION_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
)
NO_ROOM = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the file system or the process's file size limit",
}


class FernoiseError(Exception):
    """A user-facing error: one line saying what was expected, what was found, what to do.

    ``flag`` names the CLI option at fault (e.g. ``--rate``) when there is one; the CLI
    prefixes the message with it.
    """

    def __init__(self, message: str, *, flag: str | None = None):
        self.flag = flag
        super().__init__(message)

    def one_line(self) -> str:
        text = " ".join(str(self).split())
        if self.flag and not text.startswith(self.flag):
            text = f"{self.flag}: {text}"
        return text


def require_file(path: str | os.PathLike, what: str = "file", *, flag: str | None = None) -> None:
    """Raise unless ``path`` is an existing file (or a link to one).

    The message says which of three it is: missing (``... does not exist``), a folder
    (``... is a folder, expected a file``) or something else (a socket, a device).
    ``what`` names the file for the user (``"label file"``, ``"noise matrix"``).
    """
    p = os.fspath(path)
    if os.path.isfile(p):
        return
    if os.path.isdir(p):
        raise FernoiseError(
            f"{what} {p} is a folder, expected a file; give the file inside it", flag=flag
        )
    if os.path.islink(p):
        raise FernoiseError(f"{what} {p} is a broken symbolic link; expected a file", flag=flag)
    if os.path.exists(p):
        raise FernoiseError(f"{what} {p} is not a regular file; expected a file", flag=flag)
    raise FernoiseError(f"{what} {p} does not exist", flag=flag)


def require_folder(
    path: str | os.PathLike,
    what: str = "folder",
    *,
    flag: str | None = None,
    may_be_missing: bool = False,
) -> None:
    """Raise unless ``path`` is a folder (or, with ``may_be_missing``, does not exist yet)."""
    p = os.fspath(path)
    if os.path.isdir(p):
        return
    if os.path.exists(p) or os.path.islink(p):
        raise FernoiseError(
            f"{what} {p} is a file, expected a folder; remove it or choose another path", flag=flag
        )
    if not may_be_missing:
        raise FernoiseError(f"{what} {p} does not exist", flag=flag)


def destination_error(e: BaseException) -> FernoiseError | None:
    """A one-line error for a write that failed because of its destination, else None.

    Covers no permission (EACCES, EPERM), a read-only file system (EROFS), a full disk
    (ENOSPC), an exhausted quota (EDQUOT) and a file size limit (EFBIG). The path is ``e.filename`` (the atomic writers
    in :mod:`fernoise.cache` fill it in when the OS does not).
    """
    if not isinstance(e, OSError) or e.errno not in DESTINATION_ERRNOS:
        return None
    if e.filename is not None:
        path = os.fspath(e.filename)
        where = os.path.dirname(path) or "."
    else:
        path, where = "a file", "the output folder"
    again = "then re-run the same command (finished work is kept and reused)"
    if e.errno in NO_ROOM:
        return FernoiseError(
            f"could not write {path}: {NO_ROOM[e.errno]}; free space on the disk holding {where} "
            f"(or choose another folder), {again}"
        )
    if e.errno == errno.EROFS:
        return FernoiseError(
            f"could not write {path}: read-only file system; choose a folder on a writable "
            f"disk, {again}"
        )
    return FernoiseError(
        f"{path}: permission denied; make {where} writable (and its files readable) "
        f"or choose another folder, {again}"
    )
