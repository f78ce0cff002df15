"""Issue 19, item 4 (c): `fernoise report` never shows an eval.json made for an older model.pt
of the run, and an evaluation made with --force on changed inputs says so wherever its numbers
appear (eval.json, eval's summary, report's table and CSV)."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from factories import make_manifest, one_epoch_args
from typer.testing import CliRunner

from fernoise.cache import file_sha256, stamp_path, write_stamp
from fernoise.cli.app import app

ARGS = one_epoch_args()


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _train(data: Path, *extra) -> Path:
    res = cli("train", data, *ARGS, *extra)
    assert res.exit_code == 0, res.output
    return Path(res.output.strip().splitlines()[-1].partition(": ")[2])


@pytest.fixture
def data(tmp_path) -> Path:
    return make_manifest(tmp_path / "d", n=30)


@pytest.mark.slow
def test_report_leaves_out_an_eval_json_of_an_older_model_pt(data, workspace):
    run = _train(data, "--seed", "0")
    other = _train(data, "--seed", "1")
    res = cli("eval", run, "--device", "cpu")
    assert res.exit_code == 0, res.output
    rep = json.loads((run / "eval.json").read_text())
    assert rep["model_sha256"] == file_sha256(run / "model.pt")
    assert rep["inputs"]["model"] == rep["model_sha256"] and rep["forced"] == []
    shutil.rmtree(
        other.parent / ".fernoise", ignore_errors=True
    )  # the index would answer for `other`
    before = cli("report", run)
    assert before.exit_code == 0 and "final [95% CI]" in before.output, before.output
    # What `train --force` leaves where training is not bit-reproducible (CUDA): the same key,
    # other weights, a fresh stamp. The eval.json beside it evaluated the old weights.
    shutil.copy2(other / "model.pt", run / "model.pt")
    stamp = json.loads(stamp_path(run / "model.pt").read_text())
    write_stamp(
        run / "model.pt",
        stamp["key"],
        [run / n for n in stamp["outputs"]],
        stage="train",
        params=stamp["params"],
    )
    after = cli("report", run)
    assert after.exit_code == 0, after.output
    assert "final [95% CI]" not in after.output, after.output  # the stale figure is not shown
    assert "eval.json left out: it evaluated an older model.pt" in after.output
    # `fernoise eval` evaluates the new model.pt (its key covers the sha256), and report shows it.
    res = cli("eval", run, "--device", "cpu")
    assert res.exit_code == 0 and "cache hit" not in res.output, res.output
    assert json.loads((run / "eval.json").read_text())["model_sha256"] == file_sha256(
        other / "model.pt"
    )
    again = cli("report", run)
    assert "final [95% CI]" in again.output and "left out" not in again.output, again.output


@pytest.mark.slow
def test_an_evaluation_forced_on_a_changed_model_says_so_everywhere(data, workspace):
    run = _train(data, "--seed", "0")
    other = _train(data, "--seed", "1")
    shutil.copy2(other / "model.pt", run / "model.pt")  # behind train's back: the stamp disagrees
    refused = cli("eval", run, "--device", "cpu")
    assert refused.exit_code == 2 and "--force" in refused.output
    res = cli("eval", run, "--device", "cpu", "--force")
    assert res.exit_code == 0, res.output
    flat = " ".join(res.output.split())  # rich wraps the table to the terminal
    assert "FORCED: evaluated with --force" in flat, res.output
    top1 = next(ln for ln in res.output.splitlines() if "top-1 accuracy" in ln)
    assert "(forced:" in top1, top1
    rep = json.loads((run / "eval.json").read_text())
    assert (
        len(rep["forced"]) == 1
        and "differs from the model.pt that `fernoise train` wrote" in rep["forced"][0]
    )
    table = cli("report", run, other)
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    row = next(ln for ln in lines if ln.startswith("| ce"))
    assert row.rstrip(" |").endswith("*"), row
    assert (
        f"evaluated with --force on inputs that differ from what train/align recorded: {run.name}"
        in " ".join(table.output.split())
    )
    out = cli("report", run, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out.output.split("note:")[0])))
    assert rows[0]["final_forced"] == "yes"
