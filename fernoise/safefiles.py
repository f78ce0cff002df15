"""Reading the files a user or a manifest names without hanging or exhausting memory, and
showing their names when they are not valid UTF-8.

A path under RAW, a photo given to ``predict`` or a crop path in a manifest may name a FIFO
(``open`` blocks for ever), a device such as ``/dev/zero`` (a read never ends) or a huge file.
Only regular files are read, up to a size bound:

- :func:`regular_problem` ``(path, max_bytes) -> reason | None``: ``os.stat`` only (links
  followed, nothing opened), so asking never blocks and never touches a device.
- :func:`open_regular`: opens with ``O_NONBLOCK`` (a FIFO swapped in after the check cannot
  block) and checks the open file again with ``fstat``; raises :class:`UnsafeFile`.
- :func:`read_regular`: the bytes of a regular file of at most ``max_bytes``.

:class:`UnsafeFile` is an ``OSError`` (``errno`` None), so the callers' existing handlers of
unreadable files turn it into a row status or a counted skip; its message is the reason.

:func:`printable` turns a file name with bytes that are not UTF-8 (``os.fsdecode`` keeps them
as lone surrogates, which Parquet, CSV and the terminal refuse) into text with ``\\xff``
escapes; valid names are returned unchanged.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from typing import BinaryIO

# A source photo: Pillow refuses more than 2 x MAX_IMAGE_PIXELS (~179 M) pixels, at most
# 8 bytes each uncompressed, so a bigger file cannot be an image align could decode.
MAX_SOURCE_BYTES = 2 << 30
# An aligned crop (at most 2048 px a side) and any other image a manifest names for training.
MAX_CROP_BYTES = 64 << 20


class UnsafeFile(OSError):
    """A path that is not a regular file, or one over the size bound; the message says which."""


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def _problem(st: os.stat_result, max_bytes: int | None) -> str | None:
    if not stat.S_ISREG(st.st_mode):
        return f"not a regular file: {_kind(st.st_mode)}; only regular files are read"
    if max_bytes is not None and st.st_size > max_bytes:
        return f"file is {st.st_size} bytes, over the {max_bytes} bytes read at most"
    return None


def regular_problem(path: str | os.PathLike, max_bytes: int | None = None) -> str | None:
    """Why ``path`` must not be read (not a regular file, or over ``max_bytes``), or None.

    ``os.stat`` only (links followed): never opens, so never blocks. A missing file or a
    broken link raises the ``OSError`` of ``os.stat``, as opening it would.
    """
    return _problem(os.stat(path), max_bytes)


@contextlib.contextmanager
def open_regular(path: str | os.PathLike, max_bytes: int | None = None) -> Iterator[BinaryIO]:
    """The regular file ``path`` opened for binary reading; :class:`UnsafeFile` otherwise.

    Checked before opening (a device is never opened) and again on the open descriptor
    (a FIFO put in its place in between is opened non-blocking and refused).
    """
    why = regular_problem(path, max_bytes)
    if why is not None:
        raise UnsafeFile(why)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        why = _problem(os.fstat(fd), max_bytes)
        if why is not None:
            raise UnsafeFile(why)
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with fh:
        yield fh


def read_regular(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path``, refused (:class:`UnsafeFile`) over ``max_bytes``
    (also when it grows past them while being read)."""
    with open_regular(path, max_bytes) as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UnsafeFile(f"file grew over the {max_bytes} bytes read at most while being read")
    return data


def printable(name: str | os.PathLike) -> str:
    """``name`` as valid text: bytes that are not UTF-8 become ``\\xNN`` escapes."""
    text = os.fspath(name)
    if isinstance(text, bytes):
        return text.decode("utf-8", "backslashreplace")
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a surrogate that no file name byte gives
            return text.encode("utf-8", "backslashreplace").decode("utf-8")
