"""``coteaching``: Co-teaching (Han et al., NeurIPS 2018), two networks that teach each other.

As the official code runs it (bhanML/Co-teaching ``main.py`` and ``loss.py``; docs/methods.md):

- Two networks of one architecture, initialised independently: network 1 is ``backbone`` +
  ``pcc`` (the test-time head), network 2 is ``backbone2`` + ``pcc2``. Both train from one
  Adam: Adam is per parameter, so this is the official two optimisers with equal settings.
- Per mini-batch (``loss_coteaching``): each network's per-sample cross-entropy, sorted; each
  keeps its ``num_remember = int((1 - R(T)) * N)`` smallest-loss samples, and each network
  trains on the *other's* selection (the exchange). The official loss is the mean
  cross-entropy over that selection divided once more by ``num_remember``; kept as it is
  (Adam is nearly invariant to the scale). ``num_remember`` is at least 1 here (the official
  code would divide by zero).
- The forget rate ``R(T)``: ``linspace(0, forget_rate ** c, Tk)`` over the first ``Tk``
  epochs, then ``forget_rate`` (``rate_schedule``, indexed by the official epoch number).
- The optimiser: Adam, lr 0.001; from epoch ``epoch_decay_start`` on, the lr falls linearly,
  ``lr * (n_epoch - e) / (n_epoch - epoch_decay_start)``, and beta1 drops from 0.9 to 0.1
  (``adjust_learning_rate``, at the start of every epoch).
- Epochs: the official loop evaluates the random networks as its epoch 0 and trains epochs
  1 .. n_epoch - 1; fernoise's epoch e is the official epoch e, so ``n_epoch = --epochs + 1``
  and the official 200 is ``--epochs 199``.
- Test time: network 1 (the official code reports both networks' accuracies; fernoise scores
  one model). The selection logged (``confident_precision``: the official "pure ratio 1") is
  network 1's small-loss set.
- No warm-up (the official code has none); ``--warmup E`` trains network 1 alone with plain
  cross-entropy for E epochs.

The official default sets ``forget_rate`` to the noise rate, which fernoise's method does not
see; ``--coteaching-forget-rate`` defaults to the official 0.2 (its default noise rate), and
the first epoch warns when a corrupted manifest's realised noise rate is far from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from fernoise.methods._registry import register
from fernoise.methods.base import LossOut, Method, OptimDefaults, check_range, option

MOM1, MOM2 = 0.9, 0.1  # beta1 before and after epoch_decay_start (official mom1, mom2)


@dataclass(frozen=True)
class CoteachingParams:
    forget_rate: float = option(
        0.2,
        "--coteaching-forget-rate",
        "Co-teaching: share of each batch dropped as large-loss, in [0, 1) (official: the noise "
        "rate; its default 0.2).",
    )
    num_gradual: int = option(
        10,
        "--coteaching-tk",
        "Co-teaching: epochs Tk over which the forget rate ramps up from 0 (official 10).",
    )
    exponent: float = option(
        1.0,
        "--coteaching-c",
        "Co-teaching: exponent c of the ramp's end, forget_rate ** c (official 1).",
    )
    epoch_decay_start: int = option(
        80,
        "--coteaching-decay-start",
        "Co-teaching: epoch from which the lr falls linearly to 0 and Adam's beta1 is 0.1 "
        "(official 80 of 200).",
    )

    def __post_init__(self) -> None:
        check_range(self.forget_rate, 0, 1, "--coteaching-forget-rate", hi_open=True)
        check_range(self.num_gradual, 1, None, "--coteaching-tk")
        check_range(self.exponent, 0, None, "--coteaching-c", lo_open=True)
        check_range(self.epoch_decay_start, 1, None, "--coteaching-decay-start")


def forget_rate(params: CoteachingParams, epoch: int) -> float:
    """``rate_schedule[epoch]``: ``linspace(0, forget_rate ** c, Tk)[epoch]`` for
    ``epoch < Tk``, else ``forget_rate``."""
    tk = params.num_gradual
    if epoch < tk:
        top = params.forget_rate**params.exponent
        return top * epoch / (tk - 1) if tk > 1 else 0.0
    return params.forget_rate


def lr_beta1(params: CoteachingParams, epoch: int, epochs: int) -> tuple[float, float]:
    """``(lr factor, beta1)`` of ``epoch`` (``alpha_plan``/``beta1_plan`` with
    ``n_epoch = epochs + 1``)."""
    n_epoch, start = epochs + 1, params.epoch_decay_start
    if epoch < start:
        return 1.0, MOM1
    return (n_epoch - epoch) / (n_epoch - start), MOM2


class Schedule:
    """Sets every group's lr (its base lr times the factor) and Adam's beta1 for the epoch
    about to run: at creation for epoch 1, then after every epoch (``step``)."""

    def __init__(self, optimizer, params: CoteachingParams, epochs: int):
        self.optimizer, self.params, self.epochs = optimizer, params, epochs
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.epoch = 1
        self._apply()

    def _apply(self) -> None:
        factor, beta1 = lr_beta1(self.params, self.epoch, self.epochs)
        for g, lr in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            g["lr"] = lr * factor
            g["betas"] = (beta1, g["betas"][1])  # only beta1 changes, as the official code

    def step(self) -> None:
        self.epoch += 1
        self._apply()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.base_lrs = int(state["epoch"]), [float(x) for x in state["base_lrs"]]
        self._apply()


@register
class Coteaching(Method):
    """Two networks; each trains on the other's small-loss samples (module docstring)."""

    name = "coteaching"
    summary = "two networks, each trained on the other's small-loss samples"
    source = "Han et al., NeurIPS 2018"
    repo = "bhanML/Co-teaching main.py, loss.py"
    face_pretrained = False
    Params = CoteachingParams
    views = ("weak",)
    optim = OptimDefaults(lr_backbone=1e-3, lr_head=1e-3, epochs=199, batch_size=128)
    parts = ("s", "net1", "net2")
    part_captions = {"net1": "network 1 on 2's selection", "net2": "network 2 on 1's selection"}
    warmup = 0  # the official code has none

    def build(self, model) -> None:
        from torch import nn

        model.add_module("pcc", nn.Linear(model.feature_dim, self.num_classes))
        model.add_module("backbone2", model.new_backbone())
        model.add_module("pcc2", nn.Linear(model.feature_dim, self.num_classes))

    def backbones(self, model) -> dict:
        return {"backbone": model.backbone, "backbone2": model.backbone2}

    def configure_optimizers(self, model, cfg):
        optimizer, _ = super().configure_optimizers(model, cfg)
        return optimizer, Schedule(optimizer, self.params, cfg.epochs)

    def start_epoch(self, model, ctx) -> None:
        if ctx.epoch != 1 or ctx.clean is None or not len(ctx.rows):
            return
        noise = 1.0 - ctx.clean[ctx.rows].float().mean().item()
        if abs(noise - self.params.forget_rate) > 0.1:
            self.warn(
                f"coteaching: the training rows' noise rate is {noise:.2f}, the forget rate "
                f"{self.params.forget_rate:.2f}; the official code sets them equal "
                f"(--coteaching-forget-rate {noise:.2f})"
            )

    def loss(self, model, views, y, idx, *, epoch, warm, gen) -> LossOut:
        import torch
        import torch.nn.functional as F

        if warm:
            return self.warmup_loss(model, views, y)
        x = views["weak"]
        logits1 = model.pcc(model.features(x)).float()
        logits2 = model.pcc2(model.backbone2(x)).float()
        sorted1 = torch.argsort(F.cross_entropy(logits1, y, reduction="none").detach())
        sorted2 = torch.argsort(F.cross_entropy(logits2, y, reduction="none").detach())
        keep = max(1, int((1 - forget_rate(self.params, epoch)) * len(y)))
        keep1, keep2 = sorted1[:keep], sorted2[:keep]
        loss1 = F.cross_entropy(logits1[keep2], y[keep2]) / keep  # network 1 on 2's selection
        loss2 = F.cross_entropy(logits2[keep1], y[keep1]) / keep
        selected = torch.zeros(len(y), dtype=torch.bool, device=y.device)
        selected[keep1] = True
        return LossOut(
            loss1 + loss2,
            {"net1": loss1.detach(), "net2": loss2.detach()},
            logits1.detach(),
            selected=selected,
        )
