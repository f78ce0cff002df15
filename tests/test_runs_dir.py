"""Where runs live is said once (``Workspace.runs_dir``): train writes there, sweep, report and
the run index look there."""

from __future__ import annotations

from factories import GOOD, make_aligned, tiny_train, write_grid
from typer.testing import CliRunner

from fernoise.cache import Workspace


def test_runs_dir_is_the_workspace_runs_folder_unless_given(tmp_path, monkeypatch):
    monkeypatch.setenv("FERNOISE_WORKSPACE", str(tmp_path / "ws"))
    assert Workspace().runs_dir() == (tmp_path / "ws" / "runs").resolve()
    assert Workspace(tmp_path / "other").runs_dir() == (tmp_path / "other" / "runs").resolve()
    assert Workspace().runs_dir(tmp_path / "mine") == tmp_path / "mine"
    assert Workspace().runs_dir(None) == Workspace().runs_dir("")


def test_every_user_of_runs_asks_the_workspace(tmp_path, workspace):
    from fernoise import runindex
    from fernoise.cli.app import app
    from fernoise.sweep import runner as sweep
    from fernoise.train.plan import plan

    ws = Workspace(workspace)
    man = make_aligned(tmp_path / "out", n=20)
    runs = ws.runs_dir().resolve()
    assert plan(man, tiny_train(method="ce", device="cpu"), workspace=ws).run_dir.parent == runs
    assert (
        plan(
            man, tiny_train(method="ce", device="cpu"), runs_dir=tmp_path / "r", workspace=ws
        ).run_dir.parent
        == (tmp_path / "r").resolve()
    )
    assert runindex.runs_root(None, ws) == runs
    assert sweep.plan(write_grid(tmp_path / "g.toml", GOOD), man, workspace=ws).runs_dir == runs
    res = CliRunner().invoke(app, ["report"])  # no runs yet: report names the folder it looked in
    assert res.exit_code == 2 and f"({ws.runs_dir()})" in " ".join(res.output.split()), res.output
