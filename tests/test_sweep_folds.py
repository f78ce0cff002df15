"""Folds in sweeps (issue 24, item 1): a grid over the folds of a `fernoise split`, state keyed
by grid and manifest, `report` over folds (and warning when folds are missing), a killed cell
read as interrupted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from factories import make_aligned, write_grid

from fernoise.cache import Workspace
from fernoise.errors import FernoiseError
from fernoise.manifest import read_manifest, write_manifest
from fernoise.report import collect, render
from fernoise.split import SplitParams, run_split
from fernoise.sweep import runner as sweep
from fernoise.sweep.grid import load_grid

GRID = """
name = "kf"
methods = ["ce", "nl"]
seeds = [0]
folds = {folds}
noise = [{{kind = "sym", rate = 0.2}}]
[train]
epochs = 1
warmup = 0
image_size = 32
batch_size = 16
workers = 0
precision = "fp32"
device = "cpu"
"""


def with_subjects(root: Path) -> Path:
    """A clean aligned manifest of 56 rows with a ``subject`` column (8 subjects)."""
    path = make_aligned(root)
    m = read_manifest(path)
    df = m.df.copy()
    df["subject"] = [f"S{i % 8}" for i in range(len(df))]
    return write_manifest(df, path, m.meta)


def test_grid_folds_key_is_checked(tmp_path):
    g = load_grid(write_grid(tmp_path / "a.toml", GRID.format(folds='"all"')))
    assert g.folds == "all" and g.manifests == ()
    assert load_grid(write_grid(tmp_path / "b.toml", GRID.format(folds="[1, 0]"))).folds == (1, 0)
    for bad, needle in (("[0, 0]", "distinct fold indices"), ('"some"', 'expected "all"')):
        with pytest.raises(FernoiseError, match=needle):
            load_grid(write_grid(tmp_path / "c.toml", GRID.format(folds=bad)))
    two = 'manifest = ["a.parquet", "b.parquet"]\n' + GRID.format(folds='"all"')
    with pytest.raises(FernoiseError, match="name one manifest"):
        load_grid(write_grid(tmp_path / "d.toml", two))
    g = load_grid(write_grid(tmp_path / "e.toml", two.replace('folds = "all"\n', "")))
    assert g.manifests == ("a.parquet", "b.parquet") and g.manifest == "a.parquet"


def test_plan_finds_the_folds_and_keys_state_by_manifest(tmp_path):
    clean = with_subjects(tmp_path / "data")
    ws = Workspace(tmp_path / "ws")
    (tmp_path / "ws").mkdir()
    with pytest.raises(FernoiseError, match="no folds of manifest.parquet were found"):
        sweep.plan(write_grid(tmp_path / "g.toml", GRID.format(folds='"all"')), clean, workspace=ws)
    res = run_split(clean, SplitParams(folds=2, val_fraction=0.2), workspace=ws)
    every = sweep.plan(tmp_path / "g.toml", clean, workspace=ws)  # the clean manifest: its folds
    assert every.manifests == [p.resolve() for p in res.outputs]
    assert [c.id for c in every.cells] == [
        "ce.sym-20.s0.fold-0",
        "nl.sym-20.s0.fold-0",
        "ce.sym-20.s0.fold-1",
        "nl.sym-20.s0.fold-1",
    ]
    assert every.state_dir.parent == ws.root / "sweeps" / "kf"
    assert every.state_dir.name.startswith("manifest.fold-all-of-2-s0-")
    one = sweep.plan(
        write_grid(tmp_path / "g1.toml", GRID.format(folds="[1]")), res.outputs[0], workspace=ws
    )  # one fold named: its siblings
    assert one.manifests == [res.outputs[1].resolve()] and one.state_dir != every.state_dir
    assert [c.id for c in one.cells] == ["ce.sym-20.s0.fold-1", "nl.sym-20.s0.fold-1"]
    with pytest.raises(FernoiseError, match="fold 2 asked for, but the split has 2 folds"):
        sweep.plan(write_grid(tmp_path / "g2.toml", GRID.format(folds="[2]")), clean, workspace=ws)
    # one grid, two single manifests (folds as plain manifests): two state folders
    plain = GRID.format(folds='"all"').replace('folds = "all"\n', "")
    a = sweep.plan(write_grid(tmp_path / "p.toml", plain), res.outputs[0], workspace=ws)
    b = sweep.plan(tmp_path / "p.toml", res.outputs[1], workspace=ws)
    assert a.state_dir != b.state_dir and a.state_dir.parent == b.state_dir.parent
    assert [c.id for c in a.cells] == ["ce.sym-20.s0", "nl.sym-20.s0"]  # ids as before


def test_a_killed_cell_reads_as_interrupted_and_old_state_is_read(tmp_path):
    data = make_aligned(tmp_path / "data")
    ws = Workspace(tmp_path / "ws")
    (tmp_path / "ws").mkdir()
    plain = GRID.format(folds='"all"').replace('folds = "all"\n', "")
    sw = sweep.plan(write_grid(tmp_path / "p.toml", plain), data, workspace=ws)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that was a process and is gone
    ce, nl = sw.cells
    st = sweep.CellState(ce, status="running", pid=dead.pid)
    sweep._stamp_state(sw, st)
    st.sweep_pid = dead.pid
    sweep._write_cell(sw, st)
    # the old layout (sweeps/<name>/cells/): read while the new folder has no file of the cell
    old = sweep.CellState(nl, status="done", top1=0.5)
    sweep._stamp_state(sw, old)
    (sw.legacy_dir / "cells").mkdir(parents=True)
    (sw.legacy_dir / "cells" / f"{nl.id}.json").write_text(json.dumps(old.to_json()))
    rows = sweep.read_cells(sw)
    assert rows[0]["status"] == "failed" and rows[0]["reason"].startswith(
        f"interrupted: its sweep process (pid {dead.pid}) is gone"
    )
    assert rows[1]["status"] == "done" and rows[1]["top1"] == 0.5
    sweep.write_table(sw)
    table = pd.read_csv(sw.state_dir / "table.csv")
    assert table["status"].tolist() == ["failed", "done"]
    # alive: still running
    st.sweep_pid = __import__("os").getpid()
    sweep._write_cell(sw, st)
    assert sweep.read_cells(sw)[0]["status"] == "running"


@pytest.mark.slow
def test_kfold_sweep_report_over_folds_and_a_partial_one_warns(tmp_path):
    clean = with_subjects(tmp_path / "data")
    root = tmp_path / "ws"
    root.mkdir()
    ws = Workspace(root)
    run_split(clean, SplitParams(folds=2, val_fraction=0.2), workspace=ws)
    # a partial study first: fold 0 only
    part = sweep.plan(
        write_grid(tmp_path / "f0.toml", GRID.format(folds="[0]")), clean, workspace=ws
    )
    states = sweep.run(part)
    assert [s.status for s in states] == ["done", "done"], [s.reason for s in states]
    rep = collect([root / "runs"])
    md = render(rep, "markdown")
    assert "warning: only 1 of 2 folds have runs" in md and "missing fold(s) 1" in md
    assert any("only 1 of 2 folds have runs" in n for n in rep.notes)
    # every fold: fold 0's cells are cache hits, fold 1's run; the partial state stays
    full = sweep.plan(
        write_grid(tmp_path / "all.toml", GRID.format(folds='"all"')), clean, workspace=ws
    )
    states = sweep.run(full)
    assert [s.status for s in states] == ["done"] * 4
    assert [s.hit for s in states] == [True, True, False, False]
    assert (part.state_dir / "table.md").is_file() and (full.state_dir / "table.md").is_file()
    assert part.state_dir != full.state_dir
    md_table = (full.state_dir / "table.md").read_text()
    assert "| manifest |" in md_table and md_table.count("| done |") == 4
    rep = collect([root / "runs"])
    md = render(rep, "markdown")
    assert "k-fold (2): test = the held-out fold" in md and "mean ± std over 2 folds" in md
    assert "warning" not in md and not any("folds have runs" in n for n in rep.notes)
    assert "over 2 folds" in render(rep, "latex")
