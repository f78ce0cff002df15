"""The one training loop (:func:`fit`); it names no method.

The method (``--method``: its modules, views, streams, loss, per-sample state, optimiser and
schedule, the pass before each epoch) is a plugin of ``fernoise/methods/`` (the API:
``fernoise/methods/base.py``). Per epoch: the method's ``start_epoch``, its batches
(:func:`_streams`; phases one after another), one optimiser step per batch with the loss run
inside the model call (DistributedDataParallel sees every module), the processes' sums and
per-sample state merged, validation and test accuracy, then the metrics line
(:class:`EpochTally`), the checkpoint and ``metrics.jsonl``, atomically; with
``--record-margins`` also ``margins.npy`` and ``margins_ids.json`` after the checkpoint that
holds them (:mod:`fernoise.train.margins`: the format; a resumed run restores them from it).

Trust: the checkpoint holds only tensors, numbers, strings, lists and dicts and is read with
``torch.load(weights_only=True)``; an unreadable, truncated or foreign one is treated as absent
(one warning, the run starts over). A non-finite loss stops the run with one line naming the
epoch and step, and nothing is written as finished.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fernoise.cache import (
    Workspace,
    atomic_write_json,
    atomic_write_text,
    bytes_sha256,
    clean_stale_tmp,
    stage_key,
)
from fernoise.checkpoint import save_torch
from fernoise.errors import FernoiseError
from fernoise.progress import Progress
from fernoise.train.config import (
    VERSION,
    TrainConfig,
)
from fernoise.train.margins import MarginLog
from fernoise.train.plan import Plan, key_inputs


# ----------------------------------------------------------------------------- the loop
class _Sums:
    """Per-epoch float64 sums by name, in one tensor so that torch.distributed adds them at once."""

    def __init__(self, names: list[str]):
        import torch

        self.index = {n: i for i, n in enumerate(names)}
        self.t = torch.zeros(len(names), dtype=torch.float64)

    def add(self, name: str, value: float) -> None:
        self.t[self.index[name]] += value

    def __getitem__(self, name: str) -> float:
        return self.t[self.index[name]].item()


class EpochTally:
    """One epoch's bookkeeping: what the steps' :class:`LossOut` add up to (losses, accuracy,
    thresholds, selection and relabelling against the known truth), summed across processes
    at the end, and the epoch's line of metrics.jsonl (:meth:`record`)."""

    def __init__(
        self, parts: list[str], n_rows: int, num_classes: int, truth: _Truth, margins: bool = False
    ):
        import torch

        self.parts = parts
        self.truth = truth
        self.sums = _Sums(
            [
                "loss",
                *(f"loss_{q}" for q in parts),
                *(f"has_{q}" for q in parts),
                "correct",
                "seen",
                "images",
                "selecting",
                "selected",
                "selected_clean",
                "clean",
                "relabelled",
                "relabelled_right",
            ]
        )
        self.t_sum = torch.zeros(num_classes, dtype=torch.float64)  # sum of T_c where present
        self.t_cnt = torch.zeros(num_classes, dtype=torch.float64)
        self.touched = torch.zeros(n_rows, dtype=torch.bool)  # rows this process trained on
        self.wait = 0.0  # seconds the step waited for its batch (loading not hidden by workers)
        self.bad_step = 0  # the first step whose loss was NaN or inf (0: none)
        self.division_rows = 0  # the rows a method's division covers (divided), 0: none
        # --record-margins: per row, the sum and count of its margins this epoch (float64)
        self.m_sum = torch.zeros(n_rows, dtype=torch.float64) if margins else None
        self.m_cnt = torch.zeros(n_rows, dtype=torch.float64) if margins else None

    def add(self, out, loss_value: float, y, rows, images: int) -> None:
        """One step: ``out`` (LossOut), its loss read back once, the lead stream's labels and
        rows, and the number of views made in all streams. With margins, each row's margin
        against its given label ``y`` on the first ``len(rows)`` logits (the rows' first view)."""
        import torch

        s, n, truth = self.sums, y.shape[0], self.truth
        with torch.no_grad():
            s.add("loss", loss_value * n)
            for q, v in out.parts.items():
                s.add(f"loss_{q}", v.item() * n)
                s.add(f"has_{q}", 1)
            trained_on = out.labels if out.labels is not None else y
            s.add("correct", (out.logits.argmax(1) == trained_on).sum().item())
            s.add("seen", n)
            s.add("images", images)
            if out.thresholds is not None:
                present = ~torch.isnan(out.thresholds)
                self.t_sum += torch.where(present, out.thresholds, 0).double().cpu()
                self.t_cnt += present.double().cpu()
            if out.selected is not None:
                sel = out.selected.cpu()
                s.add("selecting", 1)
                s.add("selected", sel.sum().item())
                if truth.clean is not None:
                    is_clean = truth.clean[rows]
                    s.add("selected_clean", (sel & is_clean).sum().item())
                    s.add("clean", is_clean.sum().item())
            if out.relabelled is not None:
                new = out.relabelled.cpu()
                s.add("relabelled", (new >= 0).sum().item())
                if truth.label_clean is not None:
                    right = (new >= 0) & (new == truth.label_clean[rows])
                    s.add("relabelled_right", right.sum().item())
            if self.m_sum is not None and self.m_cnt is not None:
                from fernoise.train.margins import batch_margins

                at = torch.as_tensor(rows, dtype=torch.long).cpu()
                m = batch_margins(out.logits[: len(at)], y[: len(at)]).cpu()
                self.m_sum.index_add_(0, at, m)
                self.m_cnt.index_add_(0, at, torch.ones_like(m))

    def divided(self, selected, rows) -> None:
        """A method's division of the epoch (:meth:`Method.epoch_selection`, equal on every
        process): the selection figures over the training ``rows`` replace the batches' sums."""
        if selected is None:
            return
        s, sel = self.sums, selected.cpu()[rows]
        for name in ("selecting", "selected", "selected_clean", "clean"):
            s.t[s.index[name]] = 0.0
        s.add("selecting", 1)
        s.add("selected", sel.sum().item())
        if self.truth.clean is not None:
            is_clean = self.truth.clean[rows]
            s.add("selected_clean", (sel & is_clean).sum().item())
            s.add("clean", is_clean.sum().item())
        self.division_rows = len(rows)

    def reduce(self, env) -> None:
        """Sum across processes (no-op alone)."""
        from fernoise import distributed

        distributed.all_sum(self.sums.t, env)
        distributed.all_sum(self.t_sum, env)
        distributed.all_sum(self.t_cnt, env)
        if self.m_sum is not None and self.m_cnt is not None:
            distributed.all_sum(self.m_sum, env)
            distributed.all_sum(self.m_cnt, env)

    def record(self, epoch: int, warm: bool, relabels: bool, **timing: Any) -> dict[str, Any]:
        """The epoch's metrics.jsonl line (``timing``: lrs, accuracies, seconds, in that order)."""
        s, clean = self.sums, self.truth.clean is not None
        seen = s["seen"]
        selecting = s["selecting"] > 0
        thresholds = (
            [
                (a / c if c else None)
                for a, c in zip(self.t_sum.tolist(), self.t_cnt.tolist(), strict=True)
            ]
            if self.t_cnt.any()
            else None
        )
        return {
            "epoch": epoch,
            "warmup": warm,
            "loss": s["loss"] / seen,
            **{f"loss_{q}": (s[f"loss_{q}"] / seen if s[f"has_{q}"] else None) for q in self.parts},
            "train_acc": s["correct"] / seen,
            "lr_backbone": timing.pop("lr_backbone"),
            "lr_head": timing.pop("lr_head"),
            "thresholds": thresholds,
            "confident_frac": s["selected"] / (self.division_rows or seen) if selecting else None,
            "confident_precision": _ratio(s["selected_clean"], s["selected"])
            if selecting and clean
            else None,
            "confident_recall": _ratio(s["selected_clean"], s["clean"])
            if selecting and clean
            else None,
            "relabelled": int(s["relabelled"]) if relabels else None,
            "relabel_precision": _ratio(s["relabelled_right"], s["relabelled"])
            if relabels and self.truth.label_clean is not None
            else None,
            "val_acc": timing.pop("val_acc"),
            "test_acc": timing.pop("test_acc"),
            "samples": int(seen),
            "images_per_s": s["images"] / timing["train_seconds"],
            "samples_per_s": seen / timing["train_seconds"],
            "data_wait_s": self.wait,
            "train_seconds": timing.pop("train_seconds"),
            "seconds": timing.pop("seconds"),
        }


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


@dataclass
class _Truth:
    """What the manifest knows about the labels: the given ones, which are clean, the clean ones."""

    labels: Any  # int64 tensor (n_rows,)
    clean: Any  # bool tensor (n_rows,) or None
    label_clean: Any  # int64 tensor (n_rows,) or None

    @classmethod
    def of(cls, p: Plan) -> _Truth:
        import torch

        label_clean = None
        if "label_clean" in p.rows.columns:
            lc = p.rows["label_clean"].fillna(-1).astype(np.int64).to_numpy().copy()
            label_clean = torch.from_numpy(lc)
        return cls(
            torch.from_numpy(p.labels.copy()),
            torch.from_numpy(~p.is_noisy) if p.is_noisy is not None else None,
            label_clean,
        )


@dataclass
class _Runtime:
    """Where and how the steps run: the device, precision, memory format, loaders, images."""

    p: Plan
    env: Any
    device: Any  # torch.device
    amp: bool
    channels_last: bool
    workers: int
    images: np.ndarray
    feeder: Any  # DeviceViewsFeed or data.ViewBatches
    on_device: bool
    batch_size: int

    @classmethod
    def make(cls, p: Plan, env, images: np.ndarray) -> _Runtime:
        import torch

        from fernoise import data

        cfg = p.cfg
        assert cfg.batch_size is not None  # resolved by TrainConfig
        device = torch.device(
            f"cuda:{env.local_rank}" if p.device == "cuda" and env.enabled else p.device
        )
        on_cuda = device.type == "cuda"
        if on_cuda:
            torch.backends.cudnn.benchmark = True  # fixed shapes: cuDNN picks its kernels once
        on_device = p.config.get("augment") == "device"
        feeder = (
            DeviceViewsFeed(images, cfg, device)
            if on_device
            else data.ViewBatches(images, cfg.image_size, cfg.randaug_magnitude)
        )
        return cls(
            p,
            env,
            device,
            amp=p.precision == "bf16",
            channels_last=True,  # faster for cuDNN and for oneDNN on the CPU (bench/train.py)
            workers=cfg.workers if cfg.workers is not None else default_workers(on_cuda),
            images=images,
            feeder=feeder,
            on_device=on_device,
            batch_size=cfg.batch_size,
        )

    def feed(self, batches: list) -> Any:
        """The batches' views: made on the device, or by DataLoader workers."""
        from fernoise import data

        if self.on_device:
            return self.feeder(batches)
        return data.loader(
            self.feeder, batches, workers=self.workers, pin_memory=self.device.type == "cuda"
        )

    def normalize(self, x):
        """uint8 views -> the backbone's input (its card's mean/std)."""
        from fernoise import backbones, data

        card = backbones.get(self.p.cfg.backbone)
        return data.normalize(
            x, self.device, channels_last=self.channels_last, mean=card.mean, std=card.std
        )

    def predict(self, model, fn, rows: np.ndarray):
        """:attr:`EpochContext.predict`: ``fn(model, x, idx)`` on un-augmented batches of
        ``rows``, this process's share, summed across processes; float32 CPU in ``rows`` order."""
        import torch

        from fernoise import data, distributed

        env = self.env
        mine = np.arange(len(rows))[env.rank :: env.world]
        out = None
        bs = max(self.batch_size, 256)
        model.eval()
        with (
            torch.no_grad(),
            torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp),
        ):
            done = 0
            for pos, x in data.eval_batches(self.images, rows[mine], bs):
                got = fn(model, self.normalize(x), torch.from_numpy(pos)).float().cpu()
                if out is None:
                    out = torch.zeros((len(rows), *got.shape[1:]), dtype=torch.float64)
                out[mine[done : done + len(pos)]] = got.double()
                done += len(pos)
        model.train()
        if out is None:
            raise FernoiseError(f"a pass over {len(rows)} rows left this process none to compute")
        distributed.all_sum(out, env)
        return out.float()


def _streams(p: Plan, method, epoch: int, warm: bool, env) -> tuple[list[dict[str, list]], bool]:
    """The epoch's batches per phase and stream (:meth:`Method.epoch_phases`, by default the one
    phase of :meth:`Method.epoch_rows`): the first phase's lead stream's as they always were,
    a later phase's lead shuffled with its own salt, every further stream shuffled (its own
    salt) and cycled to its phase lead's length; a further stream with fewer than 2 rows is
    left out. Also whether the method asked for several streams or phases (its loss then gets
    one entry per stream)."""
    from fernoise import data

    cfg, bs = p.cfg, p.cfg.batch_size
    assert bs is not None  # resolved by TrainConfig
    phases = method.epoch_phases(epoch, p.train_pos)
    out: list[dict[str, list]] = []
    k = 0  # the stream's index over every phase: its salt
    for streams in phases:
        batches: dict[str, list] = {}
        steps = 0
        for j, (name, rows) in enumerate(streams.items()):
            views = method.views_for(warm=warm, stream=name)
            kw = dict(seed=cfg.seed, epoch=epoch, views=views, rank=env.rank, world=env.world)
            if j == 0:
                batches[name] = data.epoch_batches(rows, bs, salt=(k,) if k else (), **kw)
                steps = len(batches[name])
                if not steps:
                    raise FernoiseError(
                        f"{method.name}: its stream {name!r} holds {len(rows)} row(s) at epoch "
                        f"{epoch}, too few for one batch of 2; nothing to train on"
                    )
            else:
                got: list = []
                for r in range(steps):  # round r: another shuffle, until it covers the lead
                    more = data.epoch_batches(rows, bs, salt=(k, r), **kw)
                    got.extend(more)
                    if not more or len(got) >= steps:
                        break
                if got:
                    batches[name] = got[:steps]
            k += 1
        out.append(batches)
    return out, len(phases) > 1 or any(len(s) > 1 for s in phases)


def _build(p: Plan, rt: _Runtime, say):
    """The method, its model (seeded: backbone first, then the method's modules in its order)
    with the start weights in every backbone, on the device, compiled when asked; and the
    method's optimiser and schedule."""
    import torch

    from fernoise import methods

    cfg, C = p.cfg, p.config["num_classes"]
    method = methods.create(
        cfg.method, cfg.method_params, num_classes=C, n_rows=len(p.rows), image_size=cfg.image_size
    )
    method._say = say  # Method.warn
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = methods.build_model(method, cfg.backbone)
    if p.config["pretrained"]:
        _load_pretrained(p, model, method, say)
    fmt = torch.channels_last if rt.channels_last else torch.contiguous_format
    model = model.to(rt.device).to(memory_format=fmt)
    if cfg.compile:
        compile_model(model, method, rt.device, say)
    optimizer, scheduler = method.configure_optimizers(model, cfg)
    return method, model, optimizer, scheduler


def _open_run_folder(p: Plan, env, metrics: list[dict], margins: MarginLog | None) -> list[Path]:
    """Rank 0: the run folder with config.json (and val_ids.json), metrics so far (and the
    margins so far with their ids, ``--record-margins``); the files a finished run holds."""
    run_dir = p.run_dir
    written = [run_dir / "config.json", run_dir / "metrics.jsonl", run_dir / "model.pt"]
    if margins is not None:
        written += margins.files(run_dir)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        clean_stale_tmp(
            run_dir
        )  # a checkpoint.pt half-written by a killed run (full disk, kill -9)
        atomic_write_json(run_dir / "config.json", p.config)
        if p.val_ids is not None:
            atomic_write_json(run_dir / "val_ids.json", p.val_ids)
            written.append(run_dir / "val_ids.json")
        _write_metrics(run_dir, metrics)
        if margins is not None:
            margins.write(run_dir, ids=True)
    return written


def fit(
    p: Plan,
    env=None,
    *,
    progress: Progress | None = None,
    fresh: bool = False,
    images: np.ndarray | None = None,
) -> list[Path]:
    """Train ``p`` to the end, resuming from ``checkpoint.pt`` when one of the same key exists
    (unless ``fresh``: ``--force`` starts over). ``images``: what :func:`_images` returned for
    ``p`` (decoded here when None).

    Returns the files written (rank 0); other ranks write nothing.
    """
    import torch

    from fernoise import distributed

    env = env or distributed.Dist()
    cfg = p.cfg
    assert cfg.warmup is not None  # resolved by TrainConfig
    say = progress if (progress and env.is_main) else (lambda event: None)
    for w in p.warnings:
        say({"event": "warning", "message": w})
    for n in p.notes:
        say({"event": "note", "message": n})
    if images is None:
        images = _images(p, env, say)  # the decoded crops; drops rows whose crop is unusable
    say({"event": "header", "message": header_line(p)})
    rt = _Runtime.make(p, env, images)
    truth = _Truth.of(p)
    method, model, optimizer, scheduler = _build(p, rt, say)
    ckpt_path = p.run_dir / "checkpoint.pt"
    margins = _margin_log(p)
    metrics, start = resume(
        ckpt_path, p, model, optimizer, scheduler, method, say, fresh=fresh, margins=margins
    )
    net = model
    if env.enabled:  # warm-up trains the main head only: other heads are idle then
        net = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
            find_unused_parameters=cfg.warmup > 0 or phased(method),
        )
    written = _open_run_folder(p, env, metrics, margins)
    parts = list(dict.fromkeys(["s", *method.parts]))  # loss_s always: the warm-up's part
    assert cfg.epochs is not None  # resolved by TrainConfig
    for epoch in range(start, cfg.epochs + 1):
        record = _epoch(
            p, rt, truth, method, model, net, optimizer, epoch, parts, say, start, margins
        )
        if scheduler is not None:
            scheduler.step()
        metrics.append(record)
        if env.is_main:
            _save_checkpoint(
                ckpt_path, p.key, epoch, model, optimizer, scheduler, method, metrics, margins
            )
            _write_metrics(p.run_dir, metrics)
            if margins is not None:  # after the checkpoint that holds them
                margins.write(p.run_dir)
        say({"event": "epoch_end", "metrics": record})
        distributed.barrier(env)
    if env.is_main:
        finish(p, model)  # model.pt; checkpoint.pt removed unless --keep-checkpoint
    return written


def _epoch(
    p: Plan,
    rt: _Runtime,
    truth: _Truth,
    method,
    model,
    net,
    optimizer,
    epoch,
    parts,
    say,
    start,
    margins: MarginLog | None = None,
) -> dict:
    """One epoch: the method's pass before it, its steps, the processes' sums and per-sample
    state merged (and the epoch's margins appended to ``margins``), validation and test
    accuracy; returns the epoch's metrics line."""
    from fernoise import distributed
    from fernoise.methods.base import EpochContext

    cfg, env = p.cfg, rt.env
    t_epoch = time.perf_counter()
    warm = epoch <= cfg.warmup
    groups = optimizer.param_groups  # the lrs in effect this epoch (the schedule steps after it)
    lrs = {"lr_backbone": groups[0]["lr"], "lr_head": groups[min(1, len(groups) - 1)]["lr"]}
    ctx = EpochContext(
        epoch=epoch,
        warm=warm,
        rows=np.array(p.train_pos, dtype=np.int64),  # a writable copy (torch indexing)
        labels=truth.labels,
        clean=truth.clean,
        device=rt.device,
        predict=lambda fn, rows=None: rt.predict(
            model, fn, p.train_pos if rows is None else np.asarray(rows, dtype=np.int64)
        ),
    )
    method.start_epoch(model, ctx)
    tally = EpochTally(
        parts, len(p.rows), p.config["num_classes"], truth, margins=margins is not None
    )
    t_train = time.perf_counter()
    steps = _steps(p, rt, method, net, optimizer, tally, epoch, warm, say, start)
    train_seconds = time.perf_counter() - t_train
    _stop_together_if_non_finite(p, env, tally.bad_step, epoch, steps, start)
    tally.reduce(env)
    if margins is not None:
        margins.end_epoch(tally.m_sum, tally.m_cnt)
    tally.divided(method.epoch_selection(), ctx.rows)
    merge_state(method, tally.touched, env)
    val_acc = test_acc = None
    if env.is_main:
        val_acc = _accuracy(model, method, rt, p.val_pos, p.labels)
        test_acc = _accuracy(model, method, rt, p.test_pos, p.labels)
    distributed.barrier(env)
    return tally.record(
        epoch,
        warm,
        _relabels(method),
        **lrs,
        val_acc=val_acc,
        test_acc=test_acc,
        train_seconds=train_seconds,
        seconds=time.perf_counter() - t_epoch,
    )


def _steps(p: Plan, rt: _Runtime, method, net, optimizer, tally, epoch, warm, say, start) -> int:
    """The epoch's optimiser steps over its batches (every phase and stream, :func:`_streams`),
    each added to ``tally``; returns the number of steps. A non-finite loss stops the run at
    once (alone) or at the epoch's end (under torch.distributed, every process together)."""
    import torch

    cfg = p.cfg
    phases, several = _streams(p, method, epoch, warm, rt.env)
    # The loss's only source of randomness (NL's complementary labels, partner permutations).
    gen = torch.Generator().manual_seed(
        int(np.random.default_rng([cfg.seed, epoch, 0xB1]).integers(2**62))
    )
    steps = sum(len(next(iter(b.values()))) for b in phases)
    say(
        {
            "event": "epoch_start",
            "epoch": epoch,
            "epochs": cfg.epochs,
            "batches": steps,
            "warmup": warm,
        }
    )
    net.train()
    clock = {"t_train": time.perf_counter(), "done": 0}
    for batches in phases:
        _phase(
            p, rt, method, net, optimizer, tally, batches, several, gen, clock, epoch, warm, say,
            start, steps,
        )  # fmt: skip
    return steps


def _phase(
    p,
    rt,
    method,
    net,
    optimizer,
    tally,
    batches,
    several,
    gen,
    clock,
    epoch,
    warm,
    say,
    start,
    steps,
) -> None:
    """One phase's steps (:func:`_steps`); ``clock`` carries the epoch's start and step count."""
    import torch

    env, truth = rt.env, tally.truth
    names = list(batches)
    lead = names[0]
    views = {s: method.views_for(warm=warm, stream=s) for s in names}
    t_ready = time.perf_counter()
    feeds = [rt.feed(batches[s]) for s in names]
    for got in zip(*feeds, strict=False):
        tally.wait += time.perf_counter() - t_ready
        clock["done"] += 1
        per = dict(zip(names, got, strict=True))
        rows = {s: b["positions"] for s, b in per.items()}
        y = {s: truth.labels[r].to(rt.device, non_blocking=True) for s, r in rows.items()}
        x = {s: {v: rt.normalize(b["views"][v]) for v in views[s]} for s, b in per.items()}
        args = (x, y, rows) if several else (x[lead], y[lead], rows[lead])
        with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.amp):
            out = net(method.loss, *args, epoch=epoch, warm=warm, gen=gen)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        method.after_step(out, *args[1:], epoch=epoch)
        for r in rows.values():
            tally.touched[r] = True
        # The loss is read back once per step anyway (the running loss on the progress bar),
        # so checking it here costs no extra device sync and names the exact step.
        loss_value = out.loss.item()
        if not math.isfinite(loss_value):
            tally.bad_step = tally.bad_step or clock["done"]
            if not env.enabled:  # under DDP every rank must stop together: checked after
                raise non_finite_error(
                    p, epoch, tally.bad_step, steps, loss_value, resumed=start > 1
                )
        tally.add(
            out, loss_value, y[lead], rows[lead], sum(len(rows[s]) * len(views[s]) for s in rows)
        )
        t_ready = time.perf_counter()
        sums = tally.sums
        say(
            {
                "event": "batch",
                "epoch": epoch,
                "done": clock["done"],
                "total": steps,
                "loss": sums["loss"] / sums["seen"],
                "images_per_s": sums["images"] * env.world / (t_ready - clock["t_train"]),
            }
        )


def _stop_together_if_non_finite(
    p: Plan, env, bad_step: int, epoch: int, steps: int, start: int
) -> None:
    """Under torch.distributed: when any process saw a non-finite loss this epoch, every process
    raises the same error, naming the first such step."""
    import torch

    from fernoise import distributed

    if not env.enabled:
        return
    firsts = torch.zeros(env.world, dtype=torch.float64)
    firsts[env.rank] = bad_step
    distributed.all_sum(firsts, env)
    if firsts.any():
        step = int(firsts[firsts > 0].min())
        raise non_finite_error(p, epoch, step, steps, None, resumed=start > 1)


def non_finite_error(
    p: Plan, epoch: int, step: int, steps: int, value: float | None, *, resumed: bool
) -> FernoiseError:
    """The one line that stops a run whose loss became NaN or inf: the epoch and step, what is
    kept (the checkpoint of the epochs before; no model.pt, no stamp) and, when the very first
    step of a fresh run from ``--pretrained`` fails, the start as the likely cause."""
    kept = f" (the checkpoint of epoch {epoch - 1} is kept)" if epoch > 1 else ""
    start = p.config.get("pretrained")
    if start and epoch == 1 and step == 1 and not resumed:
        cause = f"the start --pretrained {start} gives a non-finite loss at once: check that file"
    else:
        cause = "lower the learning rate (a new run) or check the data and the method's options"
    shown = (
        f" ({value})" if value is not None else ""
    )  # under DDP the rank that saw it knows the value
    return FernoiseError(
        f"non-finite loss{shown} at epoch {epoch}, step {step} of {steps}: training stopped "
        f"and nothing was written as finished{kept}; {cause}"
    )


def phased(method) -> bool:
    """Whether the method overrides ``Method.epoch_phases`` (a phase may leave parameters idle)."""
    from fernoise.methods.base import Method

    return type(method).epoch_phases is not Method.epoch_phases


def _relabels(method) -> bool:
    """Whether the method keeps a label store (``Method.relabels``)."""
    return bool(method.relabels)


def merge_state(method, touched, env) -> None:
    """Under torch.distributed, make every process's per-sample state equal: each row takes
    the mean of what the processes that trained on it this epoch wrote (floats), or the value
    of the highest such rank (integers, bools); untouched rows keep theirs. No-op alone."""
    import torch

    from fernoise import distributed

    state = method.state_dict()
    if not env.enabled or not state:
        return
    by_rank = torch.zeros(env.world, len(touched), dtype=torch.float64)
    by_rank[env.rank] = touched.double()
    distributed.all_sum(by_rank, env)  # which ranks trained on each row
    count = by_rank.sum(dim=0)
    ranks = torch.arange(1, env.world + 1, dtype=torch.float64).view(-1, 1)
    writer = (by_rank * ranks).amax(dim=0) - 1  # the highest rank that touched the row, -1 for none
    merged = {}
    for name, t in state.items():
        shape = (-1,) + (1,) * (t.dim() - 1)
        if t.is_floating_point():
            total = torch.where(touched.view(shape), t.double(), 0.0)
            distributed.all_sum(total, env)
            avg = total / count.clamp(min=1).view(shape)
            merged[name] = torch.where((count > 0).view(shape), avg.to(t.dtype), t)
        else:
            mine = (writer == env.rank).view(shape)
            total = torch.where(mine, t.double(), 0.0)
            distributed.all_sum(total, env)
            merged[name] = torch.where((count > 0).view(shape), total.to(t.dtype), t)
    method.load_state_dict(merged, n_rows=len(touched))


# ----------------------------------------------------------------------------- fit's hooks
def _margin_log(p: Plan) -> MarginLog | None:
    """``--record-margins``: the margins of the training rows, in ``p.train_pos`` order."""
    if not p.cfg.record_margins:
        return None
    return MarginLog(p.train_pos, p.rows["id"].astype(str).iloc[p.train_pos].tolist())


def _images(p: Plan, env, say) -> np.ndarray:
    """The crops of ``p.rows`` as the decoded uint8 array (rank 0 builds the cache, the other
    ranks map it). Rows whose crop is missing, undecodable or changed since align are dropped
    from the train/val/test positions and reported in one warning; ``p.config`` records them.
    Raises FernoiseError, before the run folder is written, when fewer than 2 training rows stay.
    """
    from fernoise import data, distributed

    ids = p.rows["id"].astype(str).tolist()
    kw: dict[str, Any] = dict(
        size=p.cfg.image_size,
        cache_dir=p.cache_dir or Workspace().root / ".fernoise" / "arrays",
        shas=p.shas,
    )
    if env.is_main:
        got = data.decoded_crops(
            p.paths, ids, progress=say, **kw
        )  # a full disk: OSError naming the cache file
    distributed.barrier(env)
    if not env.is_main:
        got = data.decoded_crops(p.paths, ids, **kw)
    if got.skipped:
        bad = np.fromiter(got.skipped, dtype=np.int64)
        first = next(iter(got.skipped))
        p.train_pos = np.setdiff1d(p.train_pos, bad)
        p.val_pos = np.setdiff1d(p.val_pos, bad)
        p.test_pos = np.setdiff1d(p.test_pos, bad)
        digest = bytes_sha256("\n".join(sorted(ids[i] for i in got.skipped)).encode())
        p.config.update(
            n_train=len(p.train_pos),
            n_val=len(p.val_pos),
            n_test=len(p.test_pos),
            skipped_crops=len(got.skipped),
            skipped_rows_sha256=digest,
            skipped_example={"path": p.paths[first], "reason": got.skipped[first]},
        )
        # These rows are part of the key (key_inputs): a re-run after `fernoise align` repaired
        # them is another run, never a hit on weights trained without them.
        p.key = stage_key("train", VERSION, p.key_params, key_inputs(p))
        p.run_dir = p.run_dir.parent / p.key[:16]
        p.config.update(key=p.key)
        say(
            {
                "event": "warning",
                "message": f"{len(got.skipped):,} rows skipped: their crop could not be used, "
                f"e.g. {p.paths[first]}: {got.skipped[first]}",
            }
        )
        if len(p.train_pos) < 2:
            raise FernoiseError(
                f"only {len(p.train_pos)} training row(s) have a usable crop; training needs at least 2; "
                "re-run `fernoise align`",
                flag="MANIFEST",
            )
    return got.array


def _load_pretrained(p: Plan, model, method, say) -> None:
    """The backbone start: the file plan() resolved, checked against the sha256 in the key, loaded
    by ``fernoise.train.weights`` (the one loader) into every backbone the method trains
    (``Method.backbones``); the match is said as a ``pretrained`` event."""
    from fernoise import backbones

    c = p.config
    family = backbones.family(p.cfg.backbone)
    for backbone in method.backbones(model).values():
        got = family.load_pretrained(backbone, c["pretrained"], partial=p.cfg.pretrained_partial)
        if got.sha256 != c["pretrained_sha256"]:
            raise FernoiseError(
                f"{c['pretrained']} changed since the run was planned (sha256 differs); "
                "run the command again",
                flag="--pretrained",
            )
    say(
        {
            "event": "pretrained",
            "path": got.path,
            "kind": c["pretrained_kind"],
            "sha256": c["pretrained_sha256"],
            "backbones": list(method.backbones(model)),
            "complete": got.complete,
            "table": got.table,
        }
    )


def header_line(p: Plan) -> str:
    """One line before epoch 1: rows per split, classes, device, precision, start weights, run folder."""
    c = p.config
    start = (
        f"pretrained {Path(c['pretrained']).name} ({c.get('pretrained_kind') or 'state_dict'})"
        if c.get("pretrained")
        else "random init"
    )
    val = f"{len(p.val_pos):,} val ({c.get('val_source')}{', ' + c['val_labels'] if c.get('val_labels') else ''})"
    return (
        f"{c['method']}: {len(p.train_pos):,} train, {val}, {len(p.test_pos):,} test rows; "
        f"{c['num_classes']} classes; {c['device']} {c['precision']}; {start}; run {p.run_dir}"
    )


def resume(
    path: Path,
    p: Plan,
    model,
    optimizer,
    scheduler,
    method,
    say,
    *,
    fresh: bool = False,
    margins: MarginLog | None = None,
) -> tuple[list[dict], int]:
    """``(metrics, first epoch)`` from ``checkpoint.pt`` when it holds this run (same key), else
    ``([], 1)``. Read with ``weights_only=True``; its key is checked before its contents are
    used; an unreadable, truncated or foreign checkpoint is treated as absent (one warning).
    The method's per-sample state is restored too, and the epochs' margins into ``margins``
    (``--record-margins``); when their size does not match the rows, the run starts over, and
    says so."""
    if fresh or not path.is_file():
        return [], 1
    ckpt = load_checkpoint(path, p.key)
    if isinstance(ckpt, str):
        say(
            {"event": "warning", "message": f"{path} {ckpt}; it is ignored and the run starts over"}
        )
        return [], 1
    saved = ckpt.get("method_state") or {}
    if not (isinstance(saved, dict) and method.load_state_dict(saved, n_rows=len(p.rows))):
        say(
            {
                "event": "warning",
                "message": f"{path}: the per-sample state of {method.name} does not match the "
                f"{len(p.rows):,} rows of this run; it is ignored and the run starts over",
            }
        )
        return [], 1
    if margins is not None and not margins.restore(ckpt.get("margins"), ckpt["epoch"]):
        say(
            {
                "event": "warning",
                "message": f"{path}: its margins do not match the {len(p.train_pos):,} training "
                "rows of this run; it is ignored and the run starts over",
            }
        )
        return [], 1
    model_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt_state = optimizer.state_dict()
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(opt_state)
        say(
            {
                "event": "warning",
                "message": f"{path} does not fit this run ({e.__class__.__name__}); "
                "it is ignored and the run starts over",
            }
        )
        return [], 1
    say({"event": "resume", "epoch": ckpt["epoch"], "run_dir": str(p.run_dir)})
    return list(ckpt["metrics"]), int(ckpt["epoch"]) + 1


def load_checkpoint(path: Path, key: str) -> dict | str:
    """The checkpoint at ``path`` if it is a readable checkpoint of ``key``, else a phrase
    saying why not. Never runs code: ``torch.load(weights_only=True)``."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, foreign or hostile files all end here
        return f"is not a readable checkpoint ({e.__class__.__name__})"
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("key"), str):
        return "is not a fernoise checkpoint"
    if ckpt["key"] != key:
        return "belongs to another run (its key differs)"
    epoch, metrics = ckpt.get("epoch"), ckpt.get("metrics")
    if not (
        isinstance(epoch, int)
        and isinstance(metrics, list)
        and len(metrics) == epoch
        and isinstance(ckpt.get("model"), dict)
        and isinstance(ckpt.get("optimizer"), dict)
    ):
        return "is incomplete (epoch, metrics, model or optimizer missing or inconsistent)"
    return ckpt


def finish(p: Plan, model) -> None:
    """Write ``model.pt`` atomically; remove ``checkpoint.pt`` unless ``keep_checkpoint``."""

    save_torch(model.state_dict(), p.run_dir / "model.pt")
    if not p.cfg.keep_checkpoint:
        (p.run_dir / "checkpoint.pt").unlink(missing_ok=True)


def default_workers(on_cuda: bool) -> int:
    """DataLoader workers: on the CPU one (augmenting a batch costs ~3% of a training step, a
    second worker would only take cores from the step); on CUDA up to 8."""
    n = os.cpu_count() or 1
    return min(8, max(1, n - 1)) if on_cuda else 1


def _accuracy(model, method, rt: _Runtime, positions, labels) -> float | None:
    """Top-1 accuracy of the method's test-time logits on ``positions`` (resize only), or None when empty."""
    import torch

    from fernoise import data

    if len(positions) == 0:
        return None
    model.eval()
    correct = 0
    on_cuda = rt.device.type == "cuda"  # on CUDA: bf16 and large batches whatever the precision
    batch_size = max(rt.batch_size, 1024 if on_cuda else 256)
    with (
        torch.no_grad(),
        torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.amp or on_cuda),
    ):
        for pos, x in data.eval_batches(rt.images, positions, batch_size):
            pred = method.logits(model, rt.normalize(x)).argmax(1).cpu().numpy()
            correct += int((pred == labels[pos]).sum())
    model.train()
    return correct / len(positions)


class DeviceViewsFeed:
    """``--augment device``: batches carry positions and seeds only; the views are made on the
    training device by :class:`fernoise.train.augment.DeviceViews`, no DataLoader workers. The next
    batch's per-sample draws (CPU, from the per-sample generators) are made in a thread while
    the current batch trains; they depend only on the seeds, so order and timing change nothing.
    ``feed(batches)`` yields ``{"positions": (B,) int64, "views": {name: uint8 (B,3,H,W)}}``."""

    def __init__(self, images, cfg: TrainConfig, device):
        from fernoise.train.augment import DeviceViews

        self.views = DeviceViews(images, cfg.image_size, cfg.randaug_magnitude, device)

    def __call__(self, batches):
        from concurrent.futures import ThreadPoolExecutor

        import torch

        if not batches:
            return
        with ThreadPoolExecutor(1, thread_name_prefix="fernoise-draws") as pool:
            ahead = pool.submit(self.views.draws, batches[0].seeds, batches[0].views)
            for i, b in enumerate(batches):
                d = ahead.result()
                if i + 1 < len(batches):
                    nxt = batches[i + 1]
                    ahead = pool.submit(self.views.draws, nxt.seeds, nxt.views)
                yield {
                    "positions": torch.from_numpy(b.positions),
                    "views": self.views(b.positions, b.seeds, b.views, draws=d),
                }


def compile_model(model, method, device, say) -> bool:
    """``--compile``: compile the stages of every backbone the method trains in place (``nn.Module.compile``: the
    state-dict keys stay ``backbone.*``; both ``features`` and ``feature_map`` use them).
    Where torch.compile cannot run here (no compiler, unsupported Python), one warning and
    the run goes on uncompiled. On a CPU it is skipped with a warning unless
    ``FERNOISE_COMPILE_CPU=1``: measured here, compiling ResNet-18 took 111 s for an epoch
    that runs in 2.6 s uncompiled, and recompiled five times. Returns whether it compiled."""
    import torch

    if torch.device(device).type == "cpu" and os.environ.get("FERNOISE_COMPILE_CPU", "0") in (
        "",
        "0",
    ):
        say(
            {
                "event": "warning",
                "message": "--compile on a CPU: skipped (compiling costs minutes and recompiles for "
                "each new shape, far more than it saves on a CPU); set FERNOISE_COMPILE_CPU=1 to "
                "compile anyway; training runs uncompiled",
            }
        )
        return False
    try:
        probe = torch.compile(lambda t: t * 2 + 1)
        ok = torch.equal(probe(torch.ones(4, device=device)), torch.full((4,), 3.0, device=device))
        if not ok:
            raise RuntimeError("the probe computed a wrong value")
    except Exception as e:  # noqa: BLE001 - inductor/dynamo raise many types when unavailable
        say(
            {
                "event": "warning",
                "message": f"--compile: torch.compile is unavailable here ({e.__class__.__name__}: "
                f"{str(e).splitlines()[0][:120] if str(e) else ''}); training runs uncompiled",
            }
        )
        return False
    for b in method.backbones(model).values():
        for name in b.compile_stages:  # ResNet-18: conv1, layer1..layer4
            getattr(b, name).compile()
    return True


def _save_checkpoint(
    path: Path,
    key: str,
    epoch: int,
    model,
    optimizer,
    scheduler,
    method,
    metrics: list[dict],
    margins: MarginLog | None = None,
) -> None:
    """Everything a resumed run needs, atomically, as tensors, numbers, strings, lists and dicts
    only (``torch.load(weights_only=True)`` reads it). The data order, the views and the loss's
    random draws of epoch e come from generators seeded by (seed, e), so the RNG state to
    restore is the epoch number; the global torch states are stored as well for completeness.
    ``method_state`` is the method's per-sample state (ELR's targets, SCN's labels);
    ``margins`` (``--record-margins`` only) the epochs' mean margins (:mod:`fernoise.train.margins`)."""
    import torch

    state = {
        "key": key,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "metrics": json.loads(json.dumps(metrics)),  # plain numbers, strings, lists, dicts
        "method_state": {k: v.detach().cpu().clone() for k, v in method.state_dict().items()},
        "rng": {
            "scheme": "per-epoch generators seeded from (seed, epoch); next epoch below",
            "next_epoch": epoch + 1,
            "torch_cpu": torch.get_rng_state(),
            "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
    }
    if margins is not None:
        state["margins"] = margins.state()
    save_torch(state, path)


def _write_metrics(run_dir: Path, metrics: list[dict]) -> None:
    atomic_write_text(
        run_dir / "metrics.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in metrics)
    )
