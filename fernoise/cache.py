"""Stage keys, content hashes, atomic writes, output stamps and the workspace lock file.

Every stage goes through :func:`run_stage`: it computes the stage key (sha256 of canonical
JSON of the stage name, version, output-changing parameters and input hashes), checks the
stamp that records what the stage wrote last time and the sha256 of each output, and either
reports a cache hit or runs the stage and stamps its outputs. An output changed or deleted
behind the tool's back fails the stamp check and is rebuilt, never trusted.

The workspace lock (``fernoise.lock`` in the working directory, or ``$FERNOISE_WORKSPACE``)
records the latest output of each stage, so ``fernoise corrupt`` with no manifest argument
takes what ``fernoise align`` wrote last; it is updated under :func:`file_lock` (an exclusive
``fcntl.flock`` on ``fernoise.lock.lk``), so concurrent commands never lose an entry.

Atomic writes name their temporary ``.<name>.<host>-<pid>.<random>.tmp``;
:func:`clean_stale_tmp` removes those of dead writers (a kill, a full disk) on the next run,
only in the folders a stage names as its own and never any other ``*.tmp``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fernoise.errors import FernoiseError

LOCK_NAME = "fernoise.lock"
RUNS_NAME = "runs"  # the workspace's folder of run folders (Workspace.runs_dir)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; outputs get the permissions a plain open() would give them.
FILE_MODE = 0o666 & ~_current_umask()
STAMP_DIR = ".fernoise"
TMP_SUFFIX = ".tmp"
# Temporary files are named ``.<name>.<host tag>-<pid>.<random>.tmp``, so a later run can tell
# a leftover of a dead process (removed) from a live writer's file (kept).
HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)\.[a-z0-9_]+\.tmp$")
_OLD_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[a-z0-9_]+\.tmp$")  # before the host tag
STALE_TMP_SECONDS = 15 * 60


# ----------------------------------------------------------------------------- hashing
def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal objects give equal bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def dict_hash(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def stage_key(
    stage: str, version: int, params: Mapping[str, Any], inputs: Mapping[str, Any]
) -> str:
    """sha256 of the stage name and version, output-changing parameters and input hashes/keys."""
    return dict_hash(
        {"stage": stage, "version": version, "params": dict(params), "inputs": dict(inputs)}
    )


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed over ``path``.

    A process killed inside the block leaves the old file (or none), never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.{HOST_TAG}-{os.getpid()}.", suffix=TMP_SUFFIX, dir=path.parent
        )
    except OSError as e:
        e.filename = str(path)  # name the file the user asked for, not the random temporary
        raise
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, FILE_MODE)
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        if isinstance(e, OSError) and (e.filename is None or str(e.filename) == str(tmp_path)):
            e.filename = str(path)  # a full disk raises from write() with no file name
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_tmp(
    folder: str | os.PathLike[str],
    *,
    max_age: float = STALE_TMP_SECONDS,
    recursive: bool = False,
    target: re.Pattern[str] | None = None,
) -> int:
    """Remove the temporary files that killed or failed writers left in ``folder``.

    Only files named as :func:`atomic_path` names them (``.<name>.<host>-<pid>.<random>.tmp``,
    or the older ``.<name>.<pid>.<random>.tmp``) are candidates, never any other ``*.tmp``;
    with ``target`` only those whose ``<name>`` (the file being written) it fully matches.
    One goes when this host's process that wrote it is gone, or when it is older than
    ``max_age`` seconds (other hosts, older names). ``recursive`` walks sub-folders (links
    not followed): callers pass only folders that are their own (a stage's ``faces/``,
    ``.fernoise/``), never a user's folder. Returns how many files were removed.
    """
    removed = 0
    now = time.time()
    if os.path.islink(folder):
        return 0
    walk: Iterator[tuple[str, list[str]]]
    if recursive:
        walk = ((d, f) for d, _dirs, f in os.walk(folder))
    else:
        try:
            walk = iter(
                [
                    (
                        os.fspath(folder),
                        [e.name for e in os.scandir(folder) if not e.is_dir(follow_symlinks=False)],
                    )
                ]
            )
        except OSError:
            return 0
    for dirpath, filenames in walk:
        for name in filenames:
            m = _TMP_RE.match(name) or _OLD_TMP_RE.match(name)
            if m is None or (target is not None and not target.fullmatch(m["name"])):
                continue
            p = os.path.join(dirpath, name)
            host = m.groupdict().get("host")
            try:
                stale = (
                    host == HOST_TAG
                    and int(m["pid"]) != os.getpid()
                    and not _pid_alive(int(m["pid"]))
                ) or now - os.lstat(p).st_mtime > max_age
                if stale:
                    os.unlink(p)
                    removed += 1
            except OSError:
                continue
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, sort_keys=True, indent=2, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any | None:
    """The parsed JSON at ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------- stamps
def stamp_path(output: str | os.PathLike) -> Path:
    """Where the stamp of a stage whose main output is ``output`` lives."""
    output = Path(output)
    return output.parent / STAMP_DIR / f"{output.name}.stamp.json"


def outputs_intact(stamp: Mapping[str, Any] | None, key: str, base: str | os.PathLike) -> bool:
    """True when ``stamp`` is for ``key`` and every output it lists exists with its sha256.

    Output paths in a stamp are relative to ``base`` (the main output's folder), so a moved
    folder keeps its cache.
    """
    if not stamp or stamp.get("key") != key:
        return False
    for path, digest in stamp.get("outputs", {}).items():
        p = Path(base) / path
        if not p.is_file():
            return False
        if file_sha256(p) != digest:
            return False
    return True


def write_stamp(output: str | os.PathLike, key: str, outputs: list[Path], **extra: Any) -> None:
    base = Path(output).resolve().parent
    stamp = {
        "key": key,
        "outputs": {os.path.relpath(Path(p).resolve(), base): file_sha256(p) for p in outputs},
        **extra,
    }
    atomic_write_json(stamp_path(output), stamp)


@dataclass
class StageResult:
    """What :func:`run_stage` did: the key, whether it was a cache hit, and the main output."""

    stage: str
    key: str
    output: Path
    hit: bool
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


def run_stage(
    *,
    stage: str,
    version: int,
    params: Mapping[str, Any],
    inputs: Mapping[str, Any],
    output: str | os.PathLike,
    build: Callable[[str], list[Path] | None],
    workspace: Workspace | None = None,
    force: bool = False,
) -> StageResult:
    """Run ``build(key)`` unless the stamped outputs of the same key are intact.

    ``build`` writes its outputs atomically and returns every path it wrote (the main
    ``output`` first or anywhere among them); those are hashed into the stamp. The workspace
    lock, when given, records ``output`` as the latest of ``stage``.
    """
    t0 = time.perf_counter()
    output = Path(output)
    key = stage_key(stage, version, params, inputs)
    hit = not force and outputs_intact(read_json(stamp_path(output)), key, output.resolve().parent)
    if not hit:
        written = build(key) or [output]
        if output not in [Path(p) for p in written]:
            written = [output, *written]
        write_stamp(output, key, [Path(p) for p in written], stage=stage, params=dict(params))
    if workspace is not None:
        workspace.record(stage, key=key, output=output, params=params)
    return StageResult(stage, key, output, hit, time.perf_counter() - t0)


# ----------------------------------------------------------------------------- file locks
@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on the side file ``<path>.lk`` while inside the block.

    For read-modify-write of a shared file by several processes (``fernoise.lock``, sweep
    tables): the lock is on a separate, never-replaced file, so the atomic rename of ``path``
    itself cannot make two processes lock different inodes. Blocks until the lock is free;
    released when the block ends or the process dies.
    """
    side = Path(f"{os.fspath(path)}.lk")
    side.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(side, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


# ----------------------------------------------------------------------------- workspace
LATEST_NOTICE: Callable[[str, Path, Path], None] | None = None
"""Called with ``(stage, output, lock file)`` whenever :meth:`Workspace.latest` takes an input
from the lock; the CLI sets it so that every command says what it took (None: silent)."""


class Workspace:
    """The lock file naming the latest output of each stage (in the spirit of dvc.lock)."""

    ORDER = ("align", "corrupt", "train", "eval")

    def __init__(self, root: str | os.PathLike | None = None):
        root = root or os.environ.get("FERNOISE_WORKSPACE") or os.getcwd()
        self.root = Path(root).resolve()
        self.lock_path = self.root / LOCK_NAME

    def runs_dir(self, runs_dir: str | os.PathLike | None = None) -> Path:
        """Where runs live: ``runs_dir`` (``--runs-dir``) when given, else ``<workspace>/runs``.

        The one place that says so: train writes there, and sweep, report and the run index
        look there. Not resolved (callers that compare paths resolve it)."""
        return Path(runs_dir) if runs_dir else self.root / RUNS_NAME

    def read(self) -> dict[str, Any]:
        data = read_json(self.lock_path)
        if not isinstance(data, dict):
            return {"version": 1, "stages": {}}
        data.setdefault("stages", {})
        return data

    def locked(self):
        """Context manager: an exclusive file lock on ``fernoise.lock`` (see :func:`file_lock`)."""
        return file_lock(self.lock_path)

    def record(
        self, stage: str, *, key: str, output: str | os.PathLike, params: Mapping[str, Any]
    ) -> None:
        """Set ``stage``'s entry; read-modify-write under :meth:`locked`, so concurrent
        commands never lose each other's entries."""
        with self.locked():
            self._record(stage, key=key, output=output, params=params)

    def _record(
        self, stage: str, *, key: str, output: str | os.PathLike, params: Mapping[str, Any]
    ) -> None:
        data = self.read()
        out = Path(output).resolve()
        try:
            shown = str(out.relative_to(self.root))
        except ValueError:
            shown = str(out)
        seq = 1 + max((int(e.get("seq", 0)) for e in data["stages"].values()), default=0)
        data["stages"][stage] = {
            "seq": seq,
            "key": key,
            "output": shown,
            "params": dict(params),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_json(self.lock_path, data)

    def latest(self, *stages: str, what: str = "input", flag: str | None = None) -> Path:
        """The most recently recorded existing output among ``stages``, or a clear error.

        ``latest("corrupt", "align")`` after align -> corrupt gives the corrupted manifest;
        after a later align of another folder it gives that newer aligned manifest, never
        a stale derivative of older data. Ties (old lock files without ``seq``) go to the
        first stage named.
        """
        recorded = self.read()["stages"]
        found: list[tuple[int, int, Path]] = []
        for order, stage in enumerate(stages):
            entry = recorded.get(stage)
            if entry:
                path = Path(entry["output"])
                path = path if path.is_absolute() else self.root / path
                if path.exists():
                    found.append((int(entry.get("seq", 0)), -order, path))
        if found:
            _, order, path = max(found, key=lambda t: (t[0], t[1]))
            if LATEST_NOTICE is not None:
                LATEST_NOTICE(stages[-order], path, self.lock_path)
            return path
        names = " or ".join(f"`fernoise {s}`" for s in stages)
        raise FernoiseError(
            f"no {what} given and {self.lock_path} records none; pass one, or run {names} first",
            flag=flag,
        )
