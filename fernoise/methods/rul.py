"""RUL, Relative Uncertainty Learning (Zhang et al., NeurIPS 2021), as its official code
computes it.

Source: zyh-uaiaaaa/Relative-Uncertainty-Learning ``src/rul.py``, ``src/utils.py``,
``src/main.py`` (read, not copied). Shapes: ``N`` samples, ``C`` classes, ``D`` = 64.

- Two heads on the feature map before the average pool, ``(N, 512, h, w)``, each
  ``BatchNorm2d(512, eps=2e-5, affine=False) -> Dropout(0.4) -> Flatten ->
  Linear(512 h w, D) -> BatchNorm1d(D, eps=2e-5)`` (:func:`uncertainty_head`): ``mu`` and
  ``logvar``; a classifier ``Linear(D, C)``.
- Training (:func:`uncertainty_mix`, :func:`mixup_cross_entropy`): ``u_i = mean_d
  exp(logvar_i)``; a random permutation pairs ``i`` with ``j``; ``lam_i = u_i / (u_i + u_j)``;
  ``f_i = lam_i mu_i + u_j / (u_i + u_j) mu_j``; ``L = 0.5 CE(W f, y) + 0.5 CE(W f, y_perm)``.
  Nothing is detached: the loss trains ``logvar`` through ``lam``.
- Test: ``W mu(x)``, no mixing, no dropout.

Choices: the map is ``h x w`` = ``ceil(s / 32)`` for an ``s``-px image (7 x 7 at the code's
224 px, 4 x 4 at 112, 2 x 2 at 48; on ``dlib-resnet29`` ``256 x 1 x 1`` at 103-134 px, the
backbone card's ``map_size``), so the heads' Linear has ``512 h w`` inputs and a model
is tied to its image size (``image_size``, from ``--image-size``; eval and predict pass the run's). The
dropout mask is drawn (on the device) from a generator seeded by the loop's per-epoch one, not torch's global one, so
that a resumed run equals an uninterrupted one (same distribution as ``nn.Dropout``). The
code has no warm-up; with ``--warmup`` > 0 the warm-up epochs train ``CE(W mu(x), y)`` on every
sample (the test-time path, with dropout; ``logvar`` idle).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fernoise.errors import FernoiseError
from fernoise.methods._registry import register
from fernoise.methods.base import LossOut, Method, OptimDefaults, check_range, option

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn


def uncertainty_head(
    in_features: int, out_dim: int, drop: float, channels: int = 512
) -> nn.Sequential:
    """``BN2d(channels, eps=2e-5, affine=False), Dropout(drop), Flatten, Linear(in_features,
    out_dim), BN1d(out_dim, eps=2e-5)``: the official layout (its state-dict keys ``0.*``,
    ``3.*``, ``4.*``); ``channels`` is the backbone's map width (512 for ResNet-18)."""
    from torch import nn

    return nn.Sequential(
        nn.BatchNorm2d(channels, eps=2e-5, affine=False),
        nn.Dropout(p=drop),
        nn.Flatten(),
        nn.Linear(in_features, out_dim),
        nn.BatchNorm1d(out_dim, eps=2e-5),
    )


def run_head(head: nn.Sequential, fmap: Tensor, gen: torch.Generator | None) -> Tensor:
    """``head(fmap)`` ``(N, 512, h, w) -> (N, D)``. In training mode its dropout mask comes from
    a generator on ``fmap``'s device seeded by one draw of ``gen`` (the loop's CPU generator),
    so a resumed run draws the same masks (on the same kind of device); in eval mode, or with
    ``gen`` None, the head runs as is."""
    import torch

    bn, rest = head[0], head[2:]
    drop: Any = head[1]  # nn.Dropout (indexing nn.Sequential is typed as Module)
    x = bn(fmap)
    if head.training and drop.p > 0:
        if gen is None:
            x = drop(x)
        else:
            seed = int(torch.randint(0, 2**62, (1,), generator=gen))
            local = torch.Generator(device=x.device).manual_seed(seed)
            keep = torch.rand(x.shape, generator=local, device=x.device) >= drop.p
            x = x * keep.to(x.dtype) / (1.0 - drop.p)
    return rest(x)


def uncertainty_mix(mu: Tensor, logvar: Tensor, perm: Tensor) -> tuple[Tensor, Tensor]:
    """Mix each ``mu_i`` ``(N, D)`` with its partner ``mu_perm[i]`` by relative uncertainty.

    ``u = mean(exp(logvar), dim=1)`` ``(N, 1)``; returns ``(mixed (N, D), lam (N, 1))`` with
    ``lam = u / (u + u[perm])`` and ``mixed = lam * mu + u[perm] / (u + u[perm]) * mu[perm]``.
    """
    u = logvar.float().exp().mean(dim=1, keepdim=True)
    total = u + u[perm]
    lam = u / total
    mixed = lam * mu.float() + (u[perm] / total) * mu.float()[perm]
    return mixed, lam


def mixup_cross_entropy(logits: Tensor, y: Tensor, perm: Tensor) -> Tensor:
    """``0.5 CE(logits, y) + 0.5 CE(logits, y[perm])``, each a mean over the batch."""
    import torch.nn.functional as F

    logits = logits.float()
    return 0.5 * F.cross_entropy(logits, y) + 0.5 * F.cross_entropy(logits, y[perm])


def map_side(image_size: int) -> int:
    """Side of ResNet-18's last map for an ``image_size``-px input: five stride-2 stages,
    each ``floor((s - 1) / 2) + 1``."""
    s = image_size
    for _ in range(5):
        s = (s - 1) // 2 + 1
    return s


# ----------------------------------------------------------------------------- the method
@dataclass(frozen=True)
class RULParams:
    dim: int = option(
        64, "--rul-dim", "Dimension of the mu/logvar features (the code's --out_dimension)."
    )
    dropout: float = option(
        0.4, "--rul-dropout", "Dropout on the feature map in the mu/logvar heads, in [0, 1)."
    )
    fc_lr_factor: float = option(
        10.0,
        "--rul-fc-lr-factor",
        "The classifier's learning rate as a multiple of --lr-head (code: 2e-3 vs 2e-4).",
    )

    def __post_init__(self) -> None:
        if not isinstance(self.dim, int) or self.dim < 1:
            raise FernoiseError(f"expected a dimension >= 1, got {self.dim}", flag="--rul-dim")
        check_range(self.dropout, 0, 1, "--rul-dropout", hi_open=True)
        check_range(self.fc_lr_factor, 0, None, "--rul-fc-lr-factor", lo_open=True)


@register
class RUL(Method):
    """Relative Uncertainty Learning: uncertainty-weighted mixup of ``mu`` features with a
    permuted partner, ``L = 0.5 CE(W f, y) + 0.5 CE(W f, y_perm)``; test-time ``W mu(x)``.
    See the module docstring for the heads and the choices."""

    name = "rul"
    summary = (
        "Relative Uncertainty Learning: mixup of features weighted by learnt relative uncertainty"
    )
    source = "Zhang et al., NeurIPS 2021"
    repo = "zyh-uaiaaaa/Relative-Uncertainty-Learning src/rul.py"
    face_pretrained = True
    Params = RULParams
    views = ("scn",)
    # Adam: backbone and heads 2e-4, classifier 2e-3 (fc_lr_factor), weight decay 1e-4, x0.9/epoch
    optim = OptimDefaults(
        lr_backbone=2e-4, lr_head=2e-4, weight_decay=1e-4, lr_decay=0.9, epochs=60, batch_size=64
    )
    parts = ("s",)
    warmup = 0  # src/rul.py trains the RUL loss from the first epoch

    def build(self, model) -> None:
        from torch import nn

        side = model.card.map_size(int(self.image_size))  # ResNet-18: map_side
        c, p = model.feature_dim, self.params
        # the code's order: backbone, mu, log_var, then the classifier
        model.add_module("mu", uncertainty_head(c * side * side, p.dim, p.dropout, c))
        model.add_module("logvar", uncertainty_head(c * side * side, p.dim, p.dropout, c))
        model.add_module("pcc", nn.Linear(p.dim, self.num_classes))

    def param_groups(self, model, *, lr_backbone, lr_head, weight_decay=0.0):
        """Backbone at ``lr_backbone``, mu/logvar at ``lr_head``, the classifier ``pcc`` at
        ``fc_lr_factor * lr_head``."""
        heads = list(model.mu.parameters()) + list(model.logvar.parameters())
        return [
            {
                "params": list(model.backbone.parameters()),
                "lr": lr_backbone,
                "weight_decay": weight_decay,
            },
            {"params": heads, "lr": lr_head, "weight_decay": weight_decay},
            {
                "params": list(model.pcc.parameters()),
                "lr": lr_head * self.params.fc_lr_factor,
                "weight_decay": weight_decay,
            },
        ]

    def logits(self, model, x):
        """``W mu(x)`` (eval: no dropout, no mixing)."""
        return model.pcc(model.mu(model.feature_map(x)))

    def loss(self, model, views, y, idx, *, epoch, warm, gen) -> LossOut:
        import torch

        fmap = model.feature_map(views["scn"])
        mu = run_head(model.mu, fmap, gen)
        if warm:
            logits = model.pcc(mu).float()
            ce = torch.nn.functional.cross_entropy(logits, y)
            return LossOut(ce, {"s": ce}, logits)
        logvar = run_head(model.logvar, fmap, gen)
        perm = torch.randperm(mu.shape[0], generator=gen).to(mu.device)
        mixed, _ = uncertainty_mix(mu, logvar, perm)
        logits = model.pcc(mixed).float()
        loss = mixup_cross_entropy(logits, y, perm)
        return LossOut(loss, {"s": loss}, logits)
