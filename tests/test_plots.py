"""The pictures a researcher reads (issue 9.15): chance line, fixed axes, last-5 band, base rate, Grad-CAM caveat."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from factories import CLASSES7, eval_manifest, eval_run, history
from matplotlib.collections import PolyCollection

from fernoise.evaluate import plots
from fernoise.evaluate.gradcam import gradcam_figure


def _lines(ax):
    return {ln.get_label(): ln for ln in ax.get_lines()}


def test_curves_have_chance_fixed_axes_and_the_last5_band(tmp_path):
    test = [
        0.20,
        0.35,
        0.50,
        0.45,
        0.48,
        0.52,
        0.44,
        0.47,
    ]  # last 5: .48 .52 .44 .47 + .45 -> 0.44..0.52
    h = history(test, val=[0.3] * 8, warm=2, train_acc=[0.1 * i for i in range(8)])
    fig = plots.curves_figure(h, num_classes=7)
    acc, _, frac = fig.axes[:3]
    assert acc.get_ylim() == (0.0, 1.0) and frac.get_ylim() == (0.0, 1.0)
    chance = _lines(acc)["chance (1/7 = 0.143)"]
    assert np.allclose(chance.get_ydata(), 1 / 7)
    bands = [
        c
        for c in acc.collections
        if isinstance(c, PolyCollection) and c.get_label().startswith("test, last 5")
    ]
    assert len(bands) == 1 and bands[0].get_label() == "test, last 5: 0.440-0.520 (mean 0.472)"
    v = bands[0].get_paths()[0].vertices
    assert (v[:, 1].min(), v[:, 1].max()) == pytest.approx((0.44, 0.52))
    assert (v[:, 0].min(), v[:, 0].max()) == pytest.approx((3.5, 8.5))  # epochs 4..8
    assert plots.curves_png(h, tmp_path / "c.png", num_classes=7).is_file()
    # another run's picture has the same axes, whatever its accuracies
    assert plots.curves_figure(history([0.9, 0.95]), num_classes=2).axes[0].get_ylim() == (
        0.0,
        1.0,
    )


def test_the_loss_panel_draws_the_method_s_own_parts_with_its_captions():
    rows = [
        {
            "epoch": e,
            "test_acc": 0.5,
            "loss": 2.0 - e / 10,
            "loss_s": 1.0,
            "loss_gce": 0.5 + e / 10,
            "loss_c": None,
        }
        for e in (1, 2)
    ]
    loss = plots.curves_figure(rows).axes[1]
    assert set(_lines(loss)) == {
        "loss L",
        "L_s (cross-entropy part)",
        "L_gce",
    }  # an all-null loss_c (old runs): not drawn
    assert list(_lines(loss)["L_gce"].get_ydata()) == pytest.approx([0.6, 0.7])
    rows = [{**r, "loss_c": 0.3} for r in rows]
    loss = plots.curves_figure(rows, part_captions={"c": "negative classes"}).axes[1]
    assert "L_c (negative classes)" in _lines(loss)
    assert (
        plots._part_captions("ncctfer") == {"c": "negative classes"}
        and plots._part_captions("gone") == {}
    )


def test_noise_detection_draws_the_base_rate():
    h = history(
        [0.3, 0.4, 0.5],
        warm=1,
        confident_precision=[None, 0.8, 0.85],
        confident_recall=[None, 0.5, 0.6],
        confident_frac=[None, 0.5, 0.5],
    )
    ax = plots.noise_detection_figure(h, clean_share=0.7).axes[0]
    base = _lines(ax)["base rate: clean share of training rows (0.700)"]
    assert np.allclose(base.get_ydata(), 0.7)
    assert not any("base rate" in k for k in _lines(plots.noise_detection_figure(h).axes[0]))


def test_gradcam_says_when_the_map_is_too_coarse():
    rng = np.random.default_rng(0)

    def title(size):
        fig = gradcam_figure(
            rng.integers(0, 255, (2, size, size, 3), dtype=np.uint8),
            rng.random((2, size, size)),
            rng.dirichlet(np.ones(7), 2),
            [0, 1],
            CLASSES7,
        )
        return fig._suptitle.get_text().replace("\n", " ")

    assert (
        "at 48 px the last layer (backbone.layer4) is 2x2 cells: the map is too coarse to mean much"
        in title(48)
    )
    assert "coarse" not in title(112)
    assert plots.gradcam_coarse_note(32).startswith(
        "at 32 px the last layer (backbone.layer4) is 1x1 cells"
    )


@pytest.mark.slow
def test_eval_says_it_on_screen_and_reports_the_base_rate(tmp_path):
    import pandas as pd

    from fernoise.manifest import read_manifest, write_manifest

    man = eval_manifest(tmp_path / "data", n_test=7, n_train=10)
    m = read_manifest(man)
    df = m.df.copy()
    df["is_noisy"] = [i in (0, 1, 2) for i in range(len(df))]  # 3 of the 10 train rows noisy
    df["label_clean"] = df["label"]
    write_manifest(df, man, m.meta)
    run = eval_run(tmp_path / "runs" / "r", man, method="pc")
    (run / "val_ids.json").write_text('["train_9"]')  # a carved validation row: not a training row
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "fernoise.cli.app",
            "eval",
            str(run),
            "--cam",
            "2",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "300", "FERNOISE_WORKSPACE": str(tmp_path)},
    )
    assert r.returncode == 0, r.stderr
    assert (
        "note: gradcam.png: at 32 px the last layer (backbone.layer4) is 1x1 cells: the map is too coarse"
        in r.stderr
    )
    import json

    rep = json.loads((run / "eval.json").read_text())
    assert rep["train_clean_share"] == pytest.approx(6 / 9)
    assert rep["gradcam_note"].startswith("at 32 px")
    pred = pd.read_parquet(run / "predictions.parquet")
    assert (
        pred["is_noisy"].tolist() == [False] * 7
        and pred["label_clean"].tolist() == pred["label"].tolist()
    )
    assert "95% percentile bootstrap" in r.stdout and str(run / "predictions.parquet") in r.stdout
