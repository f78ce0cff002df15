"""Where face-api's copy of dlib's weights is read from: the npm tarball or a folder.

Accepted (``--pretrained`` with ``--backbone dlib-resnet29``; nothing is ever downloaded):

- the tarball ``npm pack @vladmandic/face-api@1.7.15`` writes (``vladmandic-face-api-1.7.15.tgz``):
  only its members ``package/model/face_recognition_model-weights_manifest.json`` and
  ``package/model/face_recognition_model.bin`` are read, each a regular file (no link, no
  device) of bounded size, each present once; nothing else is extracted or looked at beyond
  the archive's headers. The two are copied into a private temporary folder and read from
  there like a folder;
- a folder holding the two files, or its ``model/`` subfolder (an unpacked package), or one of
  the two files (its folder is read).

Both files are then checked against their sha256
(:data:`fernoise.backbones.dlib_resnet29.FACEAPI_SHA256`) by the reader. The tarball's own
sha256 is not checked (a repacked tarball holding the same two files is the same weights): the
run key uses the ``.bin``'s sha256 whatever form held it.

Torch-free; every problem is a one-line :class:`FernoiseError` naming ``--pretrained``.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fernoise.errors import FernoiseError

FLAG = "--pretrained"
MANIFEST = "face_recognition_model-weights_manifest.json"
BIN = "face_recognition_model.bin"
TAR_PREFIX = "package/model/"
# The real files are 19,615 and 6,444,032 bytes; anything far larger is not them.
MAX_BYTES = {MANIFEST: 1 << 20, BIN: 64 << 20}
NPM_COMMAND = "npm pack @vladmandic/face-api@1.7.15"


@dataclass(frozen=True)
class FaceapiSource:
    """A located face-api source: ``kind`` faceapi-tarball (``path`` the .tgz) or faceapi-folder
    (``path`` the folder holding the two files)."""

    path: Path
    kind: str


def is_faceapi(spec: str | os.PathLike) -> bool:
    """Whether ``spec`` looks like face-api's weights (a tar archive, one of the two files, or a
    folder with the manifest in it or in its ``model/``); reads no more than a tar header."""
    path = Path(spec)
    if path.is_dir():
        return (path / MANIFEST).is_file() or (path / "model" / MANIFEST).is_file()
    if path.is_file():
        if path.name in (MANIFEST, BIN):
            return True
        try:
            return tarfile.is_tarfile(path)
        except OSError:
            return False
    return False


def locate(spec: str | os.PathLike) -> FaceapiSource | None:
    """The face-api source ``spec`` names, or None when it is something else (a state dict file,
    a run or pretrain folder: the caller's to read). A folder that holds neither face-api's
    manifest nor backbone.pt/model.pt is an error naming what was expected."""
    path = Path(spec)
    if path.is_dir():
        for folder in (path, path / "model"):
            if (folder / MANIFEST).is_file():
                return FaceapiSource(folder.resolve(), "faceapi-folder")
        if (path / "backbone.pt").is_file() or (path / "model.pt").is_file():
            return None
        raise FernoiseError(
            f"{path} is a folder without {MANIFEST} (in it or in its model/ subfolder); pass "
            f"face-api's model folder, or the tarball `{NPM_COMMAND}` writes",
            flag=FLAG,
        )
    if path.is_file() and path.name in (MANIFEST, BIN):  # one of the two files: its folder
        return FaceapiSource(path.parent.resolve(), "faceapi-folder")
    if path.is_file() and is_faceapi(path):
        return FaceapiSource(path.resolve(), "faceapi-tarball")
    return None


@contextmanager
def opened(source: FaceapiSource) -> Iterator[Path]:
    """A folder holding the source's two files: the folder itself, or a private temporary
    folder with the tarball's two members (removed on exit)."""
    if source.kind == "faceapi-folder":
        yield source.path
        return
    with tempfile.TemporaryDirectory(prefix="fernoise-faceapi-") as tmp:
        for name, data in read_members(source.path).items():
            (Path(tmp) / name).write_bytes(data)
        yield Path(tmp)


def read_members(tarball: Path) -> dict[str, bytes]:
    """The bytes of the tarball's two ``package/model/face_recognition_model*`` members.

    Each must be present exactly once, a regular file (a link, a folder or a device is
    refused, never followed) no larger than :data:`MAX_BYTES`; the archive must be readable
    (gzip or plain tar). Only those two members' data is read."""
    wanted = {TAR_PREFIX + name: name for name in (MANIFEST, BIN)}
    found: dict[str, tarfile.TarInfo] = {}
    try:
        with tarfile.open(tarball, "r:*") as tf:
            for member in tf:
                name = wanted.get(member.name.removeprefix("./"))
                if name is None:
                    continue
                if name in found:
                    raise FernoiseError(
                        f"{tarball} holds {member.name} twice; not the npm tarball of face-api",
                        flag=FLAG,
                    )
                if not member.isreg():
                    raise FernoiseError(
                        f"{tarball}: {member.name} is not a regular file (a link or special "
                        "file); refusing to read it",
                        flag=FLAG,
                    )
                if member.size > MAX_BYTES[name]:
                    raise FernoiseError(
                        f"{tarball}: {member.name} is {member.size:,} bytes, more than the "
                        f"{MAX_BYTES[name]:,} face-api's file could be",
                        flag=FLAG,
                    )
                found[name] = member
            missing = [p for p, n in wanted.items() if n not in found]
            if missing:
                raise FernoiseError(
                    f"{tarball} has no {' and no '.join(missing)}; pass the tarball "
                    f"`{NPM_COMMAND}` writes, or face-api's model folder",
                    flag=FLAG,
                )
            out = {}
            for name, member in found.items():
                f = tf.extractfile(member)
                data = f.read(MAX_BYTES[name] + 1) if f is not None else b""
                if len(data) != member.size:
                    raise FernoiseError(
                        f"{tarball}: {member.name} holds {len(data):,} of its {member.size:,} "
                        "bytes: the archive is truncated",
                        flag=FLAG,
                    )
                out[name] = data
            return out
    except (tarfile.TarError, EOFError, OSError) as e:
        raise FernoiseError(
            f"{tarball} could not be read as a tar archive ({e.__class__.__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'no detail'}); pass the tarball "
            f"`{NPM_COMMAND}` writes",
            flag=FLAG,
        ) from None
