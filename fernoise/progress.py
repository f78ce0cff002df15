"""The progress callbacks of the stages, declared once; the CLI draws the bars (the library
stays quiet without a callback).

Two shapes:

- :data:`Counter` ``(done, total)`` for stages that count units: align (images), eval and
  predict (rows or files), the demo's synthesize (images).
- :data:`Progress` one event dict ``{"event": kind, ...}`` for train, pretrain, the decode of
  crops into memory (:mod:`fernoise.data`) and the demo; :data:`EVENTS` lists every kind and
  the fields it carries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Counter = Callable[[int, int], None]
Progress = Callable[[dict[str, Any]], None]

EVENTS: dict[str, tuple[str, ...]] = {
    # train and pretrain
    "header": ("message",),  # train: the run's one-line summary, before the first epoch
    "warning": ("message",),  # something the user should know; the run goes on
    "note": ("message",),  # train: a remark that is not a warning
    "pretrained": (
        "path",
        "kind",
        "sha256",
        "complete",
        "table",
    ),  # train: the --pretrained start loaded
    "resume": ("epoch", "run_dir"),  # a checkpoint was found: epochs up to `epoch` are done
    "epoch_start": ("epoch", "epochs", "batches", "warmup"),
    "batch": ("epoch", "done", "total", "loss", "images_per_s"),  # running mean loss of the epoch
    "epoch_end": ("metrics",),  # the epoch's row of metrics.jsonl
    # fernoise.data: crops decoded into memory
    "decode": ("done", "total"),
    # the demo (fernoise.demo.stage.run_demo)
    "stage": ("stage",),  # a step begins (also "method" for train and eval)
    "step": ("step",),  # a step ended: its StepResult
    "synthesize": ("done", "total"),
    "align": ("done", "total"),
    "train": ("train_event", "method"),  # one of train's events, its kind in train_event
}
"""Every event kind of :data:`Progress` and the fields it always carries (a few carry more:
the demo's ``stage`` a ``method``, its ``train`` the wrapped event's own fields)."""
