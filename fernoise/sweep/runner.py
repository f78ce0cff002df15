"""`fernoise sweep`: a grid file -> cells -> corrupt -> train -> eval, resumable, sharded.

The grid file and its cells are :mod:`fernoise.sweep.grid`. :func:`plan` checks everything before
anything runs (the grid, the manifest, the noise and pretrained files, every cell's
TrainConfig) and writes nothing; :func:`run` runs this share's cells.

Each cell runs the existing stages through their caches: ``run_corrupt`` (in this
process, under a file lock so concurrent shards never write one noisy manifest twice at
once), then ``train`` and ``evaluate_run`` in a child process (:mod:`fernoise.sweep.cell`),
one per GPU with ``gpus``. A cell whose run and evaluation are indexed
(:mod:`fernoise.runindex`) is done without starting a child or importing torch.

The manifests (one, a list, or the folds of a split) are :mod:`fernoise.sweep.manifests`.

State: ``<workspace>/sweeps/<name>/<manifest tag>/cells/<cell id>.json`` (keyed by grid and
manifest: :func:`fernoise.sweep.manifests.state_tag`; one file per cell: status, run,
accuracies, reason, shard, gpu, times; written atomically by the process that runs the
cell), ``logs/<cell id>.log`` (the child's stderr) and ``table.csv`` / ``table.md`` (every
cell of the grid, rewritten under a file lock by each process when it ends, from the cell
files, so the last shard to finish writes the complete table). An exception in the sweep's
own worker thread fails that cell (its reason, cell file and log say so) and the others go on;
a table file that cannot be written is a line in :attr:`Sweep.notes`. A cell file that says
``running`` but whose sweep process is gone (killed) is read as ``failed``, ``interrupted``
(:func:`read_cells`). State of fernoise before the manifest tag (``sweeps/<name>/cells/``) is
still read for a cell whose new file does not exist yet (same spec: same manifest).
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fernoise import csvsafe
from fernoise.cache import Workspace, atomic_write_json, atomic_write_text, dict_hash, read_json
from fernoise.errors import FernoiseError
from fernoise.sweep.cell import spawn
from fernoise.sweep.grid import (  # noqa: F401 - the grid API, re-exported for `fernoise.sweep.runner` users
    Cell,
    Grid,
    Noise,
    expand,
    grid_error,
    load_grid,
    method_names,
    parse_shard,
    shard_cells,
)

STATUSES = ("queued", "running", "done", "failed")


def parse_gpus(text: str | None) -> list[str] | None:
    """``"0,1,2,3"`` -> ``["0", "1", "2", "3"]`` (CUDA_VISIBLE_DEVICES values); None -> None."""
    if text is None:
        return None
    gpus = [g.strip() for g in text.split(",") if g.strip()]
    if not gpus or not all(
        re.fullmatch(r"\d+|GPU-[0-9a-fA-F-]+|MIG-[0-9a-fA-F/-]+", g) for g in gpus
    ):
        raise FernoiseError(
            f"expected GPU indices or UUIDs separated by commas (e.g. 0,1,2,3), found {text!r}",
            flag="--gpus",
        )
    if len(set(gpus)) != len(gpus):
        raise FernoiseError(f"a GPU is listed twice in {text!r}", flag="--gpus")
    return gpus


def worker_env(base: dict[str, str], gpu: str | None, workspace: Path) -> dict[str, str]:
    """The environment of one cell's child process: ``CUDA_VISIBLE_DEVICES`` = its GPU (so
    ``cuda`` in the child is that GPU), the workspace, and passive OpenMP waits."""
    env = dict(base)
    env["FERNOISE_WORKSPACE"] = str(workspace)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["PYTHONUNBUFFERED"] = "1"
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


# ----------------------------------------------------------------------------- state
@dataclass
class CellState:
    """What is known about one cell now (one row of the live table and of table.csv)."""

    cell: Cell
    status: str = "queued"
    hit: bool = False
    run: str | None = None
    epoch: int | None = None
    epochs: int | None = None
    batch: int | None = None
    batches: int | None = None
    images_per_s: float | None = None
    top1: float | None = None
    val_selected: float | None = None
    max_last5: tuple[float, float] | None = None
    reason: str | None = None
    gpu: str | None = None
    visible_devices: str | None = None
    pid: int | None = None
    sweep_pid: int | None = None
    shard: str = "1/1"
    started: float | None = None
    finished: float | None = None
    spec: str = ""
    host: str = ""

    def progress(self) -> float:
        """Fraction of training done, from the epoch and batch counters (0 when unknown)."""
        if self.status == "done":
            return 1.0
        if not self.epochs or not self.epoch:
            return 0.0
        within = (self.batch or 0) / self.batches if self.batches else 0.0
        return min(1.0, (self.epoch - 1 + within) / self.epochs)

    def to_json(self) -> dict[str, Any]:
        c = self.cell
        return {
            "id": c.id,
            "index": c.index,
            "method": c.method,
            "noise": c.noise.label(),
            "noise_spec": asdict(c.noise),
            "seed": c.seed,
            "pretrained": c.pretrained,
            "options": dict(c.options),
            "status": self.status,
            "hit": self.hit,
            "run": self.run,
            "epoch": self.epoch,
            "epochs": self.epochs,
            "images_per_s": self.images_per_s,
            "top1": self.top1,
            "val_selected_test_acc": self.val_selected,
            "test_max_last5": list(self.max_last5) if self.max_last5 else None,
            "reason": self.reason,
            "gpu": self.gpu,
            "visible_devices": self.visible_devices,
            "pid": self.pid,
            "sweep_pid": self.sweep_pid,
            "manifest_tag": c.manifest_tag,
            "shard": self.shard,
            "host": self.host,
            "started": self.started,
            "finished": self.finished,
            "spec": self.spec,
        }


@dataclass
class Sweep:
    """A checked sweep, ready to run: the grid, the manifest, all cells and this shard's."""

    grid: Grid
    manifest: Path
    manifest_key: str
    workspace: Workspace
    runs_dir: Path
    cells: list[Cell]
    mine: list[Cell]
    shard: tuple[int, int]
    state_dir: Path
    manifest_id: str = ""
    """Hash of the manifest's path, size, mtime and recorded key (:func:`runindex.manifest_identity`)."""
    states: dict[int, CellState] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    """One line per thing that went wrong outside a cell (e.g. a table file that could not be written)."""
    manifests: list[Path] = field(default_factory=list)
    """Every manifest of the sweep (a cell's is ``manifests[cell.manifest]``); empty: ``[manifest]``."""
    manifest_ids: list[str] = field(default_factory=list)
    legacy_dir: Path | None = None
    """Where fernoise kept this grid's state before it was keyed by manifest (read only)."""

    def manifest_of(self, cell: Cell) -> Path:
        """The clean manifest of ``cell``."""
        return self.manifests[cell.manifest] if self.manifests else self.manifest

    def manifest_id_of(self, cell: Cell) -> str:
        return self.manifest_ids[cell.manifest] if self.manifest_ids else self.manifest_id

    def spec(self, cell: Cell) -> str:
        """What the cell's result depends on; a cell file of another spec is stale (another
        grid of the same name, or the manifest changed since)."""
        cfg = {k: v for k, v in asdict(cell.config).items() if k != "workers"}
        return dict_hash(
            {
                "config": cfg,
                "noise": asdict(cell.noise),
                "manifest": self.manifest_id_of(cell),
                "cam": self.grid.cam,
            }
        )[:16]

    def cell_file(self, cell: Cell) -> Path:
        return self.state_dir / "cells" / f"{cell.id}.json"

    def log_file(self, cell: Cell) -> Path:
        return self.state_dir / "logs" / f"{cell.id}.log"


def _check_manifest(grid: Grid, manifest: Path) -> str:
    from fernoise.manifest import read_meta

    meta = read_meta(manifest)
    import pyarrow.parquet as pq

    names = pq.read_schema(manifest).names
    if "label_clean" in names:
        raise FernoiseError(
            f"{manifest} is already corrupted (it has label_clean); a sweep adds its own noise to the clean "
            "aligned manifest: pass that one",
            flag="MANIFEST",
        )
    if not meta.get("classes"):
        raise FernoiseError(
            f"{manifest} has no class list in its metadata; make it with `fernoise align`",
            flag="MANIFEST",
        )
    for i, n in enumerate(grid.noise):
        if n.kind == "column" and n.column not in names:
            raise grid_error(
                grid.path, f"noise[{i}].column", f"{manifest.name} has no column {n.column!r}"
            )
    from fernoise.cache import file_sha256

    return meta.get("key") or file_sha256(manifest)


def _check_files(grid: Grid, root: Path) -> None:
    from fernoise.corrupt.stage import load_matrix, load_pairs

    for i, n in enumerate(grid.noise):
        where = f"noise[{i}]"
        try:
            if n.pairs is not None:
                load_pairs(_abs(n.pairs, root))
            if n.matrix is not None:
                load_matrix(_abs(n.matrix, root))
        except FernoiseError as e:
            raise grid_error(grid.path, where, e.one_line()) from None
    ws = Workspace(root)
    for p in grid.pretrained:
        if p is None:
            continue
        if p == "latest":
            if "pretrain" not in ws.read()["stages"]:
                raise grid_error(
                    grid.path,
                    "pretrained",
                    f'"latest" but {ws.lock_path} records no pretrain stage; run `fernoise pretrain` first',
                )
        elif not Path(_abs(p, root)).exists():
            raise grid_error(
                grid.path,
                "pretrained",
                f"{_abs(p, root)} does not exist; valid: none, latest, a file or folder",
            )


def _abs(p: str, root: Path) -> str:
    return p if Path(p).is_absolute() else str(root / p)


def _named_manifests(grid: Grid, manifest: str | os.PathLike | None, ws: Workspace) -> list[Path]:
    """The manifests named: ``manifest``, else the grid's, else the workspace's latest
    ``clean`` or ``align`` output (a grid with folds: also ``split``)."""
    if manifest is not None:
        return [Path(manifest)]
    if grid.manifests:
        paths = [Path(_abs(m, ws.root)) for m in grid.manifests]
        for p in paths:
            if not p.exists():
                raise grid_error(
                    grid.path,
                    "manifest",
                    f"{p} does not exist; make it with `fernoise align` or fix the path",
                )
        return paths
    stages = ("split", "clean", "align") if grid.folds is not None else ("clean", "align")
    return [ws.latest(*stages, what="manifest", flag="MANIFEST")]


def _sweep_manifests(
    grid: Grid, manifest: str | os.PathLike | None, ws: Workspace
) -> list[tuple[Path, str]]:
    """``[(manifest, tag)]`` of the sweep (:mod:`fernoise.sweep.manifests`)."""
    from fernoise.manifest import resolve_manifest
    from fernoise.sweep import manifests as mf

    paths = [resolve_manifest(p) for p in _named_manifests(grid, manifest, ws)]
    if grid.folds is not None:
        try:
            return mf.fold_manifests(paths[0], grid.folds, ws)
        except FernoiseError as e:
            raise grid_error(grid.path, "folds", e.one_line()) from None
    if len(paths) == 1:
        return [(paths[0], "")]
    return list(zip(paths, mf.list_tags(paths), strict=True))


def plan(
    grid_path: str | os.PathLike,
    manifest: str | os.PathLike | None = None,
    *,
    workspace: Workspace | None = None,
    shard: tuple[int, int] = (1, 1),
) -> Sweep:
    """Load and check the grid, resolve the manifest(s) (``manifest``, else the grid's, else
    the workspace's latest ``clean`` or ``align`` output; the folds of its split with
    ``folds``), build every cell. Writes nothing."""
    from fernoise.runindex import manifest_identity
    from fernoise.sweep.manifests import state_tag

    ws = workspace or Workspace()
    grid = load_grid(grid_path)
    named = _sweep_manifests(grid, manifest, ws)
    paths = [p for p, _ in named]
    keys = [_check_manifest(grid, p) for p in paths]
    _check_files(grid, ws.root)
    cells = expand(grid, root=ws.root, manifest_tags=[t for _, t in named])
    mine = shard_cells(cells, *shard)
    runs = ws.runs_dir()
    ids = [dict_hash(manifest_identity(p))[:16] for p in paths]
    return Sweep(
        grid=grid,
        manifest=paths[0].resolve(),
        manifest_key=keys[0],
        workspace=ws,
        runs_dir=runs.resolve(),
        cells=cells,
        mine=mine,
        shard=shard,
        state_dir=ws.root / "sweeps" / grid.name / state_tag(paths, grid.folds),
        manifest_id=ids[0],
        manifests=[p.resolve() for p in paths],
        manifest_ids=ids,
        legacy_dir=ws.root / "sweeps" / grid.name,
    )


# ----------------------------------------------------------------------------- file lock
def _file_lock(path: Path):
    """An exclusive fcntl lock on ``<path>.lk`` while inside the block (:func:`cache.file_lock`)."""
    from fernoise.cache import file_lock

    return file_lock(path)


# ----------------------------------------------------------------------------- running
Update = Callable[["Sweep"], None]


def _accuracies(state: CellState, report: dict[str, Any]) -> None:
    hist = report.get("history") or {}
    vs = hist.get("val_selected") or {}
    ml = hist.get("test_max_last5") or {}
    state.top1 = report.get("top1")
    state.val_selected = vs.get("test_acc")
    state.max_last5 = (ml["max"], ml["last"]) if ml.get("max") is not None else None


class _Corrupter:
    """The noisy manifest of each noise setting, made once (under a lock shared by shards)."""

    def __init__(self, sweep: Sweep):
        self.sweep = sweep
        self.done: dict[tuple, Path | FernoiseError] = {}

    def __call__(self, cell: Cell) -> Path:
        n = cell.noise
        if n.kind is None:
            return self.sweep.manifest_of(cell)
        key = (cell.manifest, n, cell.noise_seed())
        if key not in self.done:
            from fernoise.corrupt.stage import run_corrupt

            root = self.sweep.workspace.root
            try:
                with _file_lock(root / ".fernoise" / "sweep-corrupt"):
                    res = run_corrupt(
                        self.sweep.manifest_of(cell),
                        kind=n.kind,
                        rate=n.rate,
                        seed=cell.noise_seed(),
                        pairs_file=_abs(n.pairs, root) if n.pairs else None,
                        matrix_file=_abs(n.matrix, root) if n.matrix else None,
                        column=n.column,
                        workspace=self.sweep.workspace,
                    )
                self.done[key] = res.output
            except FernoiseError as e:
                self.done[key] = e
        out = self.done[key]
        if isinstance(out, FernoiseError):
            raise out
        return out


def check_done(sweep: Sweep, cell: Cell, manifest: Path, state: CellState) -> bool:
    """True (and ``state`` filled in) when the cell's run and evaluation are finished and
    intact, decided from the run index alone (no torch). A hit is not recorded in the
    workspace lock (two lock writes per cell would be most of a re-run's time)."""
    from fernoise import runindex

    try:
        hit = runindex.lookup(manifest, cell.config, runs_dir=sweep.runs_dir)
        report = runindex.lookup_eval(hit.output, cam=sweep.grid.cam) if hit else None
    except OSError:  # unreadable outputs: the child's stages will say what is wrong
        return False
    if hit is None or report is None:
        return False
    state.status, state.hit, state.run = "done", True, str(hit.output)
    state.epochs = state.epoch = (report.get("history") or {}).get("epochs")
    _accuracies(state, report)
    return True


def _write_cell(sweep: Sweep, state: CellState) -> None:
    atomic_write_json(sweep.cell_file(state.cell), state.to_json())


def _stamp_state(sweep: Sweep, state: CellState) -> None:
    import socket

    state.shard = f"{sweep.shard[0]}/{sweep.shard[1]}"
    state.spec = sweep.spec(state.cell)
    state.host = socket.gethostname()
    state.sweep_pid = os.getpid()


def run(
    sweep: Sweep,
    *,
    gpus: Sequence[str] | None = None,
    update: Update | None = None,
    dry_run: bool = False,
    python: str | None = None,
) -> list[CellState]:
    """Run this shard's cells: done ones are hits, the rest run in child processes (one per
    GPU in ``gpus``, else one at a time), a failed cell never stops the others. ``update`` is
    called with the sweep on every change and about twice a second. Returns this shard's
    states; with ``dry_run`` only checks which cells are done (nothing is written)."""
    say = update or _no_update
    sweep.states = {c.index: CellState(c) for c in sweep.mine}
    for st in sweep.states.values():
        _stamp_state(sweep, st)
    pending = _pending(sweep, say, dry_run)
    if dry_run:
        return list(sweep.states.values())
    _run_pending(sweep, pending, gpus, python or sys.executable, say)
    write_table(sweep)
    say(sweep)
    return list(sweep.states.values())


def _no_update(sweep: Sweep) -> None:
    """The ``update`` of a caller that shows nothing."""


def _pending(sweep: Sweep, say: Update, dry_run: bool) -> list[tuple[CellState, Path]]:
    """Make each cell's noisy manifest and mark the cells already done (hits; their cell file
    written unless it already says so) or failed (a noise stage that raised); returns the
    others with their manifests. With ``dry_run`` nothing is made or written and [] comes back."""
    corrupt = _Corrupter(sweep)
    pending: list[tuple[CellState, Path]] = []
    for st in sweep.states.values():
        cell = st.cell
        try:
            if dry_run:
                manifest = _existing_noisy(sweep, cell)
                if manifest is not None:
                    check_done_readonly(sweep, cell, manifest, st)
                continue
            manifest = corrupt(cell)
        except FernoiseError as e:
            st.status, st.reason = "failed", e.one_line()
            _write_cell(sweep, st)
            say(sweep)
            continue
        if check_done(sweep, cell, manifest, st):
            old = read_json(sweep.cell_file(cell))
            same = (
                isinstance(old, dict)
                and old.get("status") == "done"
                and old.get("spec") == st.spec
                and old.get("run") == st.run
            )
            if not same:  # a re-run of a finished sweep writes no cell file (who ran it stays)
                _write_cell(sweep, st)
        else:
            pending.append((st, manifest))
        say(sweep)
    return pending


def _run_pending(
    sweep: Sweep,
    pending: list[tuple[CellState, Path]],
    gpus: Sequence[str] | None,
    python: str,
    say: Update,
) -> None:
    """Run the ``pending`` cells in child processes, one slot per GPU (one slot without
    ``gpus``), calling ``say`` about twice a second; an interrupt kills every child."""
    lock = threading.Lock()
    slot_gpus: list[str | None] = list(gpus) if gpus else [None]
    slots: queue.Queue[str | None] = queue.Queue()
    for g in slot_gpus:
        slots.put(g)
    todo: queue.Queue[tuple[CellState, Path]] = queue.Queue()
    for item in pending:
        todo.put(item)
    children: dict[int, subprocess.Popen] = {}

    def slot_loop() -> None:
        while True:
            try:
                st, manifest = todo.get_nowait()
            except queue.Empty:
                return
            gpu = slots.get()
            try:
                # Another process (an overlapping share, the same sweep started twice) may be
                # running this very run: wait for it, then it is a hit.
                with _file_lock(_run_lock(sweep, st.cell, manifest)):
                    with lock:
                        done = check_done(sweep, st.cell, manifest, st)
                        if done:
                            _write_cell(sweep, st)
                    if not done:
                        _run_child(sweep, st, manifest, gpu, lock, children, python)
            except Exception as e:  # noqa: BLE001 - a crash here fails this cell, never the sweep
                _crashed(sweep, st, e, lock)
            finally:
                slots.put(gpu)

    threads = [threading.Thread(target=slot_loop, daemon=True) for _ in range(len(slot_gpus))]
    for t in threads:
        t.start()
    try:
        while alive := [t for t in threads if t.is_alive()]:
            alive[0].join(timeout=0.5)
            with lock:
                say(sweep)
    except BaseException:
        for proc in list(children.values()):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        raise


def _run_lock(sweep: Sweep, cell: Cell, manifest: Path) -> Path:
    """The lock file of the cell's run: one per requested train configuration (any grid, any
    process), else per cell."""
    from fernoise import runindex

    try:
        request = runindex.train_request(manifest, cell.config, sweep.workspace)
    except (OSError, ValueError, FernoiseError):
        request = None
    if request is None:
        return sweep.cell_file(cell)
    return sweep.runs_dir / ".fernoise" / "locks" / dict_hash(request)[:32]


def _existing_noisy(sweep: Sweep, cell: Cell) -> Path | None:
    """The noisy manifest of the cell if the corrupt stage already wrote it (dry run)."""
    base = sweep.manifest_of(cell)
    if cell.noise.kind is None:
        return base
    from fernoise.corrupt.kinds import CorruptParams
    from fernoise.corrupt.stage import output_name

    n = cell.noise
    if n.kind == "matrix":
        from fernoise.cache import file_sha256

        sha = file_sha256(_abs(str(n.matrix), sweep.workspace.root))
        params = CorruptParams(kind="matrix", seed=cell.noise_seed(), matrix=((1.0,),))
        out = output_name(base, params, matrix_sha256=sha)
    else:
        params = CorruptParams(
            kind=str(n.kind), rate=n.rate, seed=cell.noise_seed(), column=n.column
        )
        out = output_name(base, params)
    return out if out.is_file() else None


def check_done_readonly(sweep: Sweep, cell: Cell, manifest: Path, state: CellState) -> bool:
    """:func:`check_done` that records nothing in the workspace lock (``--dry-run``)."""
    from fernoise import runindex

    hit = runindex.lookup(manifest, cell.config, runs_dir=sweep.runs_dir)
    report = runindex.lookup_eval(hit.output, cam=sweep.grid.cam) if hit else None
    if hit is None or report is None:
        return False
    state.status, state.hit, state.run = "done", True, str(hit.output)
    _accuracies(state, report)
    return True


def _run_child(
    sweep: Sweep,
    st: CellState,
    manifest: Path,
    gpu: str | None,
    lock: threading.Lock,
    children: dict[int, subprocess.Popen],
    python: str,
) -> None:
    """One cell in a child process (:mod:`fernoise.sweep.cell`): JSON events on its stdout,
    applied to ``st`` under ``lock`` (the main thread shows them)."""
    cell = st.cell
    spec = {
        "manifest": str(manifest),
        "config": asdict(cell.config),
        "runs_dir": str(sweep.runs_dir),
        "workspace": str(sweep.workspace.root),
        "cam": sweep.grid.cam,
        "parent": os.getpid(),
    }
    log = sweep.log_file(cell)
    log.parent.mkdir(parents=True, exist_ok=True)
    with lock:
        st.status, st.gpu, st.started, st.reason = "running", gpu, time.time(), None
    env = worker_env(dict(os.environ), gpu, sweep.workspace.root)
    with open(log, "ab") as err:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        err.write(
            f"== {stamp} {st.host} sweep pid {os.getpid()} shard {st.shard} gpu {gpu}: cell {cell.id}\n".encode()
        )
        err.flush()
        final: dict[str, Any] | None = None
        pids: list[int] = []

        def started(proc: subprocess.Popen) -> None:
            pids.append(proc.pid)
            with lock:
                st.pid = proc.pid
                children[proc.pid] = proc
                _write_cell(sweep, st)

        def event(ev: dict[str, Any]) -> None:
            nonlocal final
            with lock:
                final = _apply_event(st, ev) or final

        try:
            rc = spawn(
                spec,
                env=env,
                log=err,
                cwd=sweep.workspace.root,
                on_event=event,
                on_start=started,
                python=python,
            )
        finally:
            with lock:
                for pid in pids:
                    children.pop(pid, None)
    with lock:
        st.finished = time.time()
        if rc == 0 and final is not None and final.get("event") == "done":
            st.status = "done"
        else:
            st.status = "failed"
            if not st.reason:
                st.reason = f"the cell's process exited with code {rc}{_log_tail(log)}; log: {log}"
        _write_cell(sweep, st)


def _crashed(sweep: Sweep, st: CellState, e: Exception, lock: threading.Lock) -> None:
    """Mark a cell whose worker raised (a file it could not write, ...) as failed, with the
    error as its reason, in its cell file and log where they can be written."""
    first = (str(e).strip().splitlines() or [""])[0][:300]
    with lock:
        st.status, st.finished = "failed", time.time()
        st.reason = f"the sweep could not run this cell: {e.__class__.__name__}: {first}"
        for write in (
            lambda: _write_cell(sweep, st),
            lambda: _append_log(sweep.log_file(st.cell), st.reason),
        ):
            with contextlib.suppress(OSError):
                write()


def _append_log(log: Path, text: str | None) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"{text}\n")


def _log_tail(log: Path) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return f" ({lines[-1].strip()[:200]})" if lines else ""


def _apply_event(st: CellState, ev: dict[str, Any]) -> dict[str, Any] | None:
    kind = ev.get("event")
    if kind == "start":
        st.visible_devices = ev.get("cuda_visible_devices")
    elif kind == "epoch_start":
        st.epoch, st.epochs, st.batch, st.batches = (
            ev.get("epoch"),
            ev.get("epochs"),
            0,
            ev.get("batches"),
        )
    elif kind == "batch":
        st.batch, st.batches = ev.get("done"), ev.get("total")
        st.images_per_s = ev.get("images_per_s")
    elif kind == "epoch_end":
        m = ev.get("metrics") or {}
        st.images_per_s = m.get("images_per_s", st.images_per_s)
        st.batch = st.batches
    elif kind == "trained":
        st.run, st.hit = ev.get("run"), bool(ev.get("hit"))
    elif kind == "done":
        st.run = ev.get("run", st.run)
        _accuracies(st, ev.get("eval") or {})
        if st.epochs is None:
            st.epoch = st.epochs = ev.get("epochs")
        return ev
    elif kind == "error":
        st.reason = ev.get("message")
        return ev
    return None


# ----------------------------------------------------------------------------- the table
def eta_seconds(sweep: Sweep, slots: int = 1) -> float | None:
    """Seconds until this shard's cells are done: each running cell's elapsed / progress,
    queued cells at the mean duration of the cells run so far (or of the running ones'
    projections), spread over ``slots`` parallel workers. None before anything is known."""
    now = time.time()
    states = list(sweep.states.values())
    ran = [
        s.finished - s.started
        for s in states
        if s.status == "done" and not s.hit and s.started and s.finished
    ]
    running = [(s, s.started) for s in states if s.status == "running" and s.started]
    projected = []
    remaining = 0.0
    for s, started in running:
        frac = s.progress()
        if frac > 0.02:
            total = (now - started) / frac
            projected.append(total)
            remaining += max(0.0, total - (now - started))
    per_cell = (
        (sum(ran) / len(ran)) if ran else (sum(projected) / len(projected) if projected else None)
    )
    queued = sum(1 for s in states if s.status == "queued")
    if per_cell is None:
        return 0.0 if not queued and not running else None
    return (remaining + queued * per_cell) / max(1, slots)


TABLE_COLUMNS = (
    "index",
    "id",
    "manifest",
    "method",
    "noise",
    "seed",
    "pretrained",
    "options",
    "status",
    "top1",
    "val_selected_test_acc",
    "test_max",
    "test_last5",
    "run",
    "shard",
    "reason",
)


def read_cells(sweep: Sweep) -> list[dict[str, Any]]:
    """Every cell of the grid as its cell file says (``status`` ``queued`` for a cell without a
    file or with a file of another spec), in grid order. A cell without a file in the state
    folder is read from the folder of fernoise before state was keyed by manifest
    (:attr:`Sweep.legacy_dir`) when that file has the cell's spec; a ``running`` cell whose
    sweep process is gone is ``failed`` with an ``interrupted`` reason (:func:`interrupted`)."""
    rows = []
    for cell in sweep.cells:
        spec = sweep.spec(cell)
        data = read_json(sweep.cell_file(cell))
        if data is None and sweep.legacy_dir is not None:
            data = read_json(sweep.legacy_dir / "cells" / f"{cell.id}.json")
        if not isinstance(data, dict) or data.get("spec") != spec:
            st = sweep.states.get(cell.index)
            if (
                st is None or st.status == "queued" or st.spec != spec
            ):  # this process's state when its file
                st = CellState(cell)  # could not be written
                st.spec = spec
            data = st.to_json()
        elif data.get("status") == "running" and (why := interrupted(data)):
            data = {**data, "status": "failed", "reason": why}
        rows.append(data)
    return rows


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process of that id
        return True
    return True


def interrupted(data: dict[str, Any]) -> str | None:
    """Why a cell file that says ``running`` is not running any more (its sweep process, or
    for files without ``sweep_pid`` its child, is gone from this host), or None (alive, or on
    another host: that cannot be told from here)."""
    import socket

    if data.get("host") and data.get("host") != socket.gethostname():
        return None
    pid = data.get("sweep_pid") or data.get("pid")
    if not isinstance(pid, int) or pid <= 0 or _pid_alive(pid):
        return None
    return (
        f"interrupted: its sweep process (pid {pid}) is gone (killed?); "
        "run the sweep again to resume the cell from its last checkpoint"
    )


def table_rows(sweep: Sweep) -> list[dict[str, Any]]:
    out = []
    for d in read_cells(sweep):
        ml = d.get("test_max_last5") or [None, None]
        out.append(
            {
                "index": d["index"],
                "id": d["id"],
                "manifest": d.get("manifest_tag") or "",
                "method": d["method"],
                "noise": d["noise"],
                "seed": d["seed"],
                "pretrained": d.get("pretrained") or "none",
                "options": " ".join(f"{k}={v}" for k, v in (d.get("options") or {}).items()),
                "status": d["status"],
                "top1": d.get("top1"),
                "val_selected_test_acc": d.get("val_selected_test_acc"),
                "test_max": ml[0],
                "test_last5": ml[1],
                "run": d.get("run"),
                "shard": d.get("shard"),
                "reason": d.get("reason") or "",
            }
        )
    return out


def _pct(v: Any) -> str:
    return "" if v is None else f"{100 * float(v):.1f}"


def write_table(sweep: Sweep) -> tuple[Path, Path]:
    """``table.csv`` and ``table.md`` of every cell, from the cell files, under a file lock
    (the last process to finish writes the table every shard's cells are in)."""
    csv_path, md_path = sweep.state_dir / "table.csv", sweep.state_dir / "table.md"
    with _file_lock(sweep.state_dir / "table"):
        rows = table_rows(sweep)
        buf = io.StringIO()
        w = csvsafe.DictWriter(buf, fieldnames=TABLE_COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r[k] is None else r[k]) for k in TABLE_COLUMNS})
        _write_table_file(sweep, csv_path, buf.getvalue())
        several = len(sweep.manifests) > 1
        head = [
            "#",
            *(["manifest"] if several else []),
            "method",
            "noise",
            "seed",
            "pretrained",
            "options",
            "status",
            "top-1 %",
            "val-sel %",
            "max / last-5 %",
            "reason",
        ]
        lines = [
            f"# sweep {sweep.grid.name}",
            "",
            f"grid: `{sweep.grid.path}`  manifest: "
            + ", ".join(f"`{m}`" for m in (sweep.manifests or [sweep.manifest])),
            "",
            "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head),
        ]
        for r in rows:
            ml = (
                f"{_pct(r['test_max'])} / {_pct(r['test_last5'])}"
                if r["test_max"] is not None
                else ""
            )
            cells = [
                str(r["index"] + 1),
                *([r["manifest"]] if several else []),
                r["method"],
                r["noise"],
                str(r["seed"]),
                r["pretrained"],
                r["options"],
                r["status"],
                _pct(r["top1"]),
                _pct(r["val_selected_test_acc"]),
                ml,
                r["reason"].replace("|", "/"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        _write_table_file(sweep, md_path, "\n".join(lines) + "\n")
    return csv_path, md_path


def _write_table_file(sweep: Sweep, path: Path, text: str) -> None:
    """Write one table file; one that cannot be written (a folder in its place, no permission)
    is a note in ``sweep.notes``, never a traceback: the cells' results stay in their files."""
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "a folder is in its place", str(path))
        atomic_write_text(path, text)
    except OSError as e:
        note = (
            f"{path} was not written ({e.strerror or e.__class__.__name__}); the cells' results are in "
            f"{sweep.state_dir / 'cells'}: move it away and re-run the sweep to write the table"
        )
        if note not in sweep.notes:
            sweep.notes.append(note)


def summary(states: Sequence[CellState]) -> dict[str, int]:
    """Counts per status, and ``hits`` (done without running)."""
    out = {s: 0 for s in STATUSES}
    for st in states:
        out[st.status] += 1
    out["hits"] = sum(1 for st in states if st.status == "done" and st.hit)
    return out


def check_gpu_devices(cells: Sequence[Cell], gpus: Sequence[str] | None) -> None:
    """Under ``--gpus`` each child sees one GPU as ``cuda``/``cuda:0``: an explicit
    ``cuda:N`` with N > 0 cannot exist there, so it is a one-line error up front."""
    for c in cells if gpus else ():
        dev = c.config.device
        if dev.startswith("cuda:") and dev != "cuda:0":
            raise FernoiseError(
                f"cell {c.id} asks for {dev}, but with --gpus each cell sees one GPU (cuda:0); "
                'use device = "auto" or "cuda" in the grid',
                flag="--gpus",
            )
