"""``ce``: cross-entropy on every sample, one head (the paper's Baseline; docs/methods.md)."""

from __future__ import annotations

from fernoise.methods._registry import register
from fernoise.methods.base import LossOut, Method, OptimDefaults


@register
class CE(Method):
    """Cross-entropy of ``pcc(f(x_w))`` on every sample, every epoch (warm-up is the same loss)."""

    name = "ce"
    summary = "cross-entropy on every sample (baseline)"
    source = "Gera et al. 2023, Table 5 Baseline"
    repo = "-"
    face_pretrained = True
    views = ("weak",)
    optim = OptimDefaults(lr_backbone=1e-4, lr_head=1e-3, epochs=40, batch_size=128)
    parts = ("s",)
    warmup_is_own_loss = True

    def loss(self, model, views, y, idx, *, epoch, warm, gen) -> LossOut:
        return self.warmup_loss(model, views, y)
