"""``sop``: SOP+ (Liu, Zhu, Qu, You, ICML 2022), label noise modelled by a sparse
over-parameterisation ``u*u - v*v`` per sample, plus class balance and weak/strong consistency.

As the official code runs it (shengliu66/SOP ``model/loss.py`` ``overparametrization_loss``,
``train.py``, ``trainer/trainer.py``, ``config_cifar100.json``, the only config it ships;
docs/methods.md):

- One network (``backbone`` + ``pcc``) and two per-sample tables, ``u`` (``n_rows x 1``) and
  ``v`` (``n_rows x C``), drawn ``N(0, 1e-8)`` (``init_param``: ``u`` first, then ``v``) right
  after the network's modules, from the run's seeded generator (``build`` runs under
  ``torch.manual_seed(--seed)``).
- Per batch, with one-hot labels ``y`` and the weak view's logits ``z``:
  ``U = clamp(u_i^2 * y, 0, 1)``, ``V = clamp(v_i^2 * (1 - y), 0, 1)``,
  ``p~ = clamp(softmax(z) + U - V.detach(), min=1e-4)``, L1-normalised (``eps`` 1e-4), clamped
  to ``[1e-4, 1]``; ``L = -mean(sum y log p~) + sum((onehot(argmax z) + U - V - y)^2) / B``.
  The network learns only from the first term (``argmax`` is detached); ``v`` only from the
  second (``V`` is detached inside ``p~``); ``u`` from both.
- SOP+ adds ``--sop-balance`` (0.1) times ``-sum(prior * log clamp(mean p~, 1e-4, 1))`` (the
  official value: ``KL(prior || mean p~)`` plus the prior's entropy, the same gradient) and
  ``--sop-consistency`` (0.9) times ``mean KL(softmax(z_weak).detach() || softmax(z_strong))``.
  Both views go through the network in one forward (``cat([weak, strong])``, so BatchNorm sees
  both), as the official trainer does; with ``--sop-consistency 0`` only the weak view is made.
- ``u`` and ``v`` have their own SGD, stepped after every batch together with the network's:
  lr ``--sop-lr-u`` 1 and ``--sop-lr-v`` 10 (the README's symmetric-noise setting; asymmetric:
  0.1 and 100), momentum 0, weight decay 0: ``u_i <- u_i - lr_u * dL/du_i`` for the batch's rows.
- The network: SGD lr 0.02, momentum 0.9, weight decay 1e-3, cosine annealing over the epochs
  to ``eta_min`` = lr / 100 (the official 2e-4), stepped after every epoch; 300 epochs, batch
  128; no warm-up (``--warmup E`` trains plain cross-entropy, ``u``/``v`` untouched, as the
  official ``_warmup_epoch``; unlike it, fernoise's schedule steps in warm-up epochs too).
- Test time: the network's logits.

fernoise's own choices (the code leaves them open):

- How ``u`` and ``v`` are stepped: they are per-sample state (CPU tensors, checkpointed and
  restored on resume, merged across processes by the loop), not model parameters. ``loss``
  copies the batch's rows to the device as leaf tensors; ``after_step`` applies their gradients
  (``table[rows] = leaf - lr * grad``, the SGD step). A row that appears twice in a batch gets
  the sum of its gradients, as autograd gives the official ``u[index]``. Under
  torch.distributed each process steps its own rows with its gradient divided by the number
  of processes: the network's gradient is DDP's mean, so every update is the gradient step of
  one loss, the mean over all processes' batches (as one process with their joint batch).
- ``--sop-prior marginal`` (not in the code): the training labels' class frequencies as the
  balance prior instead of uniform (FER datasets are far from balanced).
- ``selected`` (the rows treated as clean, for the per-epoch noise-detection figures; the
  official code reports none): ``min(u_i^2, 1) < 0.5`` before the step. The noise term at the
  label's entry, ``U_y``, is driven to 1 for a sample whose label the network does not predict
  (the MSE term's fixed point ``onehot(argmax z) + U - V = y``) and to 0 for one it does, so
  0.5 is the midpoint; early on (``u`` ~ 1e-8) every row counts as clean.
- The strong view: fernoise's ``strong`` is the weak view (its crop and flip) plus RandAugment
  (2 ops, ``--randaug-magnitude``); the official second view is its own random crop and flip of
  the image after AutoAugment's CIFAR-10 policy, with Cutout 16 (of 32 px) after normalising.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fernoise.methods._registry import register
from fernoise.methods.base import (
    LossOut,
    Method,
    OptimDefaults,
    check_choice,
    check_range,
    option,
)

if TYPE_CHECKING:
    from torch import Tensor

EPS = 1e-4  # the official eps of p~, its normalisation and the balance term's mean
INIT_STD = 1e-8  # reparam_arch std: u, v ~ N(0, 1e-8)
MOMENTUM = 0.9  # the network's SGD (config "optimizer")
ETA_MIN_RATIO = 0.01  # CosineAnnealingLR eta_min 0.0002 of lr 0.02
CLEAN_BELOW = 0.5  # selected: min(u^2, 1) below this


@dataclass(frozen=True)
class SOPParams:
    lr_u: float = option(
        1.0,
        "--sop-lr-u",
        "SOP+: learning rate of the per-sample u (official 1 for symmetric noise, 0.1 asymmetric).",
    )
    lr_v: float = option(
        10.0,
        "--sop-lr-v",
        "SOP+: learning rate of the per-sample v (official 10 for symmetric noise, 100 asymmetric).",
    )
    balance: float = option(
        0.1, "--sop-balance", "SOP+: weight of the class-balance term (official 0.1; 0 = off)."
    )
    consistency: float = option(
        0.9,
        "--sop-consistency",
        "SOP+: weight of the weak/strong consistency term (official 0.9; 0 = SOP, one view).",
    )
    prior: str = option(
        "uniform",
        "--sop-prior",
        "SOP+: prior of the balance term: uniform (official) or marginal (the training "
        "labels' class frequencies).",
        choices=("uniform", "marginal"),
    )

    def __post_init__(self) -> None:
        check_range(self.lr_u, 0, None, "--sop-lr-u")
        check_range(self.lr_v, 0, None, "--sop-lr-v")
        check_range(self.balance, 0, None, "--sop-balance")
        check_range(self.consistency, 0, None, "--sop-consistency")
        check_choice(self, "prior")


def sop_loss(
    z: Tensor,
    z_strong: Tensor | None,
    onehot: Tensor,
    u: Tensor,
    v: Tensor,
    prior: Tensor,
    *,
    balance: float,
    consistency: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The official ``overparametrization_loss`` on weak logits ``z`` ``(B, C)`` (and the strong
    view's ``z_strong``, or None), one-hot labels ``onehot``, the batch's rows ``u`` ``(B, 1)``
    and ``v`` ``(B, C)``; ``prior`` ``(C,)`` of the balance term. Returns ``(loss, parts)``:
    ``ce``, ``mse`` and, when their weight is positive, the weighted ``balance`` and
    ``consistency``, summed in the official order."""
    import torch
    import torch.nn.functional as F

    big_u = torch.clamp(u**2 * onehot, 0, 1)
    big_v = torch.clamp(v**2 * (1 - onehot), 0, 1)
    p = torch.clamp(F.softmax(z, dim=1) + big_u - big_v.detach(), min=EPS)
    p = torch.clamp(F.normalize(p, p=1, eps=EPS), min=EPS, max=1.0)
    hard = F.one_hot(z.detach().argmax(dim=1), z.shape[1]).to(z.dtype)
    parts = {
        "ce": torch.mean(-torch.sum(onehot * torch.log(p), dim=-1)),
        "mse": F.mse_loss(hard + big_u - big_v, onehot, reduction="sum") / len(onehot),
    }
    if balance > 0:
        mean_p = torch.clamp(torch.mean(p, dim=0), min=EPS, max=1.0)
        parts["balance"] = balance * -(prior * torch.log(mean_p)).sum()
    if z_strong is not None and consistency > 0:
        target = F.softmax(z, dim=1).detach()
        kl = F.kl_div(F.log_softmax(z_strong, dim=1), target, reduction="none").sum(dim=1)
        parts["consistency"] = consistency * torch.mean(kl)
    loss = parts["ce"]
    for name in ("mse", "balance", "consistency"):
        if name in parts:
            loss = loss + parts[name]
    return loss, parts


def _world() -> int:
    """Processes of this run under torch.distributed (1 alone)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@register
class SOP(Method):
    """SOP+: per-sample ``u``, ``v`` model each label's noise; class balance and weak/strong
    consistency on top (module docstring)."""

    name = "sop"
    summary = "SOP+: per-sample sparse noise terms u, v with their own SGD, balance, consistency"
    source = "Liu, Zhu, Qu, You, ICML 2022"
    repo = "shengliu66/SOP model/loss.py, train.py, trainer/trainer.py"
    face_pretrained = False
    Params = SOPParams
    views = ("weak", "strong")
    optim = OptimDefaults(
        lr_backbone=0.02, lr_head=0.02, weight_decay=1e-3, epochs=300, batch_size=128
    )
    parts = ("s", "ce", "mse", "balance", "consistency")
    part_captions = {
        "ce": "cross-entropy of p~",
        "mse": "noise term fit",
        "balance": "class balance",
        "consistency": "weak/strong consistency",
    }
    warmup = 0  # config "warmup": 0

    def __init__(self, params=None, *, num_classes: int, n_rows: int, image_size: int = 224):
        import torch

        super().__init__(params, num_classes=num_classes, n_rows=n_rows, image_size=image_size)
        self.u = torch.zeros(n_rows, 1, dtype=torch.float32)
        self.v = torch.zeros(n_rows, num_classes, dtype=torch.float32)
        self.prior = torch.full((num_classes,), 1.0 / num_classes)
        self._pending: tuple[Tensor, Tensor, Tensor] | None = None

    def build(self, model) -> None:
        import torch

        super().build(model)  # pcc
        with torch.no_grad():  # after the network, from the same seeded generator
            self.u.normal_(0.0, INIT_STD)
            self.v.normal_(0.0, INIT_STD)

    def configure_optimizers(self, model, cfg):
        import torch

        if cfg.lr_decay:
            self.warn("sop: --lr-decay is ignored; SOP+ anneals the lr with a cosine schedule")
        groups = self.param_groups(
            model, lr_backbone=cfg.lr_backbone, lr_head=cfg.lr_head, weight_decay=cfg.weight_decay
        )
        optimizer = torch.optim.SGD(groups, lr=cfg.lr_backbone, momentum=MOMENTUM)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=cfg.epochs, eta_min=cfg.lr_backbone * ETA_MIN_RATIO
        )
        return optimizer, scheduler

    def views_for(self, *, warm: bool, stream: str = "train") -> tuple[str, ...]:
        return self.views[:1] if warm or self.params.consistency <= 0 else self.views

    def start_epoch(self, model, ctx) -> None:
        import torch

        if self.params.prior != "marginal":
            return
        from fernoise.methods.losses import label_marginal

        labels = ctx.labels[torch.as_tensor(ctx.rows, dtype=torch.long)]
        self.prior = label_marginal(labels, self.num_classes)

    def loss(self, model, views, y, idx, *, epoch, warm, gen) -> LossOut:
        import torch
        import torch.nn.functional as F

        if warm:
            return self.warmup_loss(model, views, y)
        rows, inverse = torch.unique(torch.as_tensor(idx, dtype=torch.long), return_inverse=True)
        u = self.u[rows].to(y.device).requires_grad_(True)
        v = self.v[rows].to(y.device).requires_grad_(True)
        strong = "strong" in views
        x = torch.cat([views["weak"], views["strong"]]) if strong else views["weak"]
        logits = model.pcc(model.features(x)).float()
        z, z_strong = torch.chunk(logits, 2) if strong else (logits, None)
        loss, parts = sop_loss(
            z,
            z_strong,
            F.one_hot(y, self.num_classes).float(),
            u[inverse.to(y.device)],
            v[inverse.to(y.device)],
            self.prior.to(y.device),
            balance=self.params.balance,
            consistency=self.params.consistency,
        )
        self._pending = (rows, u, v)
        selected = (u.detach()[inverse.to(y.device), 0] ** 2).clamp(max=1.0) < CLEAN_BELOW
        return LossOut(
            loss, {k: t.detach() for k, t in parts.items()}, z.detach(), selected=selected
        )

    def after_step(self, out, y, idx, *, epoch) -> None:
        """The tables' SGD step (momentum 0, weight decay 0) on the rows ``loss`` used."""
        if self._pending is None:
            return
        rows, u, v = self._pending
        self._pending = None
        world = _world()
        for table, leaf, lr in ((self.u, u, self.params.lr_u), (self.v, v, self.params.lr_v)):
            if leaf.grad is None:
                continue
            grad = leaf.grad if world == 1 else leaf.grad / world
            table[rows] = leaf.detach().add(grad, alpha=-lr).cpu()

    def state_dict(self):
        return {"u": self.u, "v": self.v}
