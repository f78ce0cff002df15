"""``gce``: generalized cross-entropy (Zhang & Sabuncu, NeurIPS 2018; docs/methods.md)."""

from __future__ import annotations

from dataclasses import dataclass

from fernoise.methods._registry import register
from fernoise.methods.base import LossOut, Method, OptimDefaults, check_range, option


@dataclass(frozen=True)
class GCEParams:
    q: float = option(
        0.7, "--gce-q", "GCE exponent q in (0, 1]: 0 -> cross-entropy, 1 -> MAE (paper: 0.7)."
    )

    def __post_init__(self) -> None:
        check_range(self.q, 0, 1, "--gce-q", lo_open=True)


@register
class GCE(Method):
    """``L = mean((1 - p_y^q) / q)`` on the ``pcc`` head, every sample (Zhang & Sabuncu 2018,
    Eq. 6, the untruncated L_q loss). No official code; q = 0.7 as in the paper's experiments.
    The paper trains CIFAR with SGD: the optimiser defaults are fernoise's FER ones."""

    name = "gce"
    summary = "generalized cross-entropy (1 - p_y^q)/q, between CE and MAE"
    source = "Zhang & Sabuncu, NeurIPS 2018"
    repo = "- (no official code)"
    face_pretrained = False
    Params = GCEParams
    views = ("weak",)
    optim = OptimDefaults(lr_backbone=1e-4, lr_head=1e-3, epochs=40, batch_size=128)
    parts = ("s", "gce")
    warmup = 0  # the paper trains L_q from the first epoch (no warm-up)

    def loss(self, model, views, y, idx, *, epoch, warm, gen) -> LossOut:
        from fernoise.methods import losses

        if warm:
            return self.warmup_loss(model, views, y)
        logits = self.logits(model, views["weak"])
        gce = losses.generalized_cross_entropy(logits, y, self.params.q)
        return LossOut(gce, {"gce": gce}, logits)
