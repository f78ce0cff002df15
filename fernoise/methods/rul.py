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
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn


def uncertainty_head(in_features: int, out_dim: int, drop: float) -> nn.Sequential:
    """``BN2d(512, eps=2e-5, affine=False), Dropout(drop), Flatten, Linear(in_features, out_dim),
    BN1d(out_dim, eps=2e-5)``: the official layout (its state-dict keys ``0.*``, ``3.*``, ``4.*``)."""
    from torch import nn

    return nn.Sequential(
        nn.BatchNorm2d(512, eps=2e-5, affine=False),
        nn.Dropout(p=drop),
        nn.Flatten(),
        nn.Linear(in_features, out_dim),
        nn.BatchNorm1d(out_dim, eps=2e-5),
    )


def run_head(head: nn.Sequential, fmap: Tensor, gen: torch.Generator | None) -> Tensor:
    """``head(fmap)`` ``(N, 512, h, w) -> (N, D)``, with its dropout mask drawn from ``gen`` (a CPU
    generator) in training mode, so a resumed run draws the same masks; in eval mode, or with
    ``gen`` None, the head runs as is."""
    import torch

    bn, drop, rest = head[0], head[1], head[2:]
    x = bn(fmap)
    if head.training and drop.p > 0:
        if gen is None:
            x = drop(x)
        else:
            keep = torch.rand(x.shape, generator=gen) >= drop.p
            x = x * keep.to(device=x.device, dtype=x.dtype) / (1.0 - drop.p)
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
