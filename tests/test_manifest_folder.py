"""A folder given for a manifest means its ``manifest.parquet``, in every command that takes one.

Before, five copies of this rule behaved three ways: ``fernoise corrupt OUT/`` read
``OUT/manifest.parquet``, ``fernoise train OUT/`` and ``fernoise eval --manifest OUT/`` refused the
folder, and a folder without a manifest gave a different line per command.
"""

from __future__ import annotations

import pytest
from factories import (
    GOOD,
    eval_cli,
    make_aligned,
    stamped_run,
    tiny_pretrain,
    tiny_train,
    write_grid,
)
from typer.testing import CliRunner

from fernoise.cache import Workspace
from fernoise.cli.app import app
from fernoise.errors import FernoiseError

NONE_INSIDE = "is a folder without a manifest.parquet; pass a manifest .parquet file or a folder that holds a manifest.parquet"


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_resolve_manifest(tmp_path):
    from fernoise.manifest import resolve_manifest

    man = make_aligned(tmp_path / "out", n=8)
    assert resolve_manifest(man) == man
    assert resolve_manifest(tmp_path / "out") == man
    (tmp_path / "empty").mkdir()
    with pytest.raises(FernoiseError, match="is a folder without a manifest.parquet") as e:
        resolve_manifest(tmp_path / "empty", flag="--manifest")
    assert e.value.one_line() == f"--manifest: {tmp_path / 'empty'} {NONE_INSIDE}"
    with pytest.raises(FernoiseError, match="does not exist") as e:
        resolve_manifest(tmp_path / "gone.parquet")
    assert e.value.flag == "MANIFEST"


def test_train_given_a_folder_trains_its_manifest(tmp_path, workspace):
    out = tmp_path / "out"
    man = make_aligned(out, n=20)
    args = [
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
    ]
    res = cli("train", out, *args)
    assert res.exit_code == 0, res.output
    runs = sorted(
        p.name for p in (workspace / "runs").iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    assert len(runs) == 1 and (workspace / "runs" / runs[0] / "model.pt").is_file()
    res = cli(
        "train", man, *args
    )  # the same manifest named as a file: the same run, from the cache
    assert res.exit_code == 0, res.output
    assert (
        sorted(
            p.name
            for p in (workspace / "runs").iterdir()
            if p.is_dir() and not p.name.startswith(".")
        )
        == runs
    )
    assert Workspace(workspace).read()["stages"]["train"]["output"].endswith(runs[0])


def test_the_stages_plan_a_folder_as_its_manifest(tmp_path, workspace):
    from fernoise.corrupt.stage import run_corrupt
    from fernoise.pretrain.stage import plan as pretrain_plan
    from fernoise.sweep import runner as sweep
    from fernoise.train.plan import plan as train_plan

    out = tmp_path / "out"
    man = make_aligned(out, n=20)
    cfg = tiny_train(method="ce", device="cpu")
    assert train_plan(out, cfg).key == train_plan(man, cfg).key
    pcfg = tiny_pretrain()
    assert pretrain_plan(out, pcfg).key == pretrain_plan(man, pcfg).key
    grid = write_grid(tmp_path / "g.toml", GOOD)
    sw = sweep.plan(grid, out, workspace=Workspace(workspace))
    assert (
        sw.manifest == man
        and sw.manifest_key == sweep.plan(grid, man, workspace=Workspace(workspace)).manifest_key
    )
    a = run_corrupt(out, kind="sym", rate=0.2, seed=0, workspace=Workspace(workspace))
    b = run_corrupt(man, kind="sym", rate=0.2, seed=0, workspace=Workspace(workspace))
    assert a.input == b.input == man and a.result.key == b.result.key and b.result.hit


def test_eval_given_a_folder_evaluates_its_manifest(tmp_path, workspace):
    from fernoise.evaluate.stage import EvalParams, evaluate_run

    man, run = stamped_run(tmp_path)
    res = eval_cli(run, "--device", "cpu", "--manifest", man.parent)
    assert res.exit_code == 0, res.output
    by_folder, rep = evaluate_run(run, EvalParams(device="cpu"), manifest=man.parent)
    by_file, _ = evaluate_run(run, EvalParams(device="cpu"), manifest=man)
    assert (
        by_folder.hit
        and by_file.hit
        and by_folder.key == by_file.key
        and by_file.output == by_folder.output
    )
    assert rep["n"] == 14  # the manifest's 14 test rows


@pytest.mark.parametrize(
    "command",
    [
        ["train"],
        ["pretrain"],
        ["split"],
        ["corrupt", "--kind", "sym", "--rate", "0.3"],
        ["sweep", "GRID"],
        ["eval", "RUN", "--manifest"],
    ],
)
def test_a_folder_without_a_manifest_is_the_same_line_everywhere(command, tmp_path, workspace):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = list(command)
    if "GRID" in args:
        args = ["sweep", str(write_grid(tmp_path / "g.toml", GOOD)), str(empty)]
    elif "RUN" in args:
        args[args.index("RUN")] = str(stamped_run(tmp_path)[1])
        args += [str(empty), "--device", "cpu"]
    else:
        args.insert(1, str(empty))
    res = CliRunner().invoke(app, args)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    flag = "--manifest" if command[0] == "eval" else "MANIFEST"
    assert " ".join(lines[0].split()) == f"error: {flag}: {empty} {NONE_INSIDE}"
