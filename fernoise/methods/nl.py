"""``nl``: negative learning with a random complementary label (NLNL; docs/methods.md)."""

from __future__ import annotations

from fernoise.methods._registry import register
from fernoise.methods.base import LossOut, Method, OptimDefaults


@register
class NL(Method):
    """NLNL (Kim et al., ICCV 2019) as the paper's Baseline+nl: per sample a complementary label
    ``ybar != y`` drawn uniformly from the epoch's generator, loss ``-log(1 - p[ybar])``."""

    name = "nl"
    summary = "negative learning: push down a random complementary label (Baseline+nl)"
    source = "Kim et al., ICCV 2019 (NLNL); Gera et al. 2023, Table 5 Baseline+nl"
    repo = "ydkim1293/NLNL-Negative-Learning-for-Noisy-Labels main_NL.py"
    face_pretrained = True
    views = ("weak",)
    optim = OptimDefaults(lr_backbone=1e-4, lr_head=1e-3, epochs=40, batch_size=128)
    parts = ("s", "nl")

    def loss(self, model, views, y, idx, *, epoch, warm, gen) -> LossOut:
        from fernoise.methods import losses

        if warm:
            return self.warmup_loss(model, views, y)
        logits = model.pcc(model.features(views["weak"]))
        ybar = losses.complementary_labels(y, self.num_classes, gen)
        nl = losses.negative_learning_loss(logits, ybar)
        return LossOut(nl, {"nl": nl}, logits)
