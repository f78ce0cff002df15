"""``pc``: cross-entropy on the confident samples only (the paper's Baseline+pc; docs/methods.md).

``--threshold labelled`` (default) is Eq. 1 as docs/methods.md reads it: ``T_c`` = mean of
``p[i, c]`` over the samples *labelled* c, every present class keeping at least one sample.
``--threshold batch`` is the authors' earlier DNFER code (1980x/DNFER ``algorithm/loss.py``,
class ``DCE``): ``T_c`` = mean of ``p[:, c]`` over the whole batch (keep where
``p(y|x) >= p(y)``), no per-class guarantee, and cross-entropy on every sample in a batch
where no sample is confident. ncctfer shares this step.
"""

from __future__ import annotations

from dataclasses import dataclass

from fernoise.methods._registry import register
from fernoise.methods.base import LossOut, Method, OptimDefaults, check_choice, option

THRESHOLDS = ("labelled", "batch")
THRESHOLD_HELP = (
    "Per-class threshold: labelled (Eq. 1: mean p[c] over the samples labelled c) or batch "
    "(the authors' DNFER code: mean p[c] over the whole batch, prior-corrected)."
)


def confident_step(logits, y, num_classes: int, threshold: str):
    """Eq. 1-3 on the positive head's logits ``(N, C)``: ``(L_s, confident (N,), T (C,))``."""
    import torch.nn.functional as F

    from fernoise.methods import losses

    p = F.softmax(logits.detach().float(), dim=1)
    if threshold == "labelled":
        thresholds = losses.class_thresholds(p, y, num_classes)
        conf = losses.confident_mask(p, y, thresholds)
        return losses.supervised_loss(logits, y, conf), conf, thresholds
    thresholds = losses.batch_thresholds(p)
    conf = losses.batch_confident_mask(p, y, thresholds)
    loss = (
        losses.supervised_loss(logits, y, conf)
        if bool(conf.any())
        else losses.cross_entropy(logits, y)
    )
    return loss, conf, thresholds


@dataclass(frozen=True)
class PCParams:
    threshold: str = option("labelled", "--threshold", THRESHOLD_HELP, choices=THRESHOLDS)

    def __post_init__(self) -> None:
        check_choice(self, "threshold")


@register
class PC(Method):
    """Eq. 1-3 of Gera et al. 2023 on the positive head ``pcc`` (weak view): per-class
    threshold, confident mask, cross-entropy on the confident samples. No ``ncc``."""

    name = "pc"
    summary = "cross-entropy on the class-adaptive-threshold confident samples (Baseline+pc)"
    source = "Gera et al. 2023, Table 5 Baseline+pc"
    repo = "-"
    face_pretrained = True
    Params = PCParams
    views = ("weak",)
    optim = OptimDefaults(lr_backbone=1e-4, lr_head=1e-3, epochs=40, batch_size=128)
    parts = ("s",)

    def loss(self, model, views, y, idx, *, epoch, warm, gen) -> LossOut:
        if warm:
            return self.warmup_loss(model, views, y)
        logits = model.pcc(model.features(views["weak"]))
        loss_s, conf, thresholds = confident_step(
            logits, y, self.num_classes, self.params.threshold
        )
        return LossOut(loss_s, {"s": loss_s}, logits, selected=conf, thresholds=thresholds)
