"""SCN, Self-Cure Network (Wang et al., CVPR 2020), as its official code computes it.

Source: kaiwang960112/Self-Cure-Network ``src/train.py`` (read, not copied). Shapes: ``N``
samples, ``C`` classes; ``f`` the pooled 512-d feature.

- Self-attention importance: ``alpha = sigmoid(Linear(512, 1)(f))`` ``(N, 1)``; the logits are
  ``alpha * (W f + b)`` (:func:`weighted_logits`), in training and at test time.
- Rank regularisation (:func:`rank_regularization`): sort the batch's alphas, the top
  ``int(N * beta)`` (beta 0.7) form the high group, the rest the low group;
  ``L_RR = max(0, margin - (mean alpha_high - mean alpha_low))``. ``L = CE(alpha z, y) + L_RR``.
- Relabelling (:func:`relabel`) from epoch ``relabel_epoch`` (10, 1-based as the code counts):
  with ``p = softmax(alpha z)`` of the step's forward pass (before the optimiser step, as the
  code does), where ``max p - p[y] > margin2`` (0.2) the stored label becomes ``argmax p``;
  the store persists (a label can change again later).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor


def weighted_logits(alpha: Tensor, logits: Tensor) -> Tensor:
    """``alpha`` ``(N, 1)`` times ``logits`` ``(N, C)``: SCN's importance-weighted logits."""
    return alpha * logits


def rank_regularization(alpha: Tensor, *, beta: float, margin: float) -> tuple[Tensor, Tensor]:
    """SCN's rank-regularisation loss and its high group.

    ``alpha``: ``(N,)`` or ``(N, 1)`` attention weights. The ``int(N * beta)`` largest form
    the high group (ties broken by position), the others the low group. Returns
    ``(max(0, margin - (mean high - mean low)), high)`` with ``high`` bool ``(N,)``.
    When a group is empty (``int(N * beta)`` is 0 or N) the loss is 0 (the official code
    would produce NaN).
    """
    import torch

    a = alpha.reshape(-1).float()
    n = a.numel()
    tops = int(n * beta)
    high = torch.zeros(n, dtype=torch.bool, device=a.device)
    order = torch.argsort(a, descending=True, stable=True)
    high[order[:tops]] = True
    if tops == 0 or tops == n:
        return a.sum() * 0.0, high
    diff = margin - (a[high].mean() - a[~high].mean())
    return diff.clamp(min=0.0), high


def relabel(probs: Tensor, y: Tensor, *, margin: float, allowed: Tensor | None = None) -> Tensor:
    """SCN's relabelling rule: int64 ``(N,)`` with ``argmax p`` where ``max p - p[y] > margin``
    (and ``allowed``, bool ``(N,)``, when given), -1 elsewhere.

    ``probs`` ``(N, C)`` softmax outputs (detached); ``y`` ``(N,)`` the labels trained on.
    A changed label always differs from ``y`` (``max p - p[y] > margin >= 0``).
    """
    import torch

    probs = probs.detach().float()
    pmax, pred = probs.max(dim=1)
    pgt = probs.gather(1, y.view(-1, 1)).squeeze(1)
    change = pmax - pgt > margin
    if allowed is not None:
        change = change & allowed
    return torch.where(change, pred, torch.full_like(pred, -1))
