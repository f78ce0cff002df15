"""The loss of every training method as pure functions of tensors (docs/methods.md).

Shapes: ``N`` samples in the mini-batch, ``C`` classes. ``labels`` are int64 ``(N,)`` class
indices; ``probs`` are softmax outputs ``(N, C)``; ``logits`` are pre-softmax ``(N, C)``.
Nothing here keeps state or draws random numbers from a global generator, so each equation can
be checked by hand (``tests/test_losses.py`` does). The methods (``fernoise/methods/``) combine
them:

- ``ce``: :func:`cross_entropy` on every sample (the paper's Baseline).
- ``pc``: :func:`class_thresholds` (Eq. 1) -> :func:`confident_mask` (Eq. 2) ->
  :func:`supervised_loss` (Eq. 3 on the confident samples); ``--threshold batch``:
  :func:`batch_thresholds` -> :func:`batch_confident_mask` (the authors' DNFER code).
- ``nl``: :func:`negative_learning_loss` with :func:`complementary_labels` (NLNL, Kim 2019).
- ``ncctfer``: ``pc`` plus :func:`consistency_loss` (Eq. 4, with :func:`topk_mask`) on the
  non-confident samples of the negative head; ``L = L_s + L_c`` (Eq. 5).
- ``gce``: :func:`generalized_cross_entropy`; ``sce``: :func:`cross_entropy` and
  :func:`reverse_cross_entropy`; ``elr``: :func:`elr_probs`, :func:`elr_target_update`,
  :func:`elr_regularizer`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over all ``N`` samples (warm-up, and the ``ce`` method)."""
    return F.cross_entropy(logits.float(), labels)


def label_marginal(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The class frequencies of ``labels`` (negatives: unlabelled, left out), float32; the
    ``marginal`` prior of DivideMix's and SOP+'s balance terms."""
    counts = torch.bincount(labels[labels >= 0], minlength=num_classes).double()
    return (counts / counts.sum().clamp(min=1)).float()


def class_thresholds(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Eq. 1: ``T_c = mean(p[i, c] for i with labels[i] == c)``, shape ``(C,)``.

    Only samples *labelled* c enter ``T_c``. A class absent from the batch gets NaN.
    ``probs`` should be detached (the threshold carries no gradient).
    """
    probs = probs.detach().float()
    own = probs.gather(1, labels.view(-1, 1)).squeeze(1)  # p[i, y_i]
    sums = torch.zeros(num_classes, dtype=probs.dtype, device=probs.device).index_add_(
        0, labels, own
    )
    counts = torch.bincount(labels, minlength=num_classes).to(probs.dtype)
    return torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, float("nan")))


def confident_mask(
    probs: torch.Tensor, labels: torch.Tensor, thresholds: torch.Tensor
) -> torch.Tensor:
    """Eq. 2: bool ``(N,)``, True where ``p[i, y_i] >= T_{y_i}``.

    Every class present in the batch keeps at least one sample: the one labelled c with the
    highest ``p[i, c]`` (a mean is never above the maximum, but rounding could make it so).
    """
    probs = probs.detach().float()
    own = probs.gather(1, labels.view(-1, 1)).squeeze(1)
    mask = own >= thresholds[labels]
    # The best sample of each present class, guarding against rounding in the mean.
    num_classes = thresholds.numel()
    best = torch.full((num_classes,), -1.0, dtype=own.dtype, device=own.device)
    best = best.scatter_reduce(0, labels, own, reduce="amax", include_self=True)
    return mask | (own >= best[labels])


def batch_thresholds(probs: torch.Tensor) -> torch.Tensor:
    """The authors' DNFER reading of Eq. 1: ``T_c = mean(p[i, c] for every i in the batch)``,
    shape ``(C,)`` (1980x/DNFER ``algorithm/loss.py``): an estimate of the class prior ``p(c)``."""
    return probs.detach().float().mean(dim=0)


def batch_confident_mask(
    probs: torch.Tensor, labels: torch.Tensor, thresholds: torch.Tensor
) -> torch.Tensor:
    """The DNFER rule: bool ``(N,)``, True where ``p[i, y_i] >= T_{y_i}`` (no per-class guarantee:
    a class whose labelled samples all fall below the batch mean keeps none)."""
    own = probs.detach().float().gather(1, labels.view(-1, 1)).squeeze(1)
    return own >= thresholds[labels]


def supervised_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 3 on the confident samples: cross-entropy averaged over the samples where ``mask``.

    Zero (with a gradient path) when no sample is confident.
    """
    if not bool(mask.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[mask].float(), labels[mask])


def topk_mask(q: torch.Tensor, k: int) -> torch.Tensor:
    """``M_k``: float ``(N, C)``, 1 at the ``k`` classes with the highest ``q[i]``, else 0."""
    idx = q.topk(k, dim=1).indices
    return torch.zeros_like(q, dtype=torch.float32).scatter_(1, idx, 1.0)


def consistency_loss(
    ncc_weak: torch.Tensor, ncc_strong: torch.Tensor, select: torch.Tensor, k: int
) -> torch.Tensor:
    """Eq. 4: ``L_c = -(1/N) sum_{i in select} sum_c M_k[i,c] q_w[i,c] log q_s[i,c]``.

    ``ncc_weak``/``ncc_strong`` are the negative head's logits ``(N, C)`` on the weak and strong
    views; ``q = softmax``. ``select`` (bool ``(N,)``) marks the non-confident samples, the
    only ones that enter the sum; ``N`` is the full batch size (the paper's 1/N).
    ``q_w`` is the target: no gradient flows through it (the paper is silent; the usual
    weak-to-strong choice). ``M_k`` picks the ``k`` highest ``q_w`` classes per sample.
    """
    n = ncc_weak.shape[0]
    q_w = F.softmax(ncc_weak.detach().float(), dim=1)
    log_q_s = F.log_softmax(ncc_strong.float(), dim=1)
    per_sample = -(topk_mask(q_w, k) * q_w * log_q_s).sum(dim=1)
    return (per_sample * select.to(per_sample.dtype)).sum() / n


def complementary_labels(
    labels: torch.Tensor, num_classes: int, generator: torch.Generator
) -> torch.Tensor:
    """NLNL: per sample a class drawn uniformly from the ``C - 1`` classes other than its label."""
    offset = torch.randint(1, num_classes, tuple(labels.shape), generator=generator)
    return (labels + offset.to(labels.device)) % num_classes


def negative_learning_loss(logits: torch.Tensor, complementary: torch.Tensor) -> torch.Tensor:
    """NLNL (Kim et al., 2019): mean of ``-log(1 - p[i, ybar_i])`` over the batch."""
    p = F.softmax(logits.float(), dim=1).gather(1, complementary.view(-1, 1)).squeeze(1)
    return -torch.log((1.0 - p).clamp(min=1e-7)).mean()


def generalized_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, q: float) -> torch.Tensor:
    """GCE (Zhang & Sabuncu, NeurIPS 2018): mean of ``(1 - p[i, y_i] ** q) / q``.

    ``q -> 0`` is cross-entropy, ``q = 1`` the MAE ``1 - p_y``. ``p_y ** q`` is computed as
    ``exp(q log_softmax_y)``: the same value, but where ``p_y`` underflows to 0 (a logit gap above
    ~104 in float32) ``pow`` has an infinite derivative at 0 and the gradient is NaN, while this
    form's gradient ``q p_y^q (onehot - p)`` stays finite (and tends to 0, as the loss's does)."""
    logp_y = F.log_softmax(logits.float(), dim=1).gather(1, labels.view(-1, 1)).squeeze(1)
    return ((1.0 - torch.exp(q * logp_y)) / q).mean()


def reverse_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, log_zero: float
) -> torch.Tensor:
    """RCE of SCE (Wang et al., ICCV 2019): mean of ``-sum_c p[i, c] log(onehot[i, c])`` with
    ``log 0`` replaced by ``log_zero`` (the paper's A = -4), i.e. ``-A * sum_{c != y} p[i, c]``.

    ``p`` is clamped to ``[1e-7, 1]`` as in the official code (HanxunH/SCELoss-Reproduce loss.py)."""
    p = F.softmax(logits.float(), dim=1).clamp(min=1e-7, max=1.0)
    off = torch.ones_like(p).scatter_(1, labels.view(-1, 1), 0.0)  # 1 where c != y (log onehot = A)
    return (-log_zero * (p * off).sum(dim=1)).mean()


def elr_probs(logits: torch.Tensor) -> torch.Tensor:
    """ELR's predictions: ``softmax(logits)`` clamped to ``[1e-4, 1 - 1e-4]`` (official code)."""
    return F.softmax(logits.float(), dim=1).clamp(1e-4, 1.0 - 1e-4)


def elr_target_update(targets: torch.Tensor, probs: torch.Tensor, beta: float) -> torch.Tensor:
    """ELR's temporal ensemble (Liu et al., NeurIPS 2020): ``beta t + (1 - beta) p / sum(p)``
    for rows ``targets`` ``(N, C)`` and predictions ``probs`` ``(N, C)`` (detached here)."""
    p = probs.detach()
    return beta * targets + (1.0 - beta) * (p / p.sum(dim=1, keepdim=True))


def elr_regularizer(targets: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """ELR's term: mean of ``log(1 - <t_i, p_i>)`` (negative; minimising it pulls ``p`` to ``t``)."""
    return torch.log(1.0 - (targets * probs).sum(dim=1)).mean()
