"""From out-of-sample probabilities to label issues, and how good they are against a truth.

Pure functions over arrays (numpy, cleanlab, scikit-learn); no I/O.

- :func:`cleanlab_scores`: ``cleanlab.rank.get_label_quality_scores`` (the label quality, in
  [0, 1], low = likely wrong), ``cleanlab.filter.find_label_issues`` (the issue flag, with the
  ``filter_by`` rule exposed), ``cleanlab.count.estimate_joint`` (the joint of given and true
  labels) and the suggested label (the most probable class).
- :func:`rank_rows`: rank 1 = the most likely mislabelled row (ascending quality, ties by id).
- :func:`truth_metrics`: precision, recall and F1 of the issue flag, AUROC and average
  precision of ``1 - quality`` as a score, against ``is_wrong`` (given label != true label).
- :func:`summary_counts`: issues per given class and the most frequent (given, suggested)
  pairs among the issues.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fernoise.errors import FernoiseError

FILTER_BY = (
    "prune_by_noise_rate",
    "prune_by_class",
    "both",
    "confident_learning",
    "predicted_neq_given",
    "low_normalized_margin",
    "low_self_confidence",
)
"""cleanlab's ``find_label_issues(filter_by=...)`` rules; the first is cleanlab's default."""

QUALITY_METHODS = ("self_confidence", "normalized_margin", "confidence_weighted_entropy")
"""cleanlab's ``get_label_quality_scores(method=...)``; the first is cleanlab's default."""


@dataclass
class Scores:
    """Per audited row: the label quality, the issue flag and the suggested label; and the
    estimated joint of given (rows) and true (columns) labels, summing to 1."""

    quality: np.ndarray  # (N,) float64 in [0, 1]
    is_issue: np.ndarray  # (N,) bool
    suggested: np.ndarray  # (N,) int64
    joint: np.ndarray  # (C, C) float64


def check_probs(labels: np.ndarray, probs: np.ndarray, num_classes: int) -> None:
    """Raise unless ``probs`` is (N, C) finite, rows summing to 1, and every label in [0, C)."""
    if probs.shape != (len(labels), num_classes):
        raise FernoiseError(
            f"expected probabilities of shape ({len(labels)}, {num_classes}), got {probs.shape}"
        )
    if not np.isfinite(probs).all():
        raise FernoiseError("the out-of-sample probabilities hold NaN or inf values")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise FernoiseError(
            f"labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}"
        )


def cleanlab_scores(
    labels: np.ndarray,
    probs: np.ndarray,
    *,
    filter_by: str = FILTER_BY[0],
    quality_method: str = QUALITY_METHODS[0],
) -> Scores:
    """cleanlab's label quality, issue flag and joint on ``labels`` (N,) and ``probs`` (N, C).

    ``find_label_issues`` runs with ``n_jobs=1`` (no worker processes: deterministic, and safe
    inside a process that holds torch threads). cleanlab needs every class to have at least
    one given label; :func:`fernoise.audit.stage` checks that before any training."""
    from cleanlab.count import estimate_joint
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    check_probs(labels, probs, probs.shape[1])
    quality = get_label_quality_scores(labels, probs, method=quality_method)
    issues = find_label_issues(labels, probs, filter_by=filter_by, n_jobs=1)
    joint = estimate_joint(labels, probs)
    return Scores(
        quality=np.asarray(quality, dtype=np.float64),
        is_issue=np.asarray(issues, dtype=bool),
        suggested=probs.argmax(axis=1).astype(np.int64),
        joint=np.asarray(joint, dtype=np.float64),
    )


def rank_rows(quality: np.ndarray, ids: Sequence[str]) -> np.ndarray:
    """Rank of each row, 1 = the most likely mislabelled: ascending quality, ties by id."""
    order = np.lexsort((np.asarray(ids, dtype=object).astype(str), np.asarray(quality)))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    return rank


def _auroc(score: np.ndarray, positive: np.ndarray) -> float | None:
    if positive.all() or not positive.any():
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(positive, score))


def _average_precision(score: np.ndarray, positive: np.ndarray) -> float | None:
    if not positive.any():
        return None
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(positive, score))


def truth_metrics(
    is_wrong: np.ndarray, is_issue: np.ndarray, quality: np.ndarray
) -> dict[str, float | None]:
    """How well the audit finds the wrong labels: the flag's precision, recall and F1, and
    the ranking's AUROC and average precision (score ``1 - quality``). ``noise_rate``: the
    share of wrong labels. None where undefined (no issue flagged, no wrong label)."""
    wrong = np.asarray(is_wrong, dtype=bool)
    flag = np.asarray(is_issue, dtype=bool)
    score = 1.0 - np.asarray(quality, dtype=np.float64)
    hit = int((flag & wrong).sum())
    precision = hit / int(flag.sum()) if flag.any() else None
    recall = hit / int(wrong.sum()) if wrong.any() else None
    f1 = (
        2 * precision * recall / (precision + recall)
        if precision is not None and recall is not None and precision + recall > 0
        else None
    )
    return {
        "rows": int(len(wrong)),
        "noise_rate": float(wrong.mean()) if len(wrong) else None,
        "flagged": int(flag.sum()),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "auroc": _auroc(score, wrong),
        "average_precision": _average_precision(score, wrong),
    }


def summary_counts(
    given: np.ndarray,
    suggested: np.ndarray,
    is_issue: np.ndarray,
    classes: Sequence[str],
    top: int = 10,
) -> dict[str, Any]:
    """``issues_per_class`` (given class -> issues, every class listed) and ``top_pairs``:
    the ``top`` most frequent (given, suggested) pairs among the issues, largest first, ties
    in class order."""
    flag = np.asarray(is_issue, dtype=bool)
    g, s = np.asarray(given)[flag], np.asarray(suggested)[flag]
    per_class = {c: int((g == i).sum()) for i, c in enumerate(classes)}
    pairs: dict[tuple[int, int], int] = {}
    for a, b in zip(g.tolist(), s.tolist(), strict=True):
        pairs[(a, b)] = pairs.get((a, b), 0) + 1
    ordered = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return {
        "issues_per_class": per_class,
        "top_pairs": [
            {"given": classes[a], "suggested": classes[b], "count": n} for (a, b), n in ordered
        ],
    }
