"""Issue 19 item 6: a damaged run is skipped with one line naming its file and why, never a
traceback; the other runs are reported; the exit is non-zero only when nothing could be."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys

import pytest
from factories import SYM, fake_run, make_aligned
from typer.testing import CliRunner

from fernoise.cache import Workspace
from fernoise.cli.app import app

CLI = [sys.executable, "-m", "fernoise.cli.app"]


def _config(p, **change):
    p.write_text(json.dumps({**json.loads(p.read_text()), **change}))


DAMAGE = {
    "config noise is a string": (
        "config.json",
        lambda p: _config(p, noise="x"),
        "'noise': expected null (clean) or an object",
    ),
    "eval.json is a list": (
        "eval.json",
        lambda p: p.write_text("[0.5, 0.6]"),
        "expected a JSON object, found a JSON list",
    ),
    "eval.json NaN interval": (
        "eval.json",
        lambda p: p.write_text('{"top1": 0.5, "ci95": {"top1": [NaN, NaN]}}'),
        "'ci95.top1': expected two finite numbers (lo, hi), found [NaN, NaN]",
    ),
    "eval.json string top1": (
        "eval.json",
        lambda p: p.write_text('{"top1": "0.9"}'),
        "'top1': expected a fraction in [0, 1], found the string '0.9'",
    ),
    "metrics binary": (
        "metrics.jsonl",
        lambda p: p.write_bytes(b'{"epoch": 1}\n\xff\xfe\x00\x81garbage\n'),
        "is not UTF-8 text",
    ),
    "metrics non-object lines": (
        "metrics.jsonl",
        lambda p: p.write_text('[1, 2]\n3\n{"epoch": 3}\n'),
        "line 1: expected a JSON object, found a JSON list",
    ),
    "metrics epoch one": (
        "metrics.jsonl",
        lambda p: p.write_text('{"epoch": "one", "test_acc": 0.5}\n'),
        "line 1: 'epoch' expected a positive integer, found the string 'one'",
    ),
}


def _runs(root):
    """Two good replicates (val-selected test accuracy 0.7 and 0.8 at epoch 2) and one to damage."""
    fake_run(root / "good0", "ce", SYM, [0.5, 0.7], val=[0.5, 0.6], seed=0)
    fake_run(root / "good1", "ce", SYM, [0.5, 0.8], val=[0.5, 0.6], seed=1)
    bad = fake_run(root / "bad", "ce", SYM, [0.4, 0.9], val=[0.5, 0.6], seed=2)
    (bad / "eval.json").write_text(json.dumps({"top1": 0.9, "run_key": "bad"}))
    return bad


@pytest.mark.parametrize("case", list(DAMAGE))
def test_report_skips_a_damaged_run_with_one_line_and_reports_the_rest(case, tmp_path):
    name, damage, why = DAMAGE[case]
    bad = _runs(tmp_path / "runs")
    damage(bad / name)
    r = subprocess.run(
        [*CLI, "report", str(tmp_path / "runs")], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    notes = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(notes) == 1, r.stderr
    assert notes[0].startswith(f"note: skipped {bad}: {bad / name}: ") and why in notes[0], notes[0]
    # the two good runs, pooled: 75.0 ± 7.1 (2); the damaged run's 0.9 is nowhere
    assert "75.0 ± 7.1 (2)" in r.stdout and "90.0" not in r.stdout


def test_report_of_only_damaged_runs_is_one_line_and_exit_2(tmp_path):
    bad = fake_run(tmp_path / "runs" / "bad", "ce", SYM, [0.4, 0.9], val=[0.5, 0.6])
    (bad / "metrics.jsonl").write_text('{"epoch": "one"}\n')
    r = subprocess.run(
        [*CLI, "report", str(tmp_path / "runs")], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no readable training run among 1 folder(s)" in lines[0]
    assert f"{bad / 'metrics.jsonl'}: line 1: 'epoch' expected a positive integer" in lines[0]


def test_a_torn_last_metrics_line_is_still_read(tmp_path):
    bad = _runs(tmp_path / "runs")
    (bad / "eval.json").unlink()
    with open(bad / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "test_a')  # a trainer killed mid-line: not damage
    r = subprocess.run(
        [*CLI, "report", str(tmp_path / "runs"), "--csv"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and "skipped" not in r.stderr, r.stderr
    (cell,) = list(csv.DictReader(io.StringIO(r.stdout)))
    assert cell["n"] == "3" and sorted(cell["seeds"].split()) == ["0/0", "1/0", "2/0"]


# ----------------------------------------------------------------------------- eval
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real 1-epoch run on 56 tiny synthetic crops (32 px)."""
    root = tmp_path_factory.mktemp("evaldamage")
    data = make_aligned(root / "data")
    ws = root / "ws"
    ws.mkdir()
    res = CliRunner().invoke(
        app,
        [
            "train",
            str(data),
            "--epochs",
            "1",
            "--warmup",
            "0",
            "--batch-size",
            "16",
            "--image-size",
            "32",
            "--precision",
            "fp32",
            "--workers",
            "0",
            "--method",
            "ce",
            "--device",
            "cpu",
            "--runs-dir",
            str(ws / "runs"),
            "--workspace",
            str(ws),
        ],
    )
    assert res.exit_code == 0, res.output
    (run,) = [p for p in (ws / "runs").iterdir() if (p / "model.pt").is_file()]
    return run, ws


@pytest.mark.parametrize(
    "case", ["metrics binary", "metrics non-object lines", "metrics epoch one"]
)
def test_eval_of_a_run_with_damaged_metrics_is_one_line(case, trained, tmp_path):
    name, damage, why = DAMAGE[case]
    src, ws = trained
    run = tmp_path / "run"
    shutil.copytree(src, run)
    damage(run / name)
    res = CliRunner().invoke(app, ["eval", str(run), "--device", "cpu", "--workspace", str(ws)])
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {run / name}: ") and why in lines[0], (
        res.output
    )
    assert not (run / "eval.json").exists()


# ----------------------------------------------------------------------------- sweep table
def test_a_folder_in_place_of_the_sweep_table_is_a_note_and_the_csv_is_written(
    tmp_path, monkeypatch
):
    from fernoise.sweep import runner as sweep

    data = make_aligned(tmp_path / "data")
    ws = tmp_path / "ws"
    ws.mkdir()
    Workspace(ws).record("align", key="aligned-synthetic", output=data, params={})
    monkeypatch.setenv("FERNOISE_WORKSPACE", str(ws))
    grid = tmp_path / "g.toml"
    grid.write_text('methods = ["ce"]\nnoise = ["clean"]\n[train]\nepochs = 1\nimage_size = 32\n')
    fake = (
        tmp_path / "python"
    )  # the cell's child interpreter: fails at once (no training needed here)
    fake.write_text("#!/bin/sh\ncat > /dev/null\nexit 3\n")
    fake.chmod(0o755)
    sw = sweep.plan(grid, workspace=Workspace(ws))
    (sw.state_dir / "table.md").mkdir(parents=True)
    states = sweep.run(sw, python=str(fake))
    assert [s.status for s in states] == ["failed"]
    assert (sw.state_dir / "table.csv").is_file() and "ce,clean,0" in (
        sw.state_dir / "table.csv"
    ).read_text()
    assert (sw.state_dir / "table.md").is_dir()
    assert len(sw.notes) == 1 and sw.notes[0].startswith(
        f"{sw.state_dir / 'table.md'} was not written ("
    )
