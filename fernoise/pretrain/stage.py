"""`fernoise pretrain`: self-supervised training of a backbone on a manifest's crops (ResNet-18 by
default; ``--backbone`` any of ``fernoise.backbones``, its card's input normalisation).

Reads a manifest's usable crops (status ok/whole, a ``path``) of the chosen splits (``train``
by default; never ``test`` unless named). **It never reads a label**: label noise cannot reach
the backbone. The only labels read are those of the probe split (``val`` by default) for a
leave-one-out k-NN accuracy every ``probe_every`` epochs, which trains nothing.

Methods (fernoise/pretrain/ssl.py holds the pieces):
- ``simclr`` (Chen et al. 2020): two views per image, projector 512-512-128, NT-Xent at
  temperature 0.5.
- ``byol`` (Grill et al. 2020): online backbone + projector 512-1024-256 + predictor
  256-1024-256; a target backbone + projector updated as an EMA with BYOL's cosine momentum
  schedule from 0.996 to 1 over all steps; the symmetric negative-cosine loss.
Optimiser: Adam (lr 1e-3, weight decay 1e-6) with a cosine learning-rate decay to 0 over all
epochs (LARS, the papers' choice, is for batches of thousands).

Writes ``<workspace>/pretrain/<key[:16]>/``: ``config.json``, ``metrics.jsonl`` (per epoch:
loss, images/s, lr, momentum, and the k-NN probe accuracy when measured), ``checkpoint.pt``
(every epoch, atomically; the safe ``weights_only=True`` format; removed at the end unless
``keep_checkpoint``), and ``backbone.pt``: a plain state dict with the backbone's key
names (torchvision's ResNet-18 names, no ``fc``, by default), readable with ``torch.load(..., weights_only=True)``. Keyed by the manifest
key and every result-changing parameter; a re-run is a cache hit; after a kill it resumes
from the last finished epoch and, on the CPU with the same seed, ends with the same weights. A
full disk while writing ``checkpoint.pt`` or ``backbone.pt`` is one line
(:func:`fernoise.checkpoint.save_torch`, as in train).
The workspace lock records stage ``pretrain``, so ``fernoise train --pretrained latest``
finds it.

Distributed (``torchrun`` or ``--devices N``, the same plumbing as `fernoise train`: NCCL on
CUDA, gloo on the CPU): every rank takes ``batch_size`` images of each global batch of
``batch_size * N``, the gradients are averaged by DistributedDataParallel, and SimCLR's
NT-Xent is computed over the whole global batch (the projections are gathered with autograd,
so every image has the 2 N batch_size - 2 negatives of the global batch and the gradient is
exactly that of the global loss); BYOL's loss is per image, so the average over ranks is its
global mean. BatchNorm statistics are per rank (as in BYOL's and SimCLR's per-device BN
without SyncBN). Rank 0 alone writes files and runs the probe. The world size is part of the
key (a run on N processes is not the run on one).
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fernoise import __version__
from fernoise.cache import (
    StageResult,
    Workspace,
    atomic_write_json,
    file_sha256,
    outputs_intact,
    read_json,
    run_stage,
    stage_key,
    stamp_path,
)
from fernoise.checkpoint import save_torch
from fernoise.devices import check_device_name, resolve_device
from fernoise.errors import FernoiseError
from fernoise.manifest import Manifest, read_manifest, resolve_manifest
from fernoise.progress import Progress
from fernoise.train.config import resolve_precision
from fernoise.train.loop import _write_metrics

if TYPE_CHECKING:
    from collections.abc import Callable

    import pandas as pd
    import torch
    from torch import nn

    from fernoise.distributed import Dist
    from fernoise.pretrain.ssl import ViewParams

VERSION = 2  # 2: keyed on the content of the manifest columns it reads
STAGE = "pretrain"
METHODS = ("simclr", "byol")
PRECISIONS = ("auto", "fp32", "bf16")
READS = ("id", "path", "crop_sha256", "split", "label", "status")
"""The manifest columns pretrain reads (``label`` only for the probe rows): the key's input."""


@dataclass(frozen=True)
class PretrainConfig:
    """Parameters of one self-supervised pretraining run."""

    method: str = "simclr"
    """simclr (NT-Xent) or byol (EMA target, predictor)."""
    epochs: int = 100
    """Training epochs."""
    image_size: int = 112
    """Side of the square views."""
    batch_size: int = 256
    """Images per batch (two views each)."""
    lr: float = 1e-3
    """Adam learning rate (cosine decay to 0 over all epochs)."""
    weight_decay: float = 1e-6
    """Adam weight decay."""
    temperature: float = 0.5
    """NT-Xent temperature (simclr)."""
    momentum: float = 0.996
    """Base EMA momentum of the BYOL target (cosine schedule to 1)."""
    min_scale: float = 0.6
    """Smallest area fraction of the random resized crop (faces must stay faces)."""
    splits: tuple[str, ...] = ("train",)
    """Manifest splits whose crops are trained on (labels are never read)."""
    probe_split: str | None = "val"
    """Split whose labelled rows get a leave-one-out k-NN accuracy (None: no probe)."""
    probe_every: int = 5
    """Epochs between k-NN probes (and the last epoch)."""
    seed: int = 0
    """Seed of the init, the batch order and every view."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    precision: str = "auto"
    """auto (bf16 autocast on CUDA, fp32 on the CPU), fp32 or bf16."""
    workers: int = 0
    """Unused by the batched views; kept for symmetry with train (does not change results)."""
    devices: int = 1
    """Local processes for torch.distributed (``--devices N``); torchrun sets its own."""
    keep_checkpoint: bool = False
    """Keep checkpoint.pt after the run finishes."""
    backbone: str = "resnet18"
    """The backbone family (``fernoise.backbones``); in the key only when not ``resnet18``."""
    max_rows: int | None = None
    """Pretrain on a seeded, stratified (split, label) N of the rows of ``splits``; the probe
    rows are all kept. In the key only when set."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise FernoiseError(
                f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}",
                flag="--method",
            )
        for name, flag, low in (
            ("epochs", "--epochs", 1),
            ("batch_size", "--batch-size", 2),
            ("image_size", "--image-size", 16),
            ("probe_every", "--probe-every", 1),
            ("devices", "--devices", 1),
        ):
            if getattr(self, name) < low:
                raise FernoiseError(
                    f"expected at least {low}, got {getattr(self, name)}", flag=flag
                )
        for name, flag in (("lr", "--lr"), ("temperature", "--temperature")):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise FernoiseError(f"expected a positive number, got {v}", flag=flag)
        if not 0 <= self.weight_decay < 1:
            raise FernoiseError(
                f"expected 0 <= value < 1, got {self.weight_decay}", flag="--weight-decay"
            )
        if not 0 < self.momentum < 1:
            raise FernoiseError(
                f"expected a momentum in (0, 1), got {self.momentum}", flag="--momentum"
            )
        if not 0.05 <= self.min_scale <= 1:
            raise FernoiseError(f"expected 0.05..1, got {self.min_scale}", flag="--min-scale")
        if not self.splits:
            raise FernoiseError("expected at least one split, e.g. --splits train", flag="--splits")
        if self.max_rows is not None and self.max_rows < 2:
            raise FernoiseError(f"expected at least 2 rows, got {self.max_rows}", flag="--max-rows")
        if self.precision not in PRECISIONS:
            raise FernoiseError(
                f"expected one of {', '.join(PRECISIONS)}, got {self.precision!r}",
                flag="--precision",
            )
        check_device_name(self.device)
        from fernoise import backbones

        backbones.check_image_size(self.backbone, self.image_size)  # an unknown name lists them


@dataclass
class PretrainPlan:
    cfg: PretrainConfig
    key: str
    out_dir: Path
    paths: list[str]
    ids: list[str]
    train_pos: np.ndarray
    probe_pos: np.ndarray
    probe_labels: np.ndarray
    manifest_key: str
    device: str
    precision: str
    config: dict[str, Any]
    key_params: dict[str, Any]
    inputs: dict[str, str]
    cache_dir: Path
    """Where the decoded crops are cached (``<workspace>/.fernoise/arrays``)."""
    warnings: list[str] = field(default_factory=list)
    shas: list[str | None] | None = None


@dataclass
class _Rows:
    """The manifest rows pretrain reads: the usable crops of the training splits, then the
    labelled probe rows; positions index ``rows``."""

    rows: pd.DataFrame
    train_pos: np.ndarray
    probe_pos: np.ndarray
    probe_labels: np.ndarray
    warnings: list[str]


def plan(
    manifest_path: str | os.PathLike,
    cfg: PretrainConfig,
    *,
    out_root: str | os.PathLike | None = None,
    workspace: Workspace | None = None,
) -> PretrainPlan:
    """Check the manifest and the configuration, compute the key; writes nothing."""
    path = resolve_manifest(manifest_path)
    m = read_manifest(path)
    sel = _select_rows(m, path, cfg)
    manifest_key = m.key or file_sha256(path)
    # The rows it reads, not only the recorded key: a manifest edited behind its metadata is a new input.
    content = m.content_key(READS)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    key_params = _key_params(cfg, precision)
    inputs = {"manifest": manifest_key, "content": content}
    key = stage_key(STAGE, VERSION, key_params, inputs)
    ws = workspace or Workspace()
    out_dir = _runs_root(ws, out_root).resolve() / key[:16]
    rows = sel.rows
    return PretrainPlan(
        cfg=cfg,
        key=key,
        out_dir=out_dir,
        paths=[str(m.root / p) for p in rows["path"]],
        ids=rows["id"].astype(str).tolist(),
        train_pos=sel.train_pos,
        probe_pos=sel.probe_pos,
        probe_labels=sel.probe_labels,
        manifest_key=manifest_key,
        device=device,
        precision=precision,
        config=_config(cfg, sel, path, manifest_key, device, precision, key),
        key_params=key_params,
        inputs=inputs,
        warnings=sel.warnings,
        shas=rows["crop_sha256"].tolist() if "crop_sha256" in rows.columns else None,
        cache_dir=ws.root / ".fernoise" / "arrays",
    )


def _select_rows(m: Manifest, path: Path, cfg: PretrainConfig) -> _Rows:
    """The usable crops of ``cfg.splits`` and the labelled rows of ``cfg.probe_split`` (none,
    with a warning, when it has fewer than 2). Raises FernoiseError for a manifest without
    crops, an unknown split, or fewer than 2 training crops."""
    from fernoise import data

    if "path" not in m.df.columns:
        raise FernoiseError(
            f"{path} has no `path` column (crops); make it with `fernoise align`", flag="MANIFEST"
        )
    splits = set(m.df["split"].dropna().astype(str))
    unknown = [s for s in cfg.splits if s not in splits]
    if unknown:
        raise FernoiseError(
            f"split(s) {unknown} not in {path.name} (it has {sorted(splits)})", flag="--splits"
        )
    rows = m.df[data.usable(m.df)].reset_index(drop=True)
    train_mask = rows["split"].isin(cfg.splits).to_numpy()
    if cfg.max_rows is not None and train_mask.sum() > cfg.max_rows:
        import pandas as pd

        from fernoise.subset import stratified_subset

        pos = np.flatnonzero(train_mask)
        part = rows.iloc[pos]
        strata = [
            (str(sp), None if pd.isna(lab) else int(lab))
            for sp, lab in zip(part["split"], part["label"], strict=True)
        ]
        train_mask = np.zeros(len(rows), dtype=bool)
        train_mask[pos[stratified_subset(strata, cfg.max_rows, cfg.seed)]] = True
    if train_mask.sum() < 2:
        raise FernoiseError(
            f"{path} has {int(train_mask.sum())} usable crops in splits {list(cfg.splits)}; "
            "pretraining needs at least 2",
            flag="MANIFEST",
        )
    probe_mask = np.zeros(len(rows), dtype=bool)
    warnings = []
    if cfg.probe_split:
        probe_mask = ((rows["split"] == cfg.probe_split) & rows["label"].notna()).to_numpy().copy()
        if probe_mask.sum() < 2:
            warnings.append(
                f"no labelled {cfg.probe_split!r} rows: no k-NN probe (pass --probe-split SPLIT)"
            )
            probe_mask[:] = False
    keep = train_mask | probe_mask
    rows = rows[keep].reset_index(drop=True)
    train_pos = np.flatnonzero(train_mask[keep])
    probe_pos = np.flatnonzero(probe_mask[keep])
    probe_labels = (
        rows["label"].iloc[probe_pos].astype(int).to_numpy() if len(probe_pos) else np.zeros(0, int)
    )
    return _Rows(rows, train_pos, probe_pos, probe_labels, warnings)


def _key_params(cfg: PretrainConfig, precision: str) -> dict[str, Any]:
    """The parameters that change the result: the configuration less device, workers,
    keep_checkpoint and devices, with the resolved precision and, above one process, the world
    size."""
    key_params = {
        k: v
        for k, v in asdict(cfg).items()
        if k not in ("device", "workers", "keep_checkpoint", "devices")
    }
    key_params["splits"] = list(cfg.splits)
    key_params["precision"] = precision
    if cfg.backbone == "resnet18":  # the keys of runs made before --backbone stay as they were
        del key_params["backbone"]
    if cfg.max_rows is None:  # likewise before --max-rows
        del key_params["max_rows"]
    world = _world(cfg)
    if world > 1:  # only then: the keys of single-process runs stay those of VERSION 2
        key_params["world_size"] = world
    return key_params


def _runs_root(ws: Workspace, out_root: str | os.PathLike | None) -> Path:
    """The folder of pretraining runs: ``out_root``, else ``<workspace>/pretrain``; raises
    FernoiseError when it is a file."""
    root = Path(out_root) if out_root else ws.root / "pretrain"
    if root.exists() and not root.is_dir():
        raise FernoiseError(
            f"{root} is a file; expected a folder for pretraining runs", flag="--out"
        )
    return root


def _config(
    cfg: PretrainConfig,
    sel: _Rows,
    manifest: Path,
    manifest_key: str,
    device: str,
    precision: str,
    key: str,
) -> dict[str, Any]:
    """The run's config.json: every parameter, what was resolved, the inputs and the key."""
    return {
        **{k: v for k, v in asdict(cfg).items() if k != "devices"},
        "splits": list(cfg.splits),
        "world_size": _world(cfg),
        "device": device,
        "device_requested": cfg.device,
        "precision": precision,
        "manifest": str(Path(manifest).resolve()),
        "manifest_key": manifest_key,
        "n_train": int(len(sel.train_pos)),
        "n_probe": int(len(sel.probe_pos)),
        "labels_read": f"only the {cfg.probe_split!r} rows' labels, for the k-NN probe"
        if len(sel.probe_pos)
        else "none",
        "stage_version": VERSION,
        "fernoise_version": __version__,
        "key": key,
    }


def _world(cfg: PretrainConfig) -> int:
    """Processes of the run: torchrun's WORLD_SIZE, else ``--devices``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world if world > 1 else cfg.devices


def is_cached(p: PretrainPlan) -> bool:
    out = p.out_dir / "backbone.pt"
    return outputs_intact(read_json(stamp_path(out)), p.key, p.out_dir)


def pretrain(
    manifest_path: str | os.PathLike,
    cfg: PretrainConfig,
    *,
    out_root: str | os.PathLike | None = None,
    workspace: Workspace | None = None,
    progress: Progress | None = None,
    force: bool = False,
) -> StageResult:
    """Pretrain (or find in the cache, or resume) and return a StageResult whose output is the folder.

    Under torchrun every rank calls this and rank 0 writes; ``cfg.devices > 1`` spawns that many
    local processes (fernoise/distributed.py)."""
    from fernoise import distributed

    ws = workspace or Workspace()
    p = plan(manifest_path, cfg, out_root=out_root, workspace=ws)
    t0 = time.perf_counter()
    env = distributed.from_env()
    if not env.enabled and (not force and is_cached(p)):
        ws.record(STAGE, key=p.key, output=p.out_dir, params=p.key_params)
        return StageResult(STAGE, p.key, p.out_dir, True, time.perf_counter() - t0)
    if cfg.devices > 1 and not env.enabled:
        distributed.spawn(
            cfg.devices, _pretrain_rank, manifest_path, cfg, out_root, force, str(ws.root)
        )
        ws.record(STAGE, key=p.key, output=p.out_dir, params=p.key_params)
        return StageResult(STAGE, p.key, p.out_dir, False, time.perf_counter() - t0)
    return _pretrain_rank(manifest_path, cfg, out_root, force, workspace=ws, progress=progress, p=p)


def _pretrain_rank(
    manifest_path, cfg, out_root, force, ws_root=None, *, workspace=None, progress=None, p=None
) -> StageResult:
    """One process of the run (the only one without torch.distributed)."""
    from fernoise import distributed

    ws = workspace or Workspace(ws_root)
    p = p or plan(manifest_path, cfg, out_root=out_root, workspace=ws)
    env = distributed.from_env()
    distributed.init(env, p.device.split(":")[0])
    try:
        t0 = time.perf_counter()
        hit = distributed.broadcast(not force and is_cached(p), env)
        if hit:
            result = StageResult(STAGE, p.key, p.out_dir, True, time.perf_counter() - t0)
        elif env.is_main:
            res = run_stage(
                stage=STAGE,
                version=VERSION,
                params=p.key_params,
                inputs=p.inputs,
                output=p.out_dir / "backbone.pt",
                build=lambda key: fit(p, env, progress=progress, fresh=force),
                force=True,
            )
            result = StageResult(STAGE, p.key, p.out_dir, False, res.seconds)
        else:
            fit(p, env, fresh=force)
            result = StageResult(STAGE, p.key, p.out_dir, False, time.perf_counter() - t0)
        if env.is_main:
            ws.record(STAGE, key=p.key, output=p.out_dir, params=p.key_params)
        distributed.barrier(env)
        return result
    finally:
        distributed.shutdown()


# ----------------------------------------------------------------------------- model
def _build(cfg: PretrainConfig) -> tuple[nn.ModuleDict, nn.ModuleDict | None]:
    import torch
    from torch import nn

    from fernoise import backbones
    from fernoise.pretrain.ssl import mlp

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        backbone = backbones.create(cfg.backbone)  # resnet18: torchvision's, fc = Identity
        d = backbones.get(cfg.backbone).feature_dim
        if cfg.method == "simclr":
            online = nn.ModuleDict({"backbone": backbone, "projector": mlp(d, 512, 128)})
        else:
            online = nn.ModuleDict(
                {
                    "backbone": backbone,
                    "projector": mlp(d, 1024, 256),
                    "predictor": mlp(256, 1024, 256),
                }
            )
    target = None
    if cfg.method == "byol":
        target = nn.ModuleDict(
            {
                "backbone": copy.deepcopy(online["backbone"]),
                "projector": copy.deepcopy(online["projector"]),
            }
        )
        for q in target.parameters():
            q.requires_grad_(False)
    return online, target


def _epoch_order(
    n: int, batch_size: int, seed: int, epoch: int, world: int = 1
) -> list[np.ndarray]:
    """Global batches of positions for ``epoch``: a permutation seeded by (seed, epoch), in
    batches of ``batch_size * world``. A last batch smaller than 2 per process is dropped
    (BatchNorm and the contrastive loss need pairs); under ``world`` processes the last batch is
    cut to a multiple of ``world`` (every rank's share has one size, as the gather needs)."""
    perm = np.random.default_rng([seed, epoch, 0x55]).permutation(n)
    step = batch_size * world
    out = []
    for i in range(0, n, step):
        b = perm[i : i + step]
        b = b[: len(b) - len(b) % world]
        if len(b) >= 2 * world:
            out.append(b)
    return out


def _rank_share(batch: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This rank's contiguous share of a global batch (all shares one size)."""
    k = len(batch) // world
    return batch[rank * k : (rank + 1) * k]


def _probe(
    backbone: nn.Module,
    images: np.ndarray,
    positions: np.ndarray,
    labels: np.ndarray,
    device: torch.device,
    amp: bool,
    mean: tuple[float, ...] = (0.485, 0.456, 0.406),
    std: tuple[float, ...] = (0.229, 0.224, 0.225),
) -> float:
    import torch

    from fernoise import data
    from fernoise.pretrain.ssl import knn_accuracy

    backbone.eval()
    feats = []
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        for _, x in data.eval_batches(images, positions, 256):
            x = data.normalize(x, device, channels_last=True, mean=mean, std=std)
            feats.append(backbone(x).float().cpu())
    backbone.train()
    return knn_accuracy(torch.cat(feats), torch.as_tensor(np.array(labels), dtype=torch.long))


@dataclass
class _Run:
    """What every epoch of :func:`fit` uses on this process: the plan, the processes, the
    device, the crops, the networks and their optimiser."""

    p: PretrainPlan
    env: Dist
    say: Progress
    device: torch.device
    amp: bool
    images: np.ndarray
    online: nn.ModuleDict
    target: nn.ModuleDict | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    views: ViewParams
    steps_per_epoch: int
    net: nn.Module | None = None
    """The online forward as one module (DistributedDataParallel around it under a world)."""


def _start(p: PretrainPlan, env: Dist, say: Progress) -> _Run:
    """The device, the crops (rank 0 decodes; the others map the finished cache), the seeded
    networks on the device, Adam and the cosine schedule."""
    import torch

    from fernoise import data, distributed
    from fernoise.pretrain.ssl import ViewParams

    cfg = p.cfg
    device = torch.device(
        f"cuda:{env.local_rank}" if p.device == "cuda" and env.enabled else p.device
    )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    def crops(progress: Progress | None) -> np.ndarray:
        return data.array_cache(
            p.paths,
            p.ids,
            size=cfg.image_size,
            cache_dir=p.cache_dir,
            shas=p.shas,
            progress=progress,
        )

    if env.is_main:
        images = crops(say)
    distributed.barrier(env)
    if not env.is_main:
        images = crops(None)
    online, target = _build(cfg)
    # Module.to takes the device and the memory format in two calls (its typed signatures)
    online = online.to(device).to(memory_format=torch.channels_last)
    if target is not None:
        target = target.to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(online.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return _Run(
        p=p,
        env=env,
        say=say,
        device=device,
        amp=p.precision == "bf16",
        images=images,
        online=online,
        target=target,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs),
        views=ViewParams(min_scale=cfg.min_scale),
        steps_per_epoch=len(_epoch_order(len(p.train_pos), cfg.batch_size, cfg.seed, 1, env.world)),
    )


def _wrap(r: _Run) -> nn.Module:
    """The online forward as one module; under torch.distributed DistributedDataParallel
    around it (made after a resume, so every rank starts from the loaded weights)."""
    import torch

    from fernoise.pretrain.ssl import OnlineNet

    net: nn.Module = OnlineNet(r.online)
    if r.env.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[r.device.index] if r.device.type == "cuda" else None
        )
    return net


class _Ledger:
    """fit's bookkeeping: the run folder, resuming from and saving ``checkpoint.pt``, the
    metrics lines (``metrics.jsonl``), each epoch's timing and record, and the final
    ``backbone.pt``. Every rank keeps the records; rank 0 alone writes."""

    def __init__(self, r: _Run) -> None:
        self.r = r
        self.out = r.p.out_dir
        self.ckpt_path = self.out / "checkpoint.pt"
        self.metrics: list[dict[str, Any]] = []
        self.t_epoch = 0.0

    def open(self, fresh: bool) -> int:
        """Make the folder, load checkpoint.pt of this key unless ``fresh`` (its networks,
        optimiser, schedule and records), write config.json and the records so far; returns
        the first epoch to run."""
        from fernoise import distributed

        r, start = self.r, 1
        if r.env.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        distributed.barrier(r.env)
        if self.ckpt_path.is_file() and not fresh:
            state = _load_checkpoint(self.ckpt_path, r.p.key, r.say)
            if state is not None:
                r.online.load_state_dict(state["online"])
                if r.target is not None:
                    r.target.load_state_dict(state["target"])
                r.optimizer.load_state_dict(state["optimizer"])
                r.scheduler.load_state_dict(state["scheduler"])
                self.metrics = [json.loads(s) for s in state["metrics"]]
                start = int(state["epoch"]) + 1
                r.say({"event": "resume", "epoch": start - 1, "run_dir": str(self.out)})
        if r.env.is_main:
            atomic_write_json(self.out / "config.json", r.p.config)
            _write_metrics(self.out, self.metrics)
        return start

    def start_epoch(self) -> None:
        self.t_epoch = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds since the epoch started."""
        return time.perf_counter() - self.t_epoch

    def end_epoch(self, record: dict[str, Any]) -> None:
        """Add the epoch's ``record`` (its ``seconds`` set now), save checkpoint.pt and
        metrics.jsonl, report it, and wait for every rank."""
        from fernoise import distributed

        r = self.r
        record["seconds"] = self.elapsed()
        self.metrics.append(record)
        if r.env.is_main:
            _save_checkpoint(
                self.ckpt_path,
                r.p.key,
                record["epoch"],
                r.online,
                r.target,
                r.optimizer,
                r.scheduler,
                self.metrics,
            )
            _write_metrics(self.out, self.metrics)
        r.say({"event": "epoch_end", "metrics": record})
        distributed.barrier(r.env)

    def finish(self) -> list[Path]:
        """Write backbone.pt (torchvision names, no ``fc``) and drop checkpoint.pt unless kept."""
        r = self.r
        if r.env.is_main:
            save_torch(
                {k: v.detach().cpu() for k, v in r.online["backbone"].state_dict().items()},
                self.out / "backbone.pt",
            )
            if not r.p.cfg.keep_checkpoint:
                self.ckpt_path.unlink(missing_ok=True)
        return [self.out / "backbone.pt", self.out / "config.json", self.out / "metrics.jsonl"]


def fit(
    p: PretrainPlan,
    env: Dist | None = None,
    *,
    progress: Progress | None = None,
    fresh: bool = False,
) -> list[Path]:
    """Train to the end, resuming from checkpoint.pt of the same key unless ``fresh``. Under
    torch.distributed (``env``) every rank runs this; rank 0 writes."""
    import torch

    from fernoise import backbones, distributed

    env = env or distributed.Dist()
    cfg = p.cfg
    say: Progress = progress if (progress and env.is_main) else _quiet
    for w in p.warnings:
        say({"event": "warning", "message": w})
    r = _start(p, env, say)
    ledger = _Ledger(r)
    start = ledger.open(fresh)
    r.net = _wrap(r)
    for epoch in range(start, cfg.epochs + 1):
        ledger.start_epoch()
        batches = _epoch_order(len(p.train_pos), cfg.batch_size, cfg.seed, epoch, env.world)
        say(
            {
                "event": "epoch_start",
                "epoch": epoch,
                "epochs": cfg.epochs,
                "batches": len(batches),
                "warmup": False,
            }
        )
        loss_sum, seen, tau = _train_epoch(r, epoch, batches, ledger.elapsed)
        train_seconds = ledger.elapsed()
        sums = distributed.all_sum(torch.tensor([loss_sum, float(seen)], dtype=torch.float64), env)
        loss_sum, seen = float(sums[0]), int(sums[1])
        lr_used = r.optimizer.param_groups[0]["lr"]
        r.scheduler.step()
        probe = None
        if (
            env.is_main
            and len(p.probe_pos)
            and (epoch % cfg.probe_every == 0 or epoch == cfg.epochs)
        ):
            card = backbones.get(p.cfg.backbone)
            probe = _probe(
                r.online["backbone"],
                r.images,
                p.probe_pos,
                p.probe_labels,
                r.device,
                r.amp,
                card.mean,
                card.std,
            )
        ledger.end_epoch(
            {
                "epoch": epoch,
                "loss": loss_sum / max(seen, 1),
                "lr": lr_used,
                "momentum": tau,
                "knn_acc": probe,
                "samples": seen,
                "images_per_s": 2 * seen / train_seconds,
                "train_seconds": train_seconds,
            }
        )
    return ledger.finish()


def _quiet(event: dict[str, Any]) -> None:
    """The progress callback of a rank that does not report."""


def _train_epoch(
    r: _Run, epoch: int, batches: list[np.ndarray], elapsed: Callable[[], float]
) -> tuple[float, int, float | None]:
    """One epoch's steps on this rank's share of each global batch, with views drawn from a
    generator seeded by (seed, epoch[, rank]); returns this rank's (loss sum, images, last
    BYOL momentum or None)."""
    import torch

    from fernoise import backbones, distributed
    from fernoise.pretrain.ssl import byol_loss, byol_momentum, ema_update, nt_xent, ssl_views

    p, cfg, env, device, net = r.p, r.p.cfg, r.env, r.device, r.net
    card = backbones.get(cfg.backbone)
    assert net is not None, "fit wraps the online network before the first epoch"
    mix = [cfg.seed, epoch, 0x5E] + ([env.rank] if env.enabled else [])  # each rank its own views
    gen = torch.Generator().manual_seed(int(np.random.default_rng(mix).integers(2**62)))
    total_steps = r.steps_per_epoch * cfg.epochs
    r.online.train()
    loss_sum, seen, tau = 0.0, 0, None
    for i, pos in enumerate(batches):
        # memory-map reads in file order; order within a batch is irrelevant
        rows = np.sort(p.train_pos[_rank_share(pos, env.rank, env.world)])
        x = torch.from_numpy(np.ascontiguousarray(r.images[rows])).to(device, non_blocking=True)
        v1 = ssl_views(x, cfg.image_size, r.views, gen, card.mean, card.std)
        v2 = ssl_views(x, cfg.image_size, r.views, gen, card.mean, card.std)
        n = x.shape[0]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=r.amp):
            z, q = net(torch.cat([v1, v2]))
            if cfg.method == "simclr":
                z1, z2 = (
                    (z[:n], z[n:])
                    if not env.enabled
                    else (distributed.all_gather_cat(z[:n]), distributed.all_gather_cat(z[n:]))
                )
                loss = nt_xent(z1, z2, cfg.temperature)
            else:
                assert r.target is not None
                with torch.no_grad():
                    t = r.target["projector"](r.target["backbone"](torch.cat([v1, v2])))
                loss = byol_loss(q[:n], q[n:], t[:n], t[n:])
        r.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        r.optimizer.step()
        if r.target is not None:
            tau = byol_momentum((epoch - 1) * r.steps_per_epoch + i, total_steps, cfg.momentum)
            pair = {"backbone": r.online["backbone"], "projector": r.online["projector"]}
            ema_update(r.target, torch.nn.ModuleDict(pair), tau)
        loss_sum += float(loss.item()) * n
        seen += n
        r.say(
            {
                "event": "batch",
                "epoch": epoch,
                "done": i + 1,
                "total": len(batches),
                "loss": loss_sum / seen,
                "images_per_s": 2 * seen * env.world / max(elapsed(), 1e-9),
            }
        )
    return loss_sum, seen, tau


def _save_checkpoint(
    path: Path,
    key: str,
    epoch: int,
    online: nn.Module,
    target: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    metrics: list[dict[str, Any]],
) -> None:
    """The safe checkpoint format: tensors, numbers, strings, lists and dicts only (metrics as
    JSON strings), so ``torch.load(..., weights_only=True)`` reads it."""
    state = {
        "key": key,
        "epoch": epoch,
        "online": online.state_dict(),
        "target": target.state_dict() if target is not None else {},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "metrics": [json.dumps(m, sort_keys=True) for m in metrics],
    }
    save_torch(state, path)


def _load_checkpoint(path: Path, key: str, say: Progress) -> dict[str, Any] | None:
    """The checkpoint when it is readable by the safe loader and of this key; else None (and a
    one-line notice): the run starts over."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, foreign or crafted: never trusted
        say(
            {
                "event": "warning",
                "message": f"{path} is unreadable ({e.__class__.__name__}); starting over",
            }
        )
        return None
    if not isinstance(state, dict) or state.get("key") != key:
        say({"event": "warning", "message": f"{path} belongs to another run; starting over"})
        return None
    return state
