"""`fernoise report`: the methods x noise-settings table from run histories."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fernoise.errors import FernoiseError
from fernoise.report import build_table, find_runs, noise_label, report, summarise


def fake_run(path, method, noise, test, val=None):
    """A run folder with only what report reads: config.json and metrics.jsonl."""
    path.mkdir(parents=True)
    cfg = {"method": method, "noise": noise, "classes": ["neutral", "happy"], "image_size": 32, "key": path.name}
    (path / "config.json").write_text(json.dumps(cfg))
    lines = [json.dumps({"epoch": i + 1, "test_acc": t, "val_acc": None if val is None else val[i]})
             for i, t in enumerate(test)]
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return path


SYM = {"kind": "sym", "rate": 0.3, "seed": 0}
SYM5 = {"kind": "sym", "rate": 0.5, "seed": 0}


@pytest.fixture
def four_runs(tmp_path):
    runs = tmp_path / "runs"
    # ce @30%: max 0.80 (e2), last-5 of [0.6,0.8,0.7,0.7,0.6,0.5] = mean(.8,.7,.7,.6,.5) = 0.66
    fake_run(runs / "a", "ce", SYM, [0.6, 0.8, 0.7, 0.7, 0.6, 0.5], val=[0.5, 0.6, 0.7, 0.6, 0.5, 0.4])
    fake_run(runs / "b", "ncctfer", SYM, [0.5, 0.6, 0.75, 0.7, 0.72, 0.74], val=[0.5, 0.6, 0.6, 0.7, 0.6, 0.6])
    fake_run(runs / "c", "ce", SYM5, [0.4, 0.5, 0.45])
    fake_run(runs / "d", "ncctfer", SYM5, [0.41, 0.52, 0.5], val=[0.3, 0.31, 0.29])
    return runs


def test_noise_labels():
    assert noise_label(None) == "clean"
    assert noise_label(SYM) == "sym 30%"
    assert noise_label({"kind": "asym", "rate": 0.125}) == "asym 12.5%"
    assert noise_label({"kind": "matrix"}) == "matrix"


def test_two_methods_two_rates_give_the_2x2_table(four_runs):
    header, rows = build_table([summarise(p) for p in find_runs([four_runs / "*"])])
    assert header == ["method", "sym 30%", "sym 30% val", "sym 50%", "sym 50% val"]
    assert rows == [
        ["ce", "80.0 / 66.0", "70.0 (e3)", "50.0 / 45.0", ""],
        ["ncctfer", "75.0 / 70.2", "70.0 (e4)", "52.0 / 47.7", "52.0 (e2)"],
    ]
    md = report([str(four_runs / "*")])
    lines = md.splitlines()
    assert len(lines) == 4 and lines[1].startswith("| ---")
    assert lines[2].split("|")[2].strip() == "80.0 / 66.0"
    csv = report([four_runs], fmt="csv")  # a folder of runs works too
    assert csv.splitlines()[2] == "ncctfer,75.0 / 70.2,70.0 (e4),52.0 / 47.7,52.0 (e2)"


def test_missing_cells_are_empty_and_seeds_are_averaged(tmp_path, four_runs):
    fake_run(tmp_path / "more" / "e", "pc", None, [0.9, 0.7])
    fake_run(tmp_path / "more" / "f", "ce", SYM5, [0.6, 0.55, 0.55])  # second seed of ce @50%
    header, rows = build_table([summarise(p) for p in find_runs([four_runs, tmp_path / "more"])])
    assert header[:3] == ["method", "clean", "clean val"]
    by = {r[0]: r for r in rows}
    assert [r[0] for r in rows] == ["ce", "pc", "ncctfer"]
    assert by["pc"] == ["pc", "90.0 / 80.0", "", "", "", "", ""]
    assert by["ce"][1] == "" and by["ce"][5] == "55.0 / 50.8 (n=2)"  # max mean(.5,.6), last mean(.45,.5667)->.508


def test_cli_report_and_errors(four_runs, tmp_path):
    out = subprocess.run([sys.executable, "-m", "fernoise_cli.app", "report", str(four_runs / "*"), "--csv"],
                         capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0] == "method,sym 30%,sym 30% val,sym 50%,sym 50% val"
    with pytest.raises(FernoiseError, match="does not exist"):
        find_runs([tmp_path / "nope"])
    r = subprocess.run([sys.executable, "-m", "fernoise_cli.app", "report", str(tmp_path / "nope*")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "matches nothing" in r.stderr
