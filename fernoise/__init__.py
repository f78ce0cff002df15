"""fernoise: facial expression recognition under noisy labels.

The public Python API is the functions the CLI calls, one per stage, each cached and resumable
exactly as its command is (``docs/api.md``; ``examples/api.py`` runs every stage)::

    import fernoise as fn

    aligned = fn.run_align("raw/", "out/", fn.AlignParams(size=112))          # fernoise align
    folds = fn.run_split(aligned.manifest, fn.SplitParams(folds=5))           # fernoise split
    noisy = fn.run_corrupt(aligned.manifest, kind="sym", rate=0.3)            # fernoise corrupt
    run = fn.run_train(noisy.output, fn.TrainConfig(method="ncctfer"))        # fernoise train
    stage, report = fn.run_eval(run.output)                                   # fernoise eval
    rows = fn.run_predict(["photo.jpg"], run.output)                          # fernoise predict
    print(fn.run_report([run.output]))                                        # fernoise report
    sweep = fn.plan_sweep("grid.toml", aligned.manifest); fn.run_sweep(sweep) # fernoise sweep
    audit = fn.run_audit(noisy.output, fn.AuditParams(folds=5), fn.TrainConfig(method="ce"))
    cleaned = fn.run_clean(audit.dir, fn.CleanParams(action="drop"))          # fernoise clean

Every name is imported on first use (PEP 562), so ``import fernoise`` loads no torch. Errors
are :class:`FernoiseError` with a one-line message, as on the command line. A stage that
takes a ``workspace`` (:class:`Workspace`) records its output in that folder's
``fernoise.lock``; without one it uses ``$FERNOISE_WORKSPACE`` or the current folder.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute)
_API: dict[str, tuple[str, str]] = {
    "run_align": ("fernoise.align.stage", "align_folder"),
    "AlignParams": ("fernoise.align.faces", "AlignParams"),
    "LabelSpec": ("fernoise.align.stage", "LabelSpec"),
    "run_split": ("fernoise.split", "run_split"),
    "SplitParams": ("fernoise.split", "SplitParams"),
    "run_corrupt": ("fernoise.corrupt.stage", "run_corrupt"),
    "run_pretrain": ("fernoise.pretrain.stage", "pretrain"),
    "PretrainConfig": ("fernoise.pretrain.stage", "PretrainConfig"),
    "run_train": ("fernoise.train.stage", "train"),
    "TrainConfig": ("fernoise.train.config", "TrainConfig"),
    "run_eval": ("fernoise.evaluate.stage", "evaluate_run"),
    "EvalParams": ("fernoise.evaluate.stage", "EvalParams"),
    "run_predict": ("fernoise.predict", "predict"),
    "PredictParams": ("fernoise.predict", "PredictParams"),
    "run_report": ("fernoise.report", "report"),
    "collect_report": ("fernoise.report", "collect"),
    "plan_sweep": ("fernoise.sweep.runner", "plan"),
    "run_sweep": ("fernoise.sweep.runner", "run"),
    "run_audit": ("fernoise.audit.stage", "run_audit"),
    "AuditParams": ("fernoise.audit.stage", "AuditParams"),
    "run_clean": ("fernoise.audit.clean", "run_clean"),
    "CleanParams": ("fernoise.audit.clean", "CleanParams"),
    "read_manifest": ("fernoise.manifest", "read_manifest"),
    "Workspace": ("fernoise.cache", "Workspace"),
    "FernoiseError": ("fernoise.errors", "FernoiseError"),
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    try:
        module, attr = _API[name]
    except KeyError:
        raise AttributeError(f"module 'fernoise' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
