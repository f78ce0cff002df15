"""``sce``: symmetric cross-entropy (Wang et al., ICCV 2019; docs/methods.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fernoise.methods._registry import register
from fernoise.methods.base import LossOut, Method, OptimDefaults, check_range, option


@dataclass(frozen=True)
class SCEParams:
    alpha: float = option(0.1, "--sce-alpha", "Weight of the cross-entropy term (CIFAR-10: 0.1).")
    beta: float = option(
        1.0, "--sce-beta", "Weight of the reverse cross-entropy term (CIFAR-10: 1.0)."
    )
    log_zero: float = option(
        math.log(1e-4),
        "--sce-log-zero",
        "log 0 in RCE: A = log 1e-4 = -9.21034 (both official codes clamp the one-hot "
        "at 1e-4); the paper's text says A = -4 (--sce-log-zero -4).",
    )

    def __post_init__(self) -> None:
        check_range(self.alpha, 0, None, "--sce-alpha")
        check_range(self.beta, 0, None, "--sce-beta")
        check_range(self.log_zero, None, 0, "--sce-log-zero", hi_open=True)


@register
class SCE(Method):
    """``L = alpha CE + beta RCE``, ``RCE = -sum_c p_c log(onehot_c)`` with log 0 = A (Wang et
    al. 2019, Eq. 5-6; HanxunH/SCELoss-Reproduce ``loss.py``). Both official codes (that one
    and the authors' Keras ``yisenwang/symmetric_cross_entropy_for_noisy_labels``) clamp the
    one-hot to 1e-4, i.e. A = log 1e-4 = -9.210340: fernoise follows the code (the paper's text
    says A = -4: ``--sce-log-zero -4``). CIFAR-10 weights alpha 0.1, beta 1.0.
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
    warmup = 0  # HanxunH/SCELoss-Reproduce trains SCE from the first epoch

    def loss(self, model, views, y, idx, *, epoch, warm, gen) -> LossOut:
        from fernoise.methods import losses

        if warm:
            return self.warmup_loss(model, views, y)
        logits = self.logits(model, views["weak"])
        ce = self.params.alpha * losses.cross_entropy(logits, y)
        rce = self.params.beta * losses.reverse_cross_entropy(logits, y, self.params.log_zero)
        return LossOut(ce + rce, {"ce": ce, "rce": rce}, logits)
