"""Issue 19 item 7: sweep cells are named by what they are (not by a file's base name), long
names are shortened with a hash, and a crash in the sweep's worker fails the cell, not the sweep.

The cells' child interpreter is a shell script that fails at once: what is tested is the
sweep's bookkeeping (cell files, table), not training."""

from __future__ import annotations

import csv
import json

import pytest
from factories import make_aligned

from fernoise.cache import Workspace
from fernoise.errors import FernoiseError
from fernoise.sweep import runner as sweep


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_aligned(tmp_path_factory.mktemp("cellsdata"))


@pytest.fixture
def ws(tmp_path, data, monkeypatch):
    root = tmp_path / "ws"
    root.mkdir()
    Workspace(root).record("align", key="aligned-synthetic", output=data, params={})
    monkeypatch.setenv("FERNOISE_WORKSPACE", str(root))
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def failing_python(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\ncat > /dev/null\necho 'no training in this test' >&2\nexit 3\n")
    fake.chmod(0o755)
    return str(fake)


def grid(ws, text, name="g"):
    path = ws / f"{name}.toml"
    path.write_text(f'methods = ["ce"]\n{text}\n[train]\nepochs = 1\nimage_size = 32\n')
    return path


def table(sw):
    with open(sw.state_dir / "table.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_two_starts_of_one_file_name_are_two_cells_with_their_own_files(ws, failing_python):
    for d in ("a", "b"):
        (ws / d).mkdir()
        (ws / d / "backbone.pt").write_bytes(d.encode())
    sw = sweep.plan(
        grid(ws, 'pretrained = ["a/backbone.pt", "b/backbone.pt"]'), workspace=Workspace(ws)
    )
    ids = [c.id for c in sw.cells]
    assert len(set(ids)) == 2 and all(i.startswith("ce.clean.s0.pre-backbone.pt-") for i in ids)
    states = sweep.run(sw, python=failing_python)
    assert [s.status for s in states] == ["failed", "failed"]
    files = sorted(p.stem for p in (sw.state_dir / "cells").glob("*.json"))
    assert files == sorted(ids)
    rows = table(sw)
    assert [r["status"] for r in rows] == ["failed", "failed"]  # main: one stays `queued` for ever
    assert [r["pretrained"] for r in rows] == ["a/backbone.pt", "b/backbone.pt"]


def test_two_matrix_files_of_one_name_are_two_noise_settings(ws):
    for d, rows in (("a", "1,0\n0,1\n"), ("b", "0,1\n1,0\n")):
        (ws / d).mkdir()
        (ws / d / "T.csv").write_text(rows)
    text = 'noise = [{kind = "matrix", matrix = "a/T.csv"}, {kind = "matrix", matrix = "b/T.csv"}]'
    g = sweep.load_grid(grid(ws, text))  # main: "the setting 'matrix-T.csv' is listed twice"
    assert [n.matrix for n in g.noise] == ["a/T.csv", "b/T.csv"]
    cells = sweep.expand(g, root=ws)
    assert len({c.id for c in cells}) == 2 and all(
        c.id.startswith("ce.matrix-T.csv-") for c in cells
    )
    same = 'noise = [{kind = "matrix", matrix = "a/T.csv"}, {kind = "matrix", matrix = "a/T.csv"}]'
    with pytest.raises(FernoiseError, match="'matrix-T.csv' is listed twice"):
        sweep.load_grid(grid(ws, same, "same"))


def test_ordinary_cell_names_are_unchanged(ws):
    g = sweep.load_grid(
        grid(
            ws,
            'seeds = [0, 1]\nnoise = ["clean", {kind = "sym", rates = [0.2]}]\n'
            'pretrained = ["none", "a/start.pt"]',
        )
    )
    ids = [c.id for c in sweep.expand(g, root=ws)]
    assert ids == [
        "ce.clean.s0",
        "ce.sym-20.s0",
        "ce.clean.s0.pre-start.pt",
        "ce.sym-20.s0.pre-start.pt",
        "ce.clean.s1",
        "ce.sym-20.s1",
        "ce.clean.s1.pre-start.pt",
        "ce.sym-20.s1.pre-start.pt",
    ]


def test_a_243_character_file_name_is_a_short_cell_name_and_the_cell_fails_cleanly(
    ws, failing_python
):
    long_name = "x" * 240 + ".pt"
    (ws / long_name).write_bytes(b"not a state dict")
    other = "x" * 200 + "y" * 40 + ".pt"  # the same first 150 characters: still another cell
    (ws / other).write_bytes(b"neither")
    sw = sweep.plan(grid(ws, f'pretrained = ["{long_name}", "{other}"]'), workspace=Workspace(ws))
    ids = [c.id for c in sw.cells]
    assert len(set(ids)) == 2 and all(len(i) == 150 for i in ids)  # fernoise.sweep.grid.MAX_ID
    states = sweep.run(
        sw, python=failing_python
    )  # main: the worker thread dies, the cell stays `running`
    assert [s.status for s in states] == ["failed", "failed"]
    assert all(s.reason.startswith("the cell's process exited with code 3") for s in states)
    for i in ids:
        assert json.loads((sw.state_dir / "cells" / f"{i}.json").read_text())["status"] == "failed"
    assert [r["status"] for r in table(sw)] == ["failed", "failed"]


def test_a_crash_in_the_worker_fails_the_cell_and_the_sweep_goes_on(
    ws, monkeypatch, failing_python
):
    sw = sweep.plan(grid(ws, "seeds = [0, 1]"), workspace=Workspace(ws))
    real = sweep._run_child

    def crash_first(sweep_, st, *a, **kw):
        if st.cell.seed == 0:
            raise OSError(36, "File name too long")
        return real(sweep_, st, *a, **kw)

    monkeypatch.setattr(sweep, "_run_child", crash_first)
    states = sweep.run(sw, python=failing_python)
    assert [s.status for s in states] == ["failed", "failed"]
    assert (
        states[0].reason
        == "the sweep could not run this cell: OSError: [Errno 36] File name too long"
    )
    assert states[1].reason.startswith("the cell's process exited with code 3")
    rows = table(sw)
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert rows[0]["reason"] == states[0].reason
    assert states[0].reason in sw.log_file(states[0].cell).read_text()


def test_a_cell_whose_file_cannot_be_written_is_failed_and_the_table_says_why(ws, failing_python):
    sw = sweep.plan(grid(ws, "seeds = [0, 1]"), workspace=Workspace(ws))
    sw.cell_file(sw.cells[0]).mkdir(parents=True)  # a folder where the cell's state file goes
    states = sweep.run(
        sw, python=failing_python
    )  # main: the worker thread dies, the cell stays `running`
    assert [s.status for s in states] == ["failed", "failed"]
    assert states[0].reason.startswith("the sweep could not run this cell: IsADirectoryError: ")
    assert states[1].reason.startswith("the cell's process exited with code 3")
    rows = table(sw)
    assert [r["status"] for r in rows] == ["failed", "failed"] and rows[0]["reason"] == states[
        0
    ].reason
    assert states[0].reason in sw.log_file(states[0].cell).read_text()
