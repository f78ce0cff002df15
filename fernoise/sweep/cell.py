"""One sweep cell in a child process: ``python -m fernoise.sweep.cell`` < spec.json.

Reads a JSON spec on stdin (``manifest``: the cell's noisy manifest, ``config``: the
TrainConfig fields, ``runs_dir``, ``workspace``, ``cam``, ``parent``: the sweep's pid; optional
``eval_split``: the split to evaluate, default test), trains
through :func:`fernoise.train.stage.train` (cache hit, resume or fresh) and evaluates through
:func:`fernoise.evaluate.stage.evaluate_run`, both cached, and indexes the evaluation
(:mod:`fernoise.runindex`); :func:`spawn` runs one from a parent. Writes one JSON event per line on stdout: ``start``
(``cuda_visible_devices``), train's progress events (``epoch_start``, ``batch`` at most
twice a second, ``epoch_end``), ``trained``, then ``done`` (``run``, ``eval``: top1,
history) or ``error`` (``message``: one line). Exit code 0 only after ``done``.

The child dies with the sweep: on Linux it asks the kernel for SIGKILL when its parent dies
(``prctl(PR_SET_PDEATHSIG)``), so a ``kill -9`` of the sweep never leaves a trainer writing
into a run that the next sweep resumes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any


def _die_with_parent(parent: int | None) -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent:  # the parent died before prctl
        os._exit(1)


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event, default=str) + "\n")
    sys.stdout.flush()


class _Events:
    """Train progress -> stdout events (batch events throttled to two a second)."""

    def __init__(self) -> None:
        self.last = 0.0

    def __call__(self, ev: dict[str, Any]) -> None:
        kind = ev.get("event")
        if kind == "batch":
            now = time.monotonic()
            if now - self.last < 0.5 and ev.get("done") != ev.get("total"):
                return
            self.last = now
        if kind in ("epoch_start", "batch", "epoch_end", "resume", "warning"):
            _emit(ev)


def spawn(
    spec: dict[str, Any],
    *,
    env: dict[str, str],
    log: Any,
    cwd: str | os.PathLike,
    on_event: Callable[[dict[str, Any]], None],
    on_start: Callable[[subprocess.Popen], None] | None = None,
    python: str | None = None,
) -> int:
    """Run one cell in a child (``python -m fernoise.sweep.cell``): ``spec`` on its stdin, its
    stderr into ``log`` (an open binary file), each JSON event of its stdout to ``on_event``,
    ``on_start(proc)`` once it runs. Returns the exit code. When the caller cannot follow the
    child any more (an exception, a KeyboardInterrupt), the child is killed before this raises."""
    proc = subprocess.Popen(
        [python or sys.executable, "-m", "fernoise.sweep.cell"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        env=env,
        cwd=cwd,
    )
    try:
        if on_start is not None:
            on_start(proc)
        assert proc.stdin is not None and proc.stdout is not None
        with contextlib.suppress(BrokenPipeError):  # died at once: its exit code says so
            proc.stdin.write(json.dumps(spec, default=str).encode())
            proc.stdin.close()
        for raw in io.TextIOWrapper(proc.stdout, encoding="utf-8", errors="replace"):
            try:
                ev = json.loads(raw)
            except ValueError:
                continue
            if isinstance(ev, dict):
                on_event(ev)
        return proc.wait()
    except BaseException:  # the caller cannot follow this child any more: it must not live on
        with contextlib.suppress(OSError):
            proc.kill()
        proc.wait()
        raise


def config_fields(config: dict[str, Any]) -> dict[str, Any]:
    """TrainConfig keyword arguments from ``asdict(cfg)``: a method's ``method_params`` dict
    becomes its ``Params`` again (through the ``fernoise.methods`` registry)."""
    config = dict(config)
    if isinstance(config.get("method_params"), dict):
        from fernoise import methods

        config["method_params"] = methods.get(config["method"]).Params(**config["method_params"])
    return config


def main() -> int:
    spec = json.loads(sys.stdin.read())
    _die_with_parent(spec.get("parent"))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _emit(
        {
            "event": "start",
            "pid": os.getpid(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        }
    )
    from fernoise.errors import FernoiseError

    try:
        from fernoise import runindex
        from fernoise.cache import Workspace
        from fernoise.evaluate.stage import EvalParams, evaluate_run
        from fernoise.train.stage import TrainConfig, train

        ws = Workspace(spec["workspace"])
        cfg = TrainConfig(**config_fields(spec["config"]))
        res = train(
            spec["manifest"], cfg, runs_dir=spec["runs_dir"], workspace=ws, progress=_Events()
        )
        _emit({"event": "trained", "run": str(res.output), "hit": res.hit, "key": res.key})
        cam = int(spec.get("cam", 0))
        split = spec.get("eval_split", "test")
        out_dir = res.output  # the run's own test manifest: its evaluation lives in the run
        report = (
            runindex.lookup_eval(res.output, cam=cam, workspace=ws) if split == "test" else None
        )
        if split != "test":  # another split (the audit's aum run): cached, not indexed
            ev_stage, report = evaluate_run(
                res.output, EvalParams(cam=cam, device=cfg.device, split=split), workspace=ws
            )
            out_dir = ev_stage.output.parent
        elif report is None:
            before = runindex.eval_inputs(res.output)
            stage, report = evaluate_run(
                res.output, EvalParams(cam=cam, device=cfg.device), workspace=ws
            )
            runindex.record_eval(res.output, stage.key, cam=cam, inputs_before=before)
        hist = report.get("history") or {}
        _emit(
            {
                "event": "done",
                "run": str(res.output),
                "predictions": str(
                    out_dir / str(report.get("predictions") or "predictions.parquet")
                ),
                "epochs": hist.get("epochs"),
                "eval": {
                    "top1": report.get("top1"),
                    "history": {k: hist.get(k) for k in ("val_selected", "test_max_last5")},
                },
            }
        )
        return 0
    except FernoiseError as e:
        _emit({"event": "error", "message": e.one_line()})
        return 1
    except Exception as e:  # noqa: BLE001 - any failure of one cell is reported, the sweep goes on
        import traceback

        traceback.print_exc()  # into the cell's log
        first = (str(e).strip().splitlines() or [""])[0][:300]
        _emit({"event": "error", "message": f"{e.__class__.__name__}: {first}"})
        return 1


if __name__ == "__main__":
    sys.exit(main())
