"""`fernoise train`: the one training loop for ce, pc, nl and ncctfer (METHOD.md).

Reads a manifest (rows with a crop, status ok/whole): ``split == train`` rows with a label
are trained on, ``val`` rows validate (or a seeded stratified ``val_fraction`` of train when
the manifest has none), ``test`` rows test. Writes ``runs/<key[:16]>/`` (notes/rundir.md):
``config.json``, ``metrics.jsonl`` (one line per epoch), ``checkpoint.pt`` (atomically, every
epoch; a re-run resumes from it), ``model.pt`` (final weights), ``val_ids.json`` when
validation rows were carved out of train, and the stage stamp.

Read :func:`method_loss` for every method's loss and :func:`fit` for the loop. Choices where the paper is silent
(METHOD.md): warm-up (plain CE on every sample) applies to every method for its first
``warmup`` epochs; the weak and strong views go through the network as one concatenated batch
(one BatchNorm pass, as FixMatch-style code does); ``q_w`` is a stop-gradient target; no
learning-rate schedule unless ``lr_decay`` (per-epoch exponential) is given.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fernoise import __version__
from fernoise.cache import (
    StageResult,
    Workspace,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    file_sha256,
    outputs_intact,
    read_json,
    run_stage,
    stage_key,
    stamp_path,
)
from fernoise.devices import check_device_name, resolve_device
from fernoise.errors import FernoiseError
from fernoise.manifest import Manifest, check_labels, find_stage, read_manifest
from fernoise.runindex import indexed  # finished runs found without torch (sweep re-runs)

VERSION = 1
METHODS = ("ce", "pc", "nl", "ncctfer")
PRECISIONS = ("auto", "fp32", "bf16")
Progress = Callable[[dict], None]


# ----------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class TrainConfig:
    """Parameters of one training run; defaults are the paper's (§4.2)."""

    method: str = "ncctfer"
    """ce (baseline), pc (confident samples only), nl (negative learning), ncctfer (pc + nc)."""
    epochs: int = 40
    """Training epochs."""
    batch_size: int = 128
    """Samples per batch (per process under torch.distributed)."""
    image_size: int = 224
    """Side of the square training and test images."""
    warmup: int = 5
    """Epochs of plain cross-entropy on every sample before the method's loss."""
    k: int = 4
    """Top-k negative-head classes in the consistency loss (ncctfer), 1..C-1."""
    lr_backbone: float = 1e-4
    """Adam learning rate of the ResNet-18 backbone."""
    lr_head: float = 1e-3
    """Adam learning rate of the pcc and ncc heads."""
    lr_decay: float | None = None
    """Per-epoch exponential learning-rate factor (e.g. 0.95); None = constant (the paper)."""
    randaug_magnitude: int = 10
    """RandAugment magnitude (0..30) of the strong view; 2 ops."""
    pretrained: str | None = None
    """Local backbone state dict (e.g. resnet18_msceleb.pth); None = random init."""
    seed: int = 0
    """Seed of the model init, the data order, the views and the complementary labels."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    precision: str = "auto"
    """auto (bf16 autocast on CUDA, fp32 on the CPU: see resolve_precision), fp32 or bf16."""
    val_fraction: float = 0.1
    """Stratified share of train rows held out for validation when the manifest has no val rows."""
    workers: int | None = None
    """DataLoader worker processes; None = auto. Does not change results."""
    devices: int = 1
    """Local processes for torch.distributed (``--devices N``); torchrun sets its own."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise FernoiseError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}", flag="--method")
        for name, flag in (("epochs", "--epochs"), ("batch_size", "--batch-size"), ("devices", "--devices")):
            if getattr(self, name) < 1:
                raise FernoiseError(f"expected at least 1, got {getattr(self, name)}", flag=flag)
        if self.batch_size < 2:
            raise FernoiseError("expected at least 2 (BatchNorm and the per-class threshold need a batch)", flag="--batch-size")
        if self.image_size < 16:
            raise FernoiseError(f"expected at least 16 px, got {self.image_size}", flag="--image-size")
        if not 0 <= self.warmup <= self.epochs:
            raise FernoiseError(
                f"expected 0..{self.epochs} (--epochs), got {self.warmup}; lower --warmup or raise --epochs",
                flag="--warmup",
            )
        if self.k < 1:
            raise FernoiseError(f"expected 1..C-1, got {self.k}", flag="--k")
        for name, flag in (("lr_backbone", "--lr-backbone"), ("lr_head", "--lr-head")):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise FernoiseError(f"expected a positive learning rate, got {v}", flag=flag)
        if self.lr_decay is not None and not 0 < self.lr_decay <= 1:
            raise FernoiseError(f"expected a factor in (0, 1], got {self.lr_decay}", flag="--lr-decay")
        if not 0 <= self.randaug_magnitude <= 30:
            raise FernoiseError(f"expected 0..30, got {self.randaug_magnitude}", flag="--randaug-magnitude")
        if self.precision not in PRECISIONS:
            raise FernoiseError(f"expected one of {', '.join(PRECISIONS)}, got {self.precision!r}", flag="--precision")
        if not 0 <= self.val_fraction < 1:
            raise FernoiseError(f"expected a fraction in [0, 1), got {self.val_fraction}", flag="--val-fraction")
        if self.workers is not None and self.workers < 0:
            raise FernoiseError(f"expected 0 or more, got {self.workers}", flag="--workers")
        check_device_name(self.device)


def resolve_precision(precision: str, device: str) -> str:
    """auto: bf16 autocast on CUDA, fp32 on the CPU.

    Measured on the project's 2-core AVX512-BF16 machine (ResNet-18 train step, 64 px, batch
    128, channels_last, shared with other trainers; bench/train.py and alternating runs):
    fp32 102-103 img/s vs bf16 12 img/s with passive OpenMP waits, 26-39 vs 9 with active
    ones; bf16 won only one early, quieter sample (288 vs 169). bf16 autocast adds many small
    cast kernels, each a synchronisation point that a loaded CPU makes expensive.
    On the same machine when quiet, bf16 is faster: 283-348 vs 184-207 img/s (the lead's
    step-only check). fp32 stays the CPU default because its worst case is 1.7x slower and
    bf16's is 8x; pass ``--precision bf16`` on a CPU you have to yourself.
    """
    if precision != "auto":
        return precision
    return "bf16" if device.startswith("cuda") else "fp32"


# ----------------------------------------------------------------------------- the plan
@dataclass
class Plan:
    """Everything the loop needs, checked before anything is written."""

    cfg: TrainConfig
    manifest: Manifest
    device: str
    precision: str
    key: str
    run_dir: Path
    config: dict[str, Any]
    key_params: dict[str, Any]
    rows: pd.DataFrame  # usable rows, in array-cache order
    train_pos: np.ndarray
    val_pos: np.ndarray
    test_pos: np.ndarray
    labels: np.ndarray  # (len(rows),) int64, -1 where unlabelled
    is_noisy: np.ndarray | None  # (len(rows),) bool for the train rows' flags, or None
    val_ids: list[str] | None
    warnings: list[str] = field(default_factory=list)


def _carve_val(train: pd.DataFrame, fraction: float, seed: int) -> pd.Index:
    """A seeded, stratified ``fraction`` of ``train`` (per class: round(fraction * n_c))."""
    rng = np.random.default_rng([seed, 0x7A1])
    picked = []
    for _, group in train.groupby("label", sort=True):
        n = int(round(fraction * len(group)))
        if n:
            picked.extend(group.index[rng.choice(len(group), size=n, replace=False)])
    return pd.Index(sorted(picked))


def plan(manifest_path: str | os.PathLike, cfg: TrainConfig, *, runs_dir: str | os.PathLike | None = None) -> Plan:
    """Read and check the manifest and the configuration; compute the key and the run folder.

    Raises FernoiseError (naming the flag) on any bad input; writes nothing.
    """
    from fernoise import data

    m = read_manifest(manifest_path)
    classes = m.classes
    if not classes:
        raise FernoiseError(f"{m.path} has no class list in its metadata; make it with `fernoise align`", flag="MANIFEST")
    C = len(classes)
    if not 1 <= cfg.k <= C - 1:
        raise FernoiseError(f"expected 1..{C - 1} for {C} classes, got {cfg.k}", flag="--k")
    try:
        check_labels(m.df, classes)
    except FernoiseError as e:
        raise FernoiseError(f"{m.path}: {e}; fix the manifest's labels", flag="MANIFEST") from None
    key_in = m.key or file_sha256(m.path)

    rows = m.df[data.usable(m.df)].reset_index(drop=True)
    labelled = rows["label"].notna()
    train = rows[(rows["split"] == "train") & labelled]
    if train.empty:
        raise FernoiseError(
            f"{m.path} has no labelled training rows with a crop (split == train, label set, status ok/whole)",
            flag="MANIFEST",
        )
    warnings = []
    counts = np.bincount(train["label"].astype(int), minlength=C)
    for c in np.flatnonzero(counts == 0):
        warnings.append(f"class {classes[c]!r} has no training samples; training continues without it")

    val = rows[(rows["split"] == "val") & labelled]
    val_ids, val_source, val_fraction = None, "split", None
    if val.empty and cfg.val_fraction > 0:
        carved = _carve_val(train, cfg.val_fraction, cfg.seed)
        val, train = train.loc[carved], train.drop(carved)
        val_ids, val_source, val_fraction = rows.loc[carved, "id"].tolist(), "carved", cfg.val_fraction
    elif val.empty:
        val_source = "none"
    test = rows[(rows["split"] == "test") & labelled]

    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    pretrained, pre_sha, pre_report = None, None, None
    if cfg.pretrained:
        from fernoise.model import FerNet, load_pretrained

        pretrained = str(Path(cfg.pretrained).resolve())
        pre_report = load_pretrained(FerNet(C, two_heads=False), pretrained)  # checks it now
        pre_sha = file_sha256(pretrained)
    world = _world(cfg)
    key_params = {
        "method": cfg.method, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
        "image_size": cfg.image_size, "warmup": cfg.warmup, "k": cfg.k,
        "lr_backbone": cfg.lr_backbone, "lr_head": cfg.lr_head, "lr_decay": cfg.lr_decay,
        "randaug_magnitude": cfg.randaug_magnitude, "pretrained_sha256": pre_sha, "seed": cfg.seed,
        "precision": precision, "val_fraction": val_fraction, "world_size": world,
    }
    key = stage_key("train", VERSION, key_params, {"manifest": key_in})
    runs_dir = Path(runs_dir) if runs_dir else Workspace().root / "runs"
    run_dir = runs_dir.resolve() / key[:16]

    corrupt = find_stage(m.meta, "corrupt")
    align = find_stage(m.meta, "align")
    labels = rows["label"].fillna(-1).astype(np.int64).to_numpy()
    is_noisy = rows["is_noisy"].fillna(False).astype(bool).to_numpy() if "is_noisy" in rows.columns else None
    config = {
        **{k: v for k, v in asdict(cfg).items() if k not in ("devices",)},
        "pretrained": pretrained, "pretrained_sha256": pre_sha, "pretrained_report": pre_report,
        "precision": precision, "precision_requested": cfg.precision,
        "device": device, "device_requested": cfg.device, "world_size": world,
        "val_fraction": val_fraction, "val_fraction_requested": cfg.val_fraction, "val_source": val_source,
        "manifest": str(Path(m.path).resolve()), "manifest_key": key_in,
        "classes": classes, "label_space": m.meta.get("label_space"), "num_classes": C,
        "two_heads": cfg.method == "ncctfer",
        "noise": dict(corrupt["params"]) if corrupt else None,
        "align": dict(align["params"]) if align else None,
        "n_train": len(train), "n_val": len(val), "n_test": len(test),
        "train_class_counts": np.bincount(train["label"].astype(int), minlength=C).tolist(),
        "stage_version": VERSION, "fernoise_version": __version__, "key": key,
    }
    return Plan(
        cfg=cfg, manifest=m, device=device, precision=precision, key=key, run_dir=run_dir,
        config=config, key_params=key_params, rows=rows,
        train_pos=train.index.to_numpy(np.int64), val_pos=val.index.to_numpy(np.int64),
        test_pos=test.index.to_numpy(np.int64), labels=labels, is_noisy=is_noisy,
        val_ids=val_ids, warnings=warnings,
    )


def _world(cfg: TrainConfig) -> int:
    from fernoise import distributed

    env = distributed.from_env()
    return env.world if env.enabled else cfg.devices


def is_cached(p: Plan) -> bool:
    """True when the run folder holds the finished run of this key, intact."""
    output = p.run_dir / "model.pt"
    return outputs_intact(read_json(stamp_path(output)), p.key, p.run_dir)


# ----------------------------------------------------------------------------- the stage
@indexed  # runindex.py: a finished run of the same *requested* config is a hit with no torch import
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
    """
    from fernoise import distributed

    p = plan(manifest_path, cfg, runs_dir=runs_dir)
    env = distributed.from_env()
    if cfg.devices > 1 and not env.enabled:
        t0 = time.perf_counter()
        hit = not force and is_cached(p)
        if not hit:
            distributed.spawn(cfg.devices, _train_rank, manifest_path, cfg, runs_dir, force)
        if workspace is not None:
            workspace.record("train", key=p.key, output=p.run_dir, params=p.key_params)
        return StageResult("train", p.key, p.run_dir, hit, time.perf_counter() - t0)
    return _train_rank(manifest_path, cfg, runs_dir, force, workspace=workspace, progress=progress, p=p)


def _train_rank(manifest_path, cfg, runs_dir, force, *, workspace=None, progress=None, p=None) -> StageResult:
    from fernoise import distributed

    p = p or plan(manifest_path, cfg, runs_dir=runs_dir)
    env = distributed.from_env()
    distributed.init(env, p.device.split(":")[0])
    try:
        t0 = time.perf_counter()
        hit = distributed.broadcast(not force and is_cached(p), env)
        if hit:
            result = StageResult("train", p.key, p.run_dir, True, time.perf_counter() - t0)
        elif env.is_main:
            result = run_stage(
                stage="train", version=VERSION, params=p.key_params,
                inputs={"manifest": p.config["manifest_key"]}, output=p.run_dir / "model.pt",
                build=lambda key: fit(p, env, progress=progress, fresh=force), force=True,
            )
            result = StageResult("train", p.key, p.run_dir, False, result.seconds)
        else:
            fit(p, env, progress=None, fresh=force)
            result = StageResult("train", p.key, p.run_dir, False, time.perf_counter() - t0)
        if env.is_main and workspace is not None:
            workspace.record("train", key=p.key, output=p.run_dir, params=p.key_params)
        distributed.barrier(env)
        return result
    finally:
        distributed.shutdown()


# ----------------------------------------------------------------------------- the loss
@dataclass
class StepLoss:
    """One mini-batch's loss and its parts (None where the method has no such part)."""

    loss: Any
    loss_s: Any
    loss_c: Any
    confident: Any  # bool (N,) or None
    thresholds: Any  # (C,) with NaN for absent classes, or None
    pcc_w: Any  # (N, C) logits of the positive head on the weak view


def method_loss(net, x_w, x_s, y, *, method: str, warm: bool, k: int, num_classes: int, nl_gen, amp: bool) -> StepLoss:
    """The loss of ``method`` on one batch: weak view ``x_w`` and (ncctfer) strong view ``x_s``,
    each ``(N, 3, H, W)``; labels ``y`` ``(N,)``. Warm-up = cross-entropy on every sample."""
    import torch
    import torch.nn.functional as F

    from fernoise import losses

    n = x_w.shape[0]
    with torch.autocast(x_w.device.type, dtype=torch.bfloat16, enabled=amp):
        if x_s is not None:  # both views in one pass
            pcc, ncc = net(torch.cat([x_w, x_s]))
            pcc_w, ncc_w, ncc_s = pcc[:n], ncc[:n], ncc[n:]
        else:
            pcc_w, ncc_w = net(x_w)
    if warm or method == "ce":
        # Baseline and warm-up: cross-entropy on every sample.
        loss_s = losses.cross_entropy(pcc_w, y)
        return StepLoss(loss_s, loss_s, None, None, None, pcc_w)
    if method == "nl":
        # NLNL: push down p[ybar] for a random complementary label ybar != y.
        ybar = losses.complementary_labels(y, num_classes, nl_gen)
        return StepLoss(losses.negative_learning_loss(pcc_w, ybar), None, None, None, None, pcc_w)
    # pc and ncctfer: the class-adaptive threshold on the weak view (Eq. 1-3) ...
    p_w = F.softmax(pcc_w.detach().float(), dim=1)
    thresholds = losses.class_thresholds(p_w, y, num_classes)
    conf = losses.confident_mask(p_w, y, thresholds)
    loss_s = losses.supervised_loss(pcc_w, y, conf)
    if method == "pc":
        return StepLoss(loss_s, loss_s, None, conf, thresholds, pcc_w)
    # ... plus negative-head consistency on the non-confident samples (Eq. 4-5).
    loss_c = losses.consistency_loss(ncc_w, ncc_s, ~conf, k)
    return StepLoss(loss_s + loss_c, loss_s, loss_c, conf, thresholds, pcc_w)


# ----------------------------------------------------------------------------- the loop
def fit(p: Plan, env=None, *, progress: Progress | None = None, fresh: bool = False) -> list[Path]:
    """Train ``p`` to the end, resuming from ``checkpoint.pt`` when one of the same key exists
    (unless ``fresh``: ``--force`` starts over).

    Returns the files written (rank 0); other ranks write nothing.
    """
    import torch

    from fernoise import data, distributed
    from fernoise.model import FerNet, load_pretrained

    env = env or distributed.Dist()
    cfg, C = p.cfg, p.config["num_classes"]
    say = progress if (progress and env.is_main) else (lambda event: None)
    for w in p.warnings:
        say({"event": "warning", "message": w})
    device = torch.device(f"cuda:{env.local_rank}" if p.device == "cuda" and env.enabled else p.device)
    on_cuda = device.type == "cuda"
    amp = p.precision == "bf16"
    channels_last = True  # faster for cuDNN and for oneDNN on the CPU (bench/train.py)
    workers = cfg.workers if cfg.workers is not None else default_workers(on_cuda)

    # Images: decoded once into the memory-mapped uint8 cache (rank 0 builds it).
    cache_dir = Workspace().root / ".fernoise" / "arrays"
    paths = [str(p.manifest.root / x) for x in p.rows["path"]]
    ids = p.rows["id"].astype(str).tolist()
    if env.is_main:
        images = data.array_cache(paths, ids, manifest_key=p.config["manifest_key"], size=cfg.image_size,
                                  cache_dir=cache_dir, progress=say)
    distributed.barrier(env)
    if not env.is_main:
        images = data.array_cache(paths, ids, manifest_key=p.config["manifest_key"], size=cfg.image_size, cache_dir=cache_dir)
    views = data.ViewBatches(images, cfg.image_size, cfg.randaug_magnitude)
    labels = torch.from_numpy(p.labels.copy())
    clean = torch.from_numpy(~p.is_noisy) if p.is_noisy is not None else None

    # Model and optimiser: Adam, backbone lr 1e-4, heads 1e-3 (paper §4.2).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = FerNet(C, two_heads=p.config["two_heads"])
    if p.config["pretrained"]:
        load_pretrained(model, p.config["pretrained"])
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    optimizer = torch.optim.Adam([
        {"params": model.backbone.parameters(), "lr": cfg.lr_backbone},
        {"params": model.head_parameters(), "lr": cfg.lr_head},
    ])
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, cfg.lr_decay) if cfg.lr_decay else None

    run_dir = p.run_dir
    ckpt_path = run_dir / "checkpoint.pt"
    metrics: list[dict] = []
    start = 1
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False) if ckpt_path.is_file() and not fresh else None
    if ckpt is not None and ckpt.get("key") == p.key:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        metrics, start = ckpt["metrics"], ckpt["epoch"] + 1
        say({"event": "resume", "epoch": ckpt["epoch"], "run_dir": str(run_dir)})
    net = model
    if env.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if on_cuda else None, find_unused_parameters=model.ncc is not None and cfg.warmup > 0,  # ncc idle in warm-up
        )
    written = [run_dir / "config.json", run_dir / "metrics.jsonl", run_dir / "model.pt"]
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "config.json", p.config)
        if p.val_ids is not None:
            atomic_write_json(run_dir / "val_ids.json", p.val_ids)
            written.append(run_dir / "val_ids.json")
        _write_metrics(run_dir, metrics)

    for epoch in range(start, cfg.epochs + 1):
        t_epoch = time.perf_counter()
        warm = epoch <= cfg.warmup
        strong = cfg.method == "ncctfer" and not warm
        batches = data.epoch_batches(p.train_pos, cfg.batch_size, seed=cfg.seed, epoch=epoch,
                                     strong=strong, rank=env.rank, world=env.world)
        nl_gen = torch.Generator().manual_seed(int(np.random.default_rng([cfg.seed, epoch, 0xB1]).integers(2**62)))
        # Per-epoch sums: [loss, loss_s, loss_c, correct, seen, confident, confident&clean, clean, images]
        sums = torch.zeros(9, dtype=torch.float64)
        t_sum = torch.zeros(C, dtype=torch.float64)  # sum over batches of T_c where present
        t_cnt = torch.zeros(C, dtype=torch.float64)
        say({"event": "epoch_start", "epoch": epoch, "epochs": cfg.epochs, "batches": len(batches), "warmup": warm})
        net.train()
        t_train = t_ready = time.perf_counter()
        wait = 0.0  # seconds the step waited for its batch (data loading not hidden by workers)
        for i, batch in enumerate(data.loader(views, batches, workers=workers, pin_memory=on_cuda)):
            wait += time.perf_counter() - t_ready
            rows = batch["positions"]  # indices into the array cache and p.rows
            y = labels[rows].to(device, non_blocking=True)
            x_w = data.normalize(batch["weak"], device, channels_last=channels_last)
            n = x_w.shape[0]
            x_s = data.normalize(batch["strong"], device, channels_last=channels_last) if strong else None
            out = method_loss(net, x_w, x_s, y, method=cfg.method, warm=warm, k=cfg.k, num_classes=C,
                              nl_gen=nl_gen, amp=amp)
            loss, loss_s, loss_c, conf, pcc_w = out.loss, out.loss_s, out.loss_c, out.confident, out.pcc_w
            if out.thresholds is not None:
                present = ~torch.isnan(out.thresholds)
                t_sum += torch.where(present, out.thresholds, 0).double().cpu()
                t_cnt += present.double().cpu()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

            with torch.no_grad():
                sums[0] += loss.item() * n
                sums[1] += loss_s.item() * n if loss_s is not None else 0.0
                sums[2] += loss_c.item() * n if loss_c is not None else 0.0
                sums[3] += (pcc_w.argmax(1) == y).sum().item()
                sums[4] += n
                sums[8] += n * (2 if strong else 1)
                if conf is not None:
                    conf_cpu = conf.cpu()
                    sums[5] += conf_cpu.sum().item()
                    if clean is not None:
                        is_clean = clean[rows]
                        sums[6] += (conf_cpu & is_clean).sum().item()
                        sums[7] += is_clean.sum().item()
            t_ready = time.perf_counter()
            elapsed = t_ready - t_train
            say({"event": "batch", "epoch": epoch, "done": i + 1, "total": len(batches),
                 "loss": sums[0].item() / sums[4].item(), "images_per_s": sums[8].item() * env.world / elapsed})
        train_seconds = time.perf_counter() - t_train
        distributed.all_sum(sums, env)
        distributed.all_sum(t_sum, env)
        distributed.all_sum(t_cnt, env)
        if scheduler is not None:
            scheduler.step()

        if env.is_main:
            val_acc = _accuracy(model, images, p.val_pos, p.labels, cfg.batch_size, device, amp, channels_last)
            test_acc = _accuracy(model, images, p.test_pos, p.labels, cfg.batch_size, device, amp, channels_last)
        distributed.barrier(env)
        selecting = cfg.method in ("pc", "ncctfer") and not warm
        seen = sums[4].item()
        record = {
            "epoch": epoch,
            "warmup": warm,
            "loss": sums[0].item() / seen,
            "loss_s": sums[1].item() / seen if (warm or cfg.method != "nl") else None,
            "loss_c": sums[2].item() / seen if (cfg.method == "ncctfer" and not warm) else None,
            "train_acc": sums[3].item() / seen,
            "lr_backbone": _lr_used(cfg.lr_backbone, cfg.lr_decay, epoch),
            "lr_head": _lr_used(cfg.lr_head, cfg.lr_decay, epoch),
            "thresholds": [(s / c if c else None) for s, c in zip(t_sum.tolist(), t_cnt.tolist(), strict=True)] if selecting else None,
            "confident_frac": sums[5].item() / seen if selecting else None,
            "confident_precision": (sums[6].item() / sums[5].item() if sums[5] else None) if selecting and clean is not None else None,
            "confident_recall": (sums[6].item() / sums[7].item() if sums[7] else None) if selecting and clean is not None else None,
            "val_acc": val_acc if env.is_main else None,
            "test_acc": test_acc if env.is_main else None,
            "samples": int(seen),
            "images_per_s": sums[8].item() / train_seconds,
            "samples_per_s": seen / train_seconds,
            "data_wait_s": wait,
            "train_seconds": train_seconds,
            "seconds": time.perf_counter() - t_epoch,
        }
        metrics.append(record)
        if env.is_main:
            _save_checkpoint(ckpt_path, p.key, epoch, model, optimizer, scheduler, metrics)
            _write_metrics(run_dir, metrics)
        say({"event": "epoch_end", "metrics": record})
        distributed.barrier(env)

    if env.is_main:
        with atomic_path(run_dir / "model.pt") as tmp:
            torch.save(model.state_dict(), tmp)
    return written


def _lr_used(lr: float, decay: float | None, epoch: int) -> float:
    """The learning rate during ``epoch`` (1-based): ``lr * decay ** (epoch - 1)``."""
    return lr * (decay ** (epoch - 1) if decay else 1.0)


def default_workers(on_cuda: bool) -> int:
    """DataLoader workers: on the CPU one (augmenting a batch costs ~3% of a training step, a
    second worker would only take cores from the step); on CUDA up to 8."""
    n = os.cpu_count() or 1
    return min(8, max(1, n - 1)) if on_cuda else 1


def _accuracy(model, images, positions, labels, batch_size, device, amp, channels_last) -> float | None:
    """Top-1 accuracy of the pcc head on ``positions`` (resize only), or None when empty."""
    import torch

    from fernoise import data

    if len(positions) == 0:
        return None
    model.eval()
    correct = 0
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        for pos, x in data.eval_batches(images, positions, max(batch_size, 256)):
            pred = model(data.normalize(x, device, channels_last=channels_last))[0].argmax(1).cpu().numpy()
            correct += int((pred == labels[pos]).sum())
    model.train()
    return correct / len(positions)


def _save_checkpoint(path: Path, key: str, epoch: int, model, optimizer, scheduler, metrics: list[dict]) -> None:
    """Everything a resumed run needs, atomically. The data order, the views and the NL labels
    of epoch e are drawn from generators seeded by (seed, e), so the RNG state to restore is
    the epoch number; the global torch states are stored as well for completeness."""
    import torch

    state = {
        "key": key,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "metrics": metrics,
        "rng": {
            "scheme": "per-epoch generators seeded from (seed, epoch); next epoch below",
            "next_epoch": epoch + 1,
            "torch_cpu": torch.get_rng_state(),
            "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _write_metrics(run_dir: Path, metrics: list[dict]) -> None:
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in metrics))
