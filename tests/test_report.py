"""`fernoise report`: the methods x noise-settings table from run histories."""

from __future__ import annotations

import subprocess
import sys

import pytest
from factories import SYM, SYM5, fake_run

from fernoise.errors import FernoiseError
from fernoise.report import collect, find_runs, noise_label, report, table_grid


@pytest.fixture
def four_runs(tmp_path):
    runs = tmp_path / "runs"
    # ce @30%: max 0.80 (e2), last-5 of [0.6,0.8,0.7,0.7,0.6,0.5] = mean(.8,.7,.7,.6,.5) = 0.66
    fake_run(
        runs / "a", "ce", SYM, [0.6, 0.8, 0.7, 0.7, 0.6, 0.5], val=[0.5, 0.6, 0.7, 0.6, 0.5, 0.4]
    )
    fake_run(
        runs / "b",
        "ncctfer",
        SYM,
        [0.5, 0.6, 0.75, 0.7, 0.72, 0.74],
        val=[0.5, 0.6, 0.6, 0.7, 0.6, 0.6],
    )
    # @50%: max .5 / last-5 mean(.5,.45,.45,.45,.45) = .46; ncctfer .52 / mean(.52,.5,.5,.5,.5) = .504
    fake_run(
        runs / "c",
        "ce",
        SYM5,
        [0.4, 0.5, 0.45, 0.45, 0.45, 0.45],
        val=[0.3, 0.31, 0.29, 0.2, 0.2, 0.2],
    )
    fake_run(
        runs / "d",
        "ncctfer",
        SYM5,
        [0.41, 0.52, 0.5, 0.5, 0.5, 0.5],
        val=[0.3, 0.31, 0.29, 0.2, 0.2, 0.2],
    )
    return runs


def test_noise_labels():
    assert noise_label(None) == "clean"
    assert noise_label(SYM) == "sym 30%"
    assert noise_label({"kind": "asym", "rate": 0.125}) == "asym 12.5%"
    assert noise_label({"kind": "matrix"}) == "matrix"
    assert noise_label({"kind": "column", "column": "label_b"}) == "column label_b"


def test_two_methods_two_rates_give_the_2x2_table(four_runs):
    rep = collect([four_runs / "*"])
    assert len(rep.tables) == 1 and rep.notes == []
    header, rows = table_grid(rep.tables[0])
    assert header == [
        "method",
        "sym 30%",
        "sym 30% max / last-5 (test-selected)",
        "sym 50%",
        "sym 50% max / last-5 (test-selected)",
    ]
    assert rows == [
        ["ce", "70.0 (e3)", "80.0 / 66.0", "50.0 (e2)", "50.0 / 46.0"],
        ["ncctfer", "70.0 (e4)", "75.0 / 70.2", "52.0 (e2)", "52.0 / 50.4"],
    ]
    md = report([str(four_runs / "*")])
    lines = md.splitlines()
    assert lines[0] == "### dataset A (align align-A, 2 classes)"
    assert lines[2] == (
        "test = the manifest's test split; validation: 10% carved from train, with its training "
        "labels (noisy where the column has noise); 6 epochs; 32 px; start: random init"
    )
    assert lines[5].startswith("| ---") and lines[6].split("|")[2].strip() == "70.0 (e3)"
    assert md.endswith("\n") and "sample std (ddof=1)" in lines[-1]
    csv = report([four_runs], fmt="csv")  # a folder of runs works too
    assert csv.endswith("\n") and len(csv.splitlines()) == 5


def test_missing_cells_are_empty_and_runs_without_val_say_so(tmp_path, four_runs):
    fake_run(tmp_path / "more" / "e", "pc", None, [0.9, 0.7, 0.8, 0.6, 0.7, 0.8], val=[0.1] * 6)
    rep = collect([four_runs, tmp_path / "more"])
    header, rows = table_grid(rep.tables[0])
    assert header[1:3] == ["clean", "clean max / last-5 (test-selected)"]
    by = {r[0]: r for r in rows}
    assert [r[0] for r in rows] == ["ce", "pc", "ncctfer"]
    assert by["pc"] == ["pc", "90.0 (e1)", "90.0 / 72.0", "", "", "", ""]
    assert by["ce"][1:3] == ["", ""]
    fake_run(
        tmp_path / "noval" / "f", "ce", SYM, [0.5, 0.6]
    )  # no validation split: another protocol
    rep = collect([tmp_path / "noval"])
    assert table_grid(rep.tables[0])[1] == [["ce", "—", "60.0 / 55.0"]]
    assert "no validation (val-selected empty)" in rep.tables[0].protocol_text()


def test_cli_report_and_errors(four_runs, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "fernoise.cli.app", "report", str(four_runs / "*"), "--csv"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.splitlines()[0].startswith("dataset,dataset_key,protocol,kfold,method,row,")
    assert out.endswith("\n") and not out.endswith("\n\n")
    with pytest.raises(FernoiseError, match="does not exist"):
        find_runs([tmp_path / "nope"])
    r = subprocess.run(
        [sys.executable, "-m", "fernoise.cli.app", "report", str(tmp_path / "nope*")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "matches nothing" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "fernoise.cli.app", "report", str(four_runs), "--format", "html"],
        capture_output=True,
        text=True,
    )
    assert (
        r.returncode == 2
        and r.stderr.strip()
        == "error: --format: unknown format 'html'; expected one of markdown, csv, latex"
    )
