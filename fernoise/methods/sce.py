"""``sce``: symmetric cross-entropy (Wang et al., ICCV 2019; docs/methods.md)."""

from __future__ import annotations

from dataclasses import dataclass

from fernoise.methods import register
from fernoise.methods.base import LossOut, Method, OptimDefaults, check_range, option


@dataclass(frozen=True)
class SCEParams:
    alpha: float = option(0.1, "--sce-alpha", "Weight of the cross-entropy term (CIFAR-10: 0.1).")
    beta: float = option(1.0, "--sce-beta", "Weight of the reverse cross-entropy term (CIFAR-10: 1.0).")
    log_zero: float = option(-4.0, "--sce-log-zero",
                             "log 0 in RCE (the paper's A = -4; the official code's clamp gives log 1e-4 = -9.21).")

    def __post_init__(self) -> None:
        check_range(self.alpha, 0, None, "--sce-alpha")
        check_range(self.beta, 0, None, "--sce-beta")
        check_range(self.log_zero, None, 0, "--sce-log-zero", hi_open=True)


@register
class SCE(Method):
    """``L = alpha CE + beta RCE``, ``RCE = -sum_c p_c log(onehot_c)`` with log 0 = A (Wang et
    al. 2019, Eq. 5-6; HanxunH/SCELoss-Reproduce ``loss.py``). The paper sets A = -4; the
    official code clamps the one-hot to 1e-4, i.e. A = log 1e-4 = -9.21: fernoise follows the
    paper (``--sce-log-zero -9.2103`` gives the code's). CIFAR-10 weights alpha 0.1, beta 1.0.
    The paper trains CIFAR with SGD: the optimiser defaults are fernoise's FER ones."""

    name = "sce"
    summary = "symmetric cross-entropy: alpha CE + beta reverse CE"
    source = "Wang et al., ICCV 2019"
    repo = "HanxunH/SCELoss-Reproduce loss.py"
    face_pretrained = False
    Params = SCEParams
    views = ("weak",)
    optim = OptimDefaults(lr_backbone=1e-4, lr_head=1e-3, epochs=40, batch_size=128)
    parts = ("s", "ce", "rce")

    def loss(self, model, views, y, idx, *, epoch, warm, gen) -> LossOut:
        from fernoise import losses

        if warm:
            return self.warmup_loss(model, views, y)
        logits = self.logits(model, views["weak"])
        ce = self.params.alpha * losses.cross_entropy(logits, y)
        rce = self.params.beta * losses.reverse_cross_entropy(logits, y, self.params.log_zero)
        return LossOut(ce + rce, {"ce": ce, "rce": rce}, logits)
