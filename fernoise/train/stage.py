"""`fernoise train`: the one training loop; every method is a plugin (``fernoise.methods``).

Reads a manifest (rows with a crop, status ok/whole): ``split == train`` rows with a label
are trained on, ``val`` rows validate (or a seeded stratified ``val_fraction`` of train when
the manifest has none), ``test`` rows test. Writes ``runs/<key[:16]>/`` (README, "Train"):
``config.json``, ``metrics.jsonl`` (one line per epoch), ``checkpoint.pt`` (atomically, every
epoch; a re-run resumes from it; removed when the run finishes unless ``keep_checkpoint``),
``model.pt`` (final weights), ``val_ids.json`` when validation rows were carved out of train,
with ``--record-margins`` ``margins.npy`` and ``margins_ids.json`` (every training row's
margin per epoch: :mod:`fernoise.train.margins`), and the stage stamp.

Trust: the checkpoint holds only tensors, numbers, strings, lists and dicts and is
read with ``torch.load(weights_only=True)``; an unreadable, truncated or foreign one is
treated as absent (one warning, the run starts over). The key's manifest input is the content
digest of the columns train reads (:data:`READS`), so an edited manifest never hits an old run.
Crop paths resolve against the manifest's folder; crops outside it are allowed but reported,
and crops that cannot be decoded are skipped and counted (:mod:`fernoise.data`).

A run that skipped rows is keyed on them too (:func:`key_inputs`: the
digest of their ids), so once ``fernoise align`` has repaired them the same command trains
again; a fully usable run keeps the key it always had. A NaN or inf start (``--pretrained``)
is refused before training; a non-finite loss stops the run with one line naming the epoch and
step, and nothing is written as finished (no model.pt, no stamp, no index entry; the
checkpoint of the epochs before stays). A full disk (ENOSPC, EDQUOT, EFBIG) while writing the
image cache, ``checkpoint.pt`` or ``model.pt`` raises the write's ``OSError`` naming the file
(``fernoise.checkpoint.save_torch`` keeps it where torch's writer hides it), which the CLI says
in one line (:func:`fernoise.errors.destination_error`); the temporary file is removed and the
re-run resumes from the last checkpoint.

Read :func:`fernoise.train.loop.fit` for the loop (it names no method) and
:func:`fernoise.train.plan.plan` for what is checked before anything is written. The method (``--method``, its flags, its
heads, views, loss, per-sample state and optimiser defaults) is declared in its module of
``fernoise/methods/`` (the API: ``fernoise/methods/base.py``; what each computes:
docs/methods.md). Choices where the papers are silent (docs/methods.md): warm-up (plain CE of
the main head on every sample) applies to every method for its first ``warmup`` epochs; no
learning-rate schedule unless the method's defaults or ``lr_decay`` (per-epoch exponential)
say so.
"""

from __future__ import annotations

import os
import time

from fernoise import runindex
from fernoise.cache import (
    StageResult,
    Workspace,
    run_stage,
)
from fernoise.progress import Progress
from fernoise.train.config import (
    VERSION,
    TrainConfig,
)
from fernoise.train.loop import _images, fit
from fernoise.train.plan import is_cached, key_inputs, other_rows, plan


# ----------------------------------------------------------------------------- the stage
def train(
    manifest_path: str | os.PathLike,
    cfg: TrainConfig,
    *,
    runs_dir: str | os.PathLike | None = None,
    workspace: Workspace | None = None,
    progress: Progress | None = None,
    force: bool = False,
) -> StageResult:
    """Train (or find in the cache, or resume) the run of ``cfg`` on the manifest.

    Returns a StageResult whose ``output`` is the run folder. Under torch.distributed every
    rank calls this; rank 0 writes. ``cfg.devices > 1`` spawns that many local processes.
    A finished run of the same *requested* configuration is answered from the run index
    (:mod:`fernoise.runindex`, no torch import: sweep re-runs); a run trained here is indexed.
    """
    if not force:
        hit = runindex.lookup(manifest_path, cfg, runs_dir=runs_dir, workspace=workspace)
        if hit is not None:
            return hit
    result = _train(
        manifest_path, cfg, runs_dir=runs_dir, workspace=workspace, progress=progress, force=force
    )
    if os.environ.get("RANK", "0") == "0":  # rank 0 only under torch.distributed
        runindex.record(manifest_path, cfg, result, runs_dir=runs_dir, workspace=workspace)
    return result


def _train(manifest_path, cfg: TrainConfig, *, runs_dir, workspace, progress, force) -> StageResult:
    """:func:`train` without the run index: plan, then train in this process or spawn ``cfg.devices``."""
    from fernoise import distributed

    p = plan(manifest_path, cfg, runs_dir=runs_dir, workspace=workspace)
    env = distributed.from_env()
    if cfg.devices > 1 and not env.enabled:
        t0 = time.perf_counter()
        hit = not force and is_cached(p)
        if not hit:  # the usable rows decide the key: decode (or map) the crops here once
            _images(p, distributed.Dist(), progress or (lambda event: None))
            hit = not force and is_cached(p)
        if not hit:
            ws_root = str(workspace.root) if workspace is not None else None
            distributed.spawn(
                cfg.devices, _train_rank, manifest_path, cfg, runs_dir, force, ws_root
            )
        if workspace is not None:
            workspace.record("train", key=p.key, output=p.run_dir, params=p.key_params)
        return StageResult("train", p.key, p.run_dir, hit, time.perf_counter() - t0)
    return _train_rank(
        manifest_path, cfg, runs_dir, force, workspace=workspace, progress=progress, p=p
    )


def _train_rank(
    manifest_path, cfg, runs_dir, force, ws_root=None, *, workspace=None, progress=None, p=None
) -> StageResult:
    from fernoise import distributed

    p = p or plan(
        manifest_path,
        cfg,
        runs_dir=runs_dir,
        workspace=Workspace(ws_root) if ws_root else workspace,
    )
    env = distributed.from_env()
    distributed.init(env, p.device.split(":")[0])
    try:
        t0 = time.perf_counter()
        hit = distributed.broadcast(not force and is_cached(p), env)
        images = None
        if (
            not hit
        ):  # which rows are usable is part of the key (key_inputs): decode, then look again
            images = _images(
                p, env, progress if (progress and env.is_main) else (lambda event: None)
            )
            if p.config.get("skipped_crops"):
                hit = distributed.broadcast(not force and is_cached(p), env)
        fresh = force or other_rows(p)  # never resume another row set's checkpoint
        if hit:
            result = StageResult("train", p.key, p.run_dir, True, time.perf_counter() - t0)
        elif env.is_main:
            result = run_stage(
                stage="train",
                version=VERSION,
                params=p.key_params,
                inputs=key_inputs(p),
                output=p.run_dir / "model.pt",
                build=lambda key: fit(p, env, progress=progress, fresh=fresh, images=images),
                force=True,
            )
            result = StageResult("train", p.key, p.run_dir, False, result.seconds)
        else:
            fit(p, env, progress=None, fresh=fresh, images=images)
            result = StageResult("train", p.key, p.run_dir, False, time.perf_counter() - t0)
        if env.is_main and workspace is not None:
            workspace.record("train", key=p.key, output=p.run_dir, params=p.key_params)
        distributed.barrier(env)
        return result
    finally:
        distributed.shutdown()
