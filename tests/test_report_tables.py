"""`fernoise report` on fake runs with known numbers: pooling rules, k-fold, formats, plots, help.

Every std here is the sample std (ddof=1); a cell of one run shows no ±.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from factories import SYM, fake_run
from PIL import Image

from fernoise.report import collect, plot, plot_series, render, table_grid

CLI = [sys.executable, "-m", "fernoise.cli.app"]
SYM5 = {"kind": "sym", "rate": 0.5, "seed": 0}


def _run(path, method, noise, val_pick_test, *, seed=0, noise_seed=0, **kw):
    """A 5-epoch run whose validation-selected test accuracy is ``val_pick_test`` (epoch 3)."""
    noise = dict(noise, seed=noise_seed) if noise else None
    test = [0.1, 0.2, val_pick_test, 0.3, 0.4]
    return fake_run(path, method, noise, test, val=[0.1, 0.2, 0.9, 0.3, 0.3], seed=seed, **kw)


@pytest.fixture
def study(tmp_path):
    """ce and ncctfer, clean / sym 30% / sym 50%, up to 3 seeds per cell, on one dataset."""
    r = tmp_path / "runs"
    for s, v in enumerate([0.70, 0.72, 0.74]):  # mean 72.0, sample std 2.0
        _run(r / f"ce30-{s}", "ce", SYM, v, seed=s, noise_seed=s)
    for s, v in enumerate([0.60, 0.66]):  # mean 63.0, sample std 4.2426
        _run(r / f"ce50-{s}", "ce", SYM5, v, seed=s, noise_seed=s)
    for s, v in enumerate([0.78, 0.80, 0.85]):  # mean 81.0, sample std 3.6056
        _run(
            r / f"nc30-{s}",
            "ncctfer",
            SYM,
            v,
            seed=s,
            noise_seed=s,
            sel=[
                (None, None),
                (None, None),
                (0.80 + 0.02 * s, 0.6),
                (0.85 + 0.02 * s, 0.62),
                (0.90 + 0.02 * s, 0.64 + 0.02 * s),
            ],
        )
    _run(
        r / "nc50-0",
        "ncctfer",
        SYM5,
        0.70,
        sel=[(None, None), (None, None), (0.6, 0.5), (0.65, 0.5), (0.7, 0.55)],
    )
    _run(r / "ce0-0", "ce", None, 0.88)
    return r


def test_cells_are_mean_and_sample_std_over_seeds(study):
    rep = collect([study])
    assert len(rep.tables) == 1
    header, rows = table_grid(rep.tables[0])
    assert header[1::2] == ["clean", "sym 30%", "sym 50%"]
    by = {r[0]: r for r in rows}
    assert by["ce"][1] == "88.0 (e3)"  # one run: its epoch, no ±
    assert by["ce"][3] == "72.0 ± 2.0 (3)"
    assert by["ce"][5] == "63.0 ± 4.2 (2)"
    assert by["ncctfer"][3] == "81.0 ± 3.6 (3)" and by["ncctfer"][5] == "70.0 (e3)"
    # max / last-5 beside it: max = the val pick (all > .4); last-5 = mean of the 5 epochs
    assert by["ce"][4] == "72.0 ± 2.0 / 34.4 ± 0.4 (3)"  # last-5: (1.0 + v) / 5
    assert by["ncctfer"][1:3] == ["", ""]

    rows_csv = list(csv.DictReader(io.StringIO(render(rep, "csv"))))
    cell = {(r["method"], r["setting"]): r for r in rows_csv}
    ce30 = cell["ce", "sym 30%"]
    assert int(ce30["n"]) == 3 and ce30["seeds"] == "0/0 1/1 2/2" and ce30["noise_rate"] == "0.3"
    assert float(ce30["val_selected_mean"]) == pytest.approx(0.72, abs=1e-9)
    assert float(ce30["val_selected_std"]) == pytest.approx(
        np.std([0.70, 0.72, 0.74], ddof=1), abs=1e-6
    )
    assert float(ce30["val_selected_std"]) == pytest.approx(
        0.02, abs=1e-6
    )  # ddof=0 would be 0.016330
    assert float(ce30["last5_mean"]) == pytest.approx(
        np.mean([np.mean([0.1, 0.2, v, 0.3, 0.4]) for v in (0.70, 0.72, 0.74)])
    )
    nc = cell["ncctfer", "sym 30%"]
    assert float(nc["val_selected_std"]) == pytest.approx(
        np.std([0.78, 0.80, 0.85], ddof=1), abs=1e-6
    )
    assert float(nc["selection_precision_mean"]) == pytest.approx(0.92) and float(
        nc["selection_recall_mean"]
    ) == pytest.approx(0.66)
    one = cell["ce", "clean"]
    assert (
        one["n"] == "1"
        and one["val_selected_std"] == ""
        and one["val_epoch"] == "3"
        and one["noise_kind"] == "clean"
    )
    assert len(rows_csv) == 5


def test_two_datasets_are_never_averaged(tmp_path):
    # The same method, noise and seed on two datasets: on main these made one cell "(n=2)".
    _run(tmp_path / "runs" / "a", "ce", SYM, 0.70, dataset="rafdb")
    _run(tmp_path / "runs" / "b", "ce", SYM, 0.50, dataset="ferplus")
    r = subprocess.run(
        [*CLI, "report", str(tmp_path / "runs" / "*")], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert "(n=2)" not in r.stdout and "(2)" not in r.stdout and "60.0" not in r.stdout
    heads = [ln for ln in r.stdout.splitlines() if ln.startswith("### ")]
    assert heads == [
        "### dataset ferplus (align align-ferp, 2 classes)",
        "### dataset rafdb (align align-rafd, 2 classes)",
    ]
    assert "70.0 (e3)" in r.stdout and "50.0 (e3)" in r.stdout
    assert "2 datasets: one table each, never averaged together" in r.stderr


def test_anything_but_the_seed_separates_runs(tmp_path):
    r = tmp_path / "runs"
    _run(r / "base", "ce", SYM, 0.70)
    _run(
        r / "base1", "ce", SYM, 0.72, seed=1, noise_seed=1, device="cuda:0"
    )  # a replicate: device does not count
    _run(r / "lr", "ce", SYM, 0.60, lr_head=1e-2)  # another option: another row
    _run(r / "ep", "ce", SYM, 0.50, epochs=5, image_size=64)  # another protocol: another table
    _run(r / "pre", "ce", SYM, 0.40, pretrained="/w/msceleb.pth", pretrained_sha256="ab" * 32)
    _run(r / "other-noise", "ce", {"kind": "sym", "rate": 0.3, "pairs_sha256": "ff" * 32}, 0.30)
    rep = collect([r])
    assert len(rep.tables) == 3
    texts = sorted(t.protocol_text() for t in rep.tables)
    assert [("64 px" in t, "start: msceleb.pth (abababab)" in t) for t in texts] == [
        (False, True),
        (False, False),
        (True, False),
    ]
    main = next(
        t for t in rep.tables if "32 px" in t.protocol_text() and "random init" in t.protocol_text()
    )
    header, rows = table_grid(main)
    assert [row[0] for row in rows] == ["ce (lr_head=0.001)", "ce (lr_head=0.01)"]
    assert (
        rows[0][header.index("sym 30%")] == "71.0 ± 1.4 (2)"
        and rows[1][header.index("sym 30%")] == "60.0 (e3)"
    )
    other = [h for h in header if h.startswith("sym 30% [")]  # same kind and rate, other pairs file
    assert len(other) == 2 and rows[0][header.index(other[0])] == "30.0 (e3)"


def test_clean_and_noisy_columns_share_a_table_but_oracle_clean_validation_does_not(tmp_path):
    r = tmp_path / "runs"
    # as train records them: carved validation labels are "train" without noise, "noisy" with it
    _run(r / "clean", "ce", None, 0.90, val_labels="train")
    _run(r / "noisy", "ce", SYM, 0.70, val_labels="noisy")
    _run(r / "oracle", "ce", SYM, 0.75, val_labels="oracle-clean", val_clean=True)
    rep = collect([r])
    assert len(rep.tables) == 2
    plain, oracle = sorted(rep.tables, key=lambda t: "oracle" in t.protocol_text())
    assert table_grid(plain)[1] == [["ce", "90.0 (e3)", "90.0 / 38.0", "70.0 (e3)", "70.0 / 34.0"]]
    assert (
        "validation: 10% carved from train, oracle-clean labels (label_clean)"
        in oracle.protocol_text()
    )
    assert table_grid(oracle)[1] == [["ce", "75.0 (e3)", "75.0 / 35.0"]]


def test_same_seeds_twice_is_noted_not_hidden(tmp_path):
    _run(tmp_path / "runs" / "a", "ce", SYM, 0.70)
    _run(tmp_path / "runs" / "b", "ce", SYM, 0.72, device="cuda")
    rep = collect([tmp_path / "runs"])
    assert table_grid(rep.tables[0])[1][0][1] == "71.0 ± 1.4 (2)"
    assert any("share seeds (0, 0)" in n and "not independent" in n for n in rep.notes)


def _fold_lineage(fold, k=3, dataset="ck"):
    return [
        {"stage": "align", "key": f"align-{dataset}", "params": {}},
        {
            "stage": "split",
            "key": f"split-{fold}",
            "params": {"folds": k, "fold": fold, "group_column": "subject", "seed": 0},
        },
        {"stage": "corrupt", "key": f"c-{fold}", "params": SYM},
    ]


def test_kfold_runs_pool_over_folds(tmp_path):
    r = tmp_path / "runs"
    # fold 0 has two seeds (0.60, 0.70 -> 0.65 first), folds 1, 2: 0.80, 0.95 -> mean .80, std .15 over folds
    for name, fold, seed, v in (
        ("f0s0", 0, 0, 0.60),
        ("f0s1", 0, 1, 0.70),
        ("f1", 1, 0, 0.80),
        ("f2", 2, 0, 0.95),
    ):
        _run(r / name, "ce", SYM, v, seed=seed, lineage=_fold_lineage(fold), dataset="ck")
    _run(
        r / "whole", "ce", SYM, 0.5, dataset="ck"
    )  # the same data without the split: another table
    rep = collect([r])
    assert len(rep.tables) == 2
    kf = next(t for t in rep.tables if t.kfold)
    assert kf.kfold == 3
    assert kf.protocol_text().startswith(
        "k-fold (3): test = the held-out fold, grouped by subject, split seed 0"
    )
    assert table_grid(kf)[1][0][1] == "80.0 ± 15.0 (3)"
    row = next(csv.DictReader(io.StringIO(render(rep, "csv"))))
    assert row["kfold"] == "3" and row["folds"] == "0 1 2" and row["n"] == "3"
    assert float(row["val_selected_mean"]) == pytest.approx(0.80) and float(
        row["val_selected_std"]
    ) == pytest.approx(0.15)
    md = render(rep, "markdown")
    assert "k-fold (3)" in md and md.count("### dataset ck") == 2


def test_lineage_from_the_manifest_when_the_config_has_none(tmp_path):
    from fernoise.manifest import write_manifest

    paths = []
    for i, noise_seed in enumerate((0, 1)):
        man = tmp_path / "data" / f"manifest.sym-s{noise_seed}.parquet"
        man.parent.mkdir(exist_ok=True)
        noise = dict(SYM, seed=noise_seed)
        write_manifest(
            pd.DataFrame({"id": ["x"], "split": ["train"], "label": [0]}),
            man,
            {
                "classes": ["neutral", "happy"],
                "key": f"k{i}",
                "lineage": [
                    {"stage": "align", "key": "align-data", "params": {}},
                    {"stage": "corrupt", "key": f"k{i}", "params": noise},
                ],
            },
        )
        run = _run(
            tmp_path / "runs" / f"r{i}",
            "ce",
            SYM,
            0.7 + 0.1 * i,
            seed=i,
            noise_seed=noise_seed,
            lineage=None,
            manifest=str(man),
        )
        cfg = json.loads((run / "config.json").read_text())
        del cfg["lineage"]
        (run / "config.json").write_text(json.dumps(cfg))
        paths.append(run)
    rep = collect(paths)
    assert (
        len(rep.tables) == 1
        and rep.tables[0].title() == "dataset data (align align-data, 2 classes)"
    )
    assert table_grid(rep.tables[0])[1][0][1] == "75.0 ± 7.1 (2)"


def test_single_run_shows_the_bootstrap_interval(tmp_path):
    run = _run(tmp_path / "runs" / "a", "ce", SYM, 0.70)
    (run / "eval.json").write_text(
        json.dumps(
            {
                "run_key": "a",
                "own_manifest": True,
                "top1": 0.41,
                "macro_f1": 0.38,
                "train_clean_share": 0.7,
                "ci95": {"top1": [0.3512, 0.4733], "macro_f1": [0.31, 0.45], "level": 0.95},
            }
        )
    )
    run2 = _run(tmp_path / "runs" / "b", "ce", SYM5, 0.60)
    (run2 / "eval.json").write_text(
        json.dumps({"run_key": "b", "top1": 0.5, "ci95": {"top1": [0.4, 0.6]}})
    )
    _run(tmp_path / "runs" / "c", "ce", SYM5, 0.60, seed=1)
    (tmp_path / "runs" / "c" / "eval.json").write_text(json.dumps({"run_key": "c", "top1": 0.6}))
    rep = collect([tmp_path / "runs"])
    header, rows = table_grid(rep.tables[0])
    assert header[1:4] == [
        "sym 30%",
        "sym 30% max / last-5 (test-selected)",
        "sym 30% final [95% CI]",
    ]
    assert rows[0][3] == "41.0 [35.1, 47.3]"
    assert rows[0][6] == "55.0 ± 7.1 (2)"  # two runs: no interval, the spread over seeds
    row = next(csv.DictReader(io.StringIO(render(rep, "csv"))))
    assert row["final_top1_ci_lo"] == "0.351200" and row["final_macro_f1_ci_hi"] == "0.450000"


def test_latex_and_markdown_carry_the_same_numbers(study):
    rep = collect([study])
    tex = render(rep, "latex")
    assert tex.count(r"\begin{tabular}") == 1 and r"\toprule" in tex and tex.endswith("\n")
    assert r"\multicolumn{2}{c}{sym 30\%}" in tex
    assert r"72.0 $\pm$ 2.0 (3)" in tex and r"63.0 $\pm$ 4.2 (2)" in tex
    assert r"\caption{dataset A (align align-A, 2 classes). test = the manifest's test split" in tex
    ce = next(ln for ln in tex.splitlines() if ln.startswith("ce &"))
    assert ce.endswith(r"\\") and ce.count("&") == 6
    md = render(rep, "markdown")
    assert "| ce      | 88.0 (e3)" in md and "72.0 ± 2.0 (3)" in md


def test_plot_writes_the_pictures_with_the_tables_numbers(study, tmp_path):
    rep = collect([study])
    s = plot_series(rep.tables[0])
    assert s["figure"] == "val_test" and list(s["kinds"]) == ["sym"]
    ce = s["kinds"]["sym"]["ce"]
    assert [p[0] for p in ce] == [0.0, 0.3, 0.5] and [p[3] for p in ce] == [1, 3, 2]
    assert ce[1][1] == pytest.approx(0.72) and ce[1][2] == pytest.approx(0.02)
    assert ce[2][2] == pytest.approx(np.std([0.60, 0.66], ddof=1)) and ce[0][2] == 0.0
    sel = s["selection"]
    assert list(sel) == ["ncctfer"]  # ce selects nothing
    (r30, p30, rec30, base30), (r50, p50, _, base50) = sel["ncctfer"]["sym"]
    assert (r30, base30, r50, base50) == (0.3, pytest.approx(0.7), 0.5, pytest.approx(0.5))
    assert p30.mean == pytest.approx(0.92) and p30.std == pytest.approx(0.02) and p50.std is None
    out = plot(rep, tmp_path / "pics")
    assert [p.name for p in out] == ["accuracy_vs_noise.png", "selection_vs_noise.png"]
    for p in out:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] > 300
    r = subprocess.run(
        [
            *CLI,
            "report",
            str(study),
            "--plot",
            "--plot-dir",
            str(tmp_path / "cli"),
            "--format",
            "latex",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == [
        "accuracy_vs_noise.png",
        "selection_vs_noise.png",
    ]
    assert r.stdout.startswith(r"\begin{table}") and "accuracy_vs_noise.png" in r.stderr


def test_no_argument_reports_the_workspace_runs(study, tmp_path):
    env = {**os.environ, "FERNOISE_WORKSPACE": str(tmp_path)}
    r = subprocess.run(
        [*CLI, "report", "--format", "csv"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 6 and r.stdout.endswith("\n")
    r = subprocess.run(
        [*CLI, "report", "--workspace", str(tmp_path / "empty")], capture_output=True, text=True
    )
    assert r.returncode == 2 and "no runs folder in the workspace" in r.stderr


def test_unfinished_runs_are_left_out(tmp_path):
    _run(tmp_path / "runs" / "done", "ce", SYM, 0.70)
    _run(tmp_path / "runs" / "half", "ce", SYM, 0.10, seed=1, epochs=40)
    rep = collect([tmp_path / "runs"])
    assert table_grid(rep.tables[0])[1][0][1] == "70.0 (e3)"
    assert rep.notes == ["left out 1 unfinished run(s): half"]


@pytest.mark.parametrize(
    "command, phrase",
    [
        (
            "report",
            "Runs are pooled only when they differ in nothing but their seeds (training and noise seed) and, for",
        ),
        (
            "eval",
            "Top-1 and macro-F1 with 95% bootstrap intervals, per-class precision/recall/F1/accuracy, the confusion matrix, ECE (15 bins)",
        ),
    ],
)
def test_help_paragraphs_are_not_broken_mid_phrase(command, phrase):
    r = subprocess.run(
        [*CLI, command, "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "240"},
    )
    assert r.returncode == 0
    assert any(phrase in line for line in r.stdout.splitlines()), r.stdout


def test_a_broken_run_is_skipped_with_a_note(tmp_path):
    _run(tmp_path / "runs" / "good", "ce", SYM, 0.70)
    bad = tmp_path / "runs" / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    rep = collect([tmp_path / "runs"])
    assert table_grid(rep.tables[0])[1][0][1] == "70.0 (e3)"
    assert (
        len(rep.notes) == 1
        and rep.notes[0].startswith(f"skipped {bad}: ")
        and "not valid JSON" in rep.notes[0]
    )
    with pytest.raises(Exception, match="no readable training run among 1 folder"):
        collect([bad])


def test_an_option_off_or_absent_does_not_split_a_row():
    from fernoise.report import options_of

    old = {"method": "ce", "epochs": 6, "val_clean": None}
    new = {"method": "ce", "epochs": 6, "val_clean": False, "record_margins": False}
    assert options_of(old) == options_of(new)
    assert options_of({**new, "record_margins": True})["record_margins"] is True
