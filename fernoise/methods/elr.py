"""``elr``: early-learning regularization (Liu et al., NeurIPS 2020; docs/methods.md)."""

from __future__ import annotations

from dataclasses import dataclass

from fernoise.methods._registry import register
from fernoise.methods.base import LossOut, Method, OptimDefaults, check_range, option


@dataclass(frozen=True)
class ELRParams:
    lam: float = option(3.0, "--elr-lambda", "Weight of the ELR term (CIFAR-10 config: 3).")
    beta: float = option(
        0.7, "--elr-beta", "Momentum of the per-sample target (CIFAR-10 config: 0.7), in [0, 1)."
    )

    def __post_init__(self) -> None:
        check_range(self.lam, 0, None, "--elr-lambda")
        check_range(self.beta, 0, 1, "--elr-beta", hi_open=True)


@register
class ELR(Method):
    """``L = CE + lam * mean log(1 - <t_i, p_i>)`` with per-sample targets
    ``t_i <- beta t_i + (1 - beta) p_i / sum(p_i)`` (p detached), updated *before* the term is
    computed, ``p = clamp(softmax, 1e-4, 1 - 1e-4)``, targets starting at zero: the official
    ``elr_loss`` (shengliu66/ELR ``ELR/model/loss.py``), CIFAR-10 config lam 3, beta 0.7.
    Warm-up epochs train plain CE but update the targets all the same, so the term starts from
    a running average of the warm-up predictions. The targets (``n_rows x C``, on the CPU)
    are per-sample state: checkpointed, restored on resume."""

    name = "elr"
    summary = (
        "early-learning regularization: CE + pull towards each sample's running-average prediction"
    )
    source = "Liu et al., NeurIPS 2020"
    repo = "shengliu66/ELR ELR/model/loss.py"
    face_pretrained = False
    Params = ELRParams
    views = ("weak",)
    optim = OptimDefaults(lr_backbone=1e-4, lr_head=1e-3, epochs=40, batch_size=128)
    parts = ("s", "ce", "elr")
    warmup = 0  # shengliu66/ELR trains CE + ELR from the first epoch

    def __init__(self, params=None, *, num_classes: int, n_rows: int, image_size: int = 224):
        import torch

        super().__init__(params, num_classes=num_classes, n_rows=n_rows, image_size=image_size)
        self.targets = torch.zeros(n_rows, num_classes, dtype=torch.float32)

    def loss(self, model, views, y, idx, *, epoch, warm, gen) -> LossOut:
        from fernoise.methods import losses

        logits = self.logits(model, views["weak"])
        p = losses.elr_probs(logits)
        t = losses.elr_target_update(self.targets[idx].to(p.device), p, self.params.beta)
        self.targets[idx] = t.cpu()
        ce = losses.cross_entropy(logits, y)
        if warm:
            return LossOut(ce, {"s": ce}, logits)
        reg = self.params.lam * losses.elr_regularizer(t, p)
        return LossOut(ce + reg, {"ce": ce, "elr": reg}, logits)

    def state_dict(self):
        return {"targets": self.targets}
