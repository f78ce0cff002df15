"""`fernoise eval`'s per-sample output (predictions.parquet) and the bootstrap interval (issue 9.6)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from factories import CLASSES7, eval_manifest, eval_run

from fernoise.evaluate import stage as ev


# ----------------------------------------------------------------------------- bootstrap
def test_bootstrap_all_correct_is_a_point_interval():
    y = np.array([0, 1, 2, 0, 1, 2, 2])
    ci = ev.bootstrap_ci(y, y, 3)
    assert ci["top1"] == [1.0, 1.0] and ci["macro_f1"] == [1.0, 1.0]
    assert (
        ci["resamples"] == 1000
        and ci["seed"] == 0
        and ci["level"] == 0.95
        and ci["method"] == "percentile"
    )
    wrong = ev.bootstrap_ci(y, (y + 1) % 3, 3)
    assert wrong["top1"] == [0.0, 0.0] and wrong["macro_f1"] == [0.0, 0.0]
    assert ev.bootstrap_ci([], [], 3) is None


def _independent_ci(t, p, c, idx_chunks):
    """Per resample, plain loops: accuracy and macro-F1 over classes that occur (sklearn's rule)."""
    tops, f1s = [], []
    for idx in np.concatenate(list(idx_chunks)):
        tt, pp = t[idx], p[idx]
        tops.append(np.mean(tt == pp))
        f = []
        for k in range(c):
            tp = np.sum((tt == k) & (pp == k))
            npred, ntrue = np.sum(pp == k), np.sum(tt == k)
            if npred + ntrue == 0:
                continue  # class absent from this resample: left out of the mean
            prec = tp / npred if npred else 0.0
            rec = tp / ntrue if ntrue else 0.0
            f.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
        f1s.append(np.mean(f))
    return np.percentile(tops, [2.5, 97.5]), np.percentile(f1s, [2.5, 97.5])


def test_bootstrap_matches_an_independent_computation():
    # 40 rows, 3 classes, 30 right: top-1 0.75; class 2 is rare so some resamples lack it.
    t = np.array([0] * 18 + [1] * 18 + [2] * 4)
    p = t.copy()
    p[[0, 1, 2, 3, 18, 19, 20, 21, 22, 36]] = [1, 1, 2, 1, 0, 0, 2, 0, 0, 0]
    assert (t == p).sum() == 30
    ci = ev.bootstrap_ci(t, p, 3, seed=7)
    want_top, want_f1 = _independent_ci(t, p, 3, ev.bootstrap_indices(40, 1000, 7))
    np.testing.assert_allclose(ci["top1"], want_top, atol=1e-12)
    np.testing.assert_allclose(ci["macro_f1"], want_f1, atol=1e-12)
    # a sane interval around the point figures, and wider than a 1-point band
    assert ci["top1"][0] < 0.75 < ci["top1"][1] and ci["top1"][1] - ci["top1"][0] > 0.1
    f1 = ev.macro_f1(ev.confusion_matrix(t, p, 3))
    assert ci["macro_f1"][0] < f1 < ci["macro_f1"][1]
    # the draws: 1000 resamples of 40 rows, the same for the same seed, others for another
    chunks = list(ev.bootstrap_indices(40, 1000, 7))
    assert sum(len(c) for c in chunks) == 1000 and all(
        c.shape[1] == 40 and c.min() >= 0 and c.max() < 40 for c in chunks
    )
    assert ev.bootstrap_ci(t, p, 3, seed=7) == ci and ev.bootstrap_ci(t, p, 3, seed=8) != ci


# ----------------------------------------------------------------------------- predictions.parquet
def test_predictions_frame_columns_and_values():
    rows = pd.DataFrame(
        {
            "id": ["a", "b", "c"],
            "label": pd.array([0, 1, 1], dtype="Int64"),
            "label_clean": pd.array([0, 0, None], dtype="Int64"),
            "is_noisy": [False, True, None],
        }
    )
    probs = np.array([[0.7, 0.3], [0.6, 0.4], [0.2, 0.8]])
    df = ev.predictions_frame(rows, probs, ["neutral", "happy"])
    assert list(df.columns) == [
        "id",
        "label",
        "label_name",
        "label_clean",
        "is_noisy",
        "pred",
        "pred_name",
        "correct",
        "confidence",
        "p_neutral",
        "p_happy",
    ]
    assert df["pred"].tolist() == [0, 0, 1] and df["pred_name"].tolist() == [
        "neutral",
        "neutral",
        "happy",
    ]
    assert df["correct"].tolist() == [True, False, True]
    assert df["confidence"].tolist() == [0.7, 0.6, 0.8] and df["p_happy"].tolist() == [
        0.3,
        0.4,
        0.8,
    ]
    assert df["label_clean"].tolist()[:2] == [0, 0] and pd.isna(df["label_clean"].iloc[2])
    assert df["is_noisy"].tolist()[:2] == [False, True] and pd.isna(df["is_noisy"].iloc[2])
    plain = ev.predictions_frame(rows[["id", "label"]], probs, ["neutral", "happy"])
    assert "label_clean" not in plain.columns and "is_noisy" not in plain.columns


def test_eval_writes_predictions_and_the_interval(tmp_path):
    man = eval_manifest(tmp_path / "data", n_test=21)
    run = eval_run(tmp_path / "runs" / "r1", man, method="ce", noisy=False)
    res, rep = ev.evaluate_run(run, ev.EvalParams(device="cpu"))
    pred = pd.read_parquet(run / "predictions.parquet")
    assert rep["predictions"] == "predictions.parquet" and not res.hit
    assert len(pred) == rep["n"] == 21
    assert pred["id"].tolist() == [
        f"test_{i}" for i in range(21)
    ]  # "u" (no label) and "nf" (no crop) are not evaluated
    assert pred["label"].tolist() == [i % 7 for i in range(21)]
    assert [c for c in pred.columns if c.startswith("p_")] == [f"p_{c}" for c in CLASSES7]
    np.testing.assert_allclose(pred[[f"p_{c}" for c in CLASSES7]].sum(axis=1), 1.0, atol=1e-6)
    # the file and eval.json tell the same story
    assert pred["correct"].mean() == pytest.approx(rep["top1"])
    cm = ev.confusion_matrix(pred["label"], pred["pred"], 7)
    assert cm.tolist() == rep["confusion_matrix"]
    ci = rep["ci95"]
    assert ci == ev.bootstrap_ci(pred["label"], pred["pred"], 7)
    assert ci["top1"][0] <= rep["top1"] <= ci["top1"][1]
    assert json.loads((run / "eval.json").read_text())["ci95"] == ci
