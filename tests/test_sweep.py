"""`fernoise sweep`: the grid file, its cells and shares, one-line errors before anything runs,
and the real thing on tiny data: from nothing then all cache hits (no torch import), kill -9
then resume, two shards at once into one workspace, one cell per GPU, a failed cell."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from factories import GOOD, make_aligned, write_grid
from typer.testing import CliRunner

from fernoise.cache import Workspace
from fernoise.cli.app import app
from fernoise.errors import FernoiseError
from fernoise.sweep import runner as sweep

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "grids" / "smoke.toml"
SMOKE_IDS = ["ce.sym-20.s0", "ncctfer.sym-20.s0", "ce.sym-40.s0", "ncctfer.sym-40.s0"]
# Runs the CLI in this interpreter and says, at exit, whether torch was ever imported.
PROBE = (
    "import sys\n"
    "from fernoise.cli.app import app\n"
    "try:\n    app()\nexcept SystemExit as e:\n    code = e.code\n"
    "print('TORCH_IMPORTED', 'torch' in sys.modules, 'EXIT', code)\n"
)


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_aligned(tmp_path_factory.mktemp("sweepdata"))


def new_workspace(root: Path, manifest: Path) -> Path:
    """A workspace whose lock names ``manifest`` as the latest aligned manifest."""
    root.mkdir(parents=True, exist_ok=True)
    Workspace(root).record("align", key="aligned-synthetic", output=manifest, params={})
    return root


def cli(ws: Path, *args: str, probe: bool = False, wait: bool = True):
    cmd = (
        [sys.executable, "-c", PROBE, "sweep", *args]
        if probe
        else [sys.executable, "-m", "fernoise.cli.app", "sweep", *args]
    )
    env = {**os.environ, "FERNOISE_WORKSPACE": str(ws), "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(
            cmd, cwd=ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    return subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=900)


def state(ws: Path, name: str = "smoke") -> Path:
    """The state folder of the sweep of grid ``name`` (one manifest): sweeps/<name>/<tag>/."""
    found = [p for p in (ws / "sweeps" / name).glob("*") if (p / "cells").is_dir()]
    assert len(found) <= 1, found
    return found[0] if found else ws / "sweeps" / name / "none"


def cell_files(ws: Path, name: str = "smoke") -> dict[str, dict]:
    return {
        p.stem: json.loads(p.read_text())
        for p in sorted((state(ws, name) / "cells").glob("*.json"))
    }


def table(ws: Path, name: str = "smoke") -> list[dict]:
    with open(state(ws, name) / "table.csv", newline="") as f:
        return list(csv.DictReader(f))


def figures(rows: list[dict]) -> list[tuple]:
    return [
        (
            r["id"],
            r["status"],
            r["top1"],
            r["val_selected_test_acc"],
            r["test_max"],
            r["test_last5"],
        )
        for r in rows
    ]


# ----------------------------------------------------------------------------- the grid
def test_cells_order_axes_and_per_method_options(tmp_path):
    grid = sweep.load_grid(
        write_grid(
            tmp_path / "g.toml",
            """
name = "g"
methods = ["ce", "pc", "ncctfer"]
seeds = [0, 1]
noise = ["clean", {kind = "asym", rate = 0.3, seed = "train"}]
[train]
epochs = 2
warmup = 1
image-size = [32, 48]
lr_head = 1
lr_decay = 1
[train.ncctfer]
k = 2
""",
        )
    )
    assert grid.fixed == {
        "epochs": 2,
        "warmup": 1,
        "lr_head": 1.0,
        "lr_decay": 1.0,
    } and grid.axes == {"image_size": (32, 48)}
    cells = sweep.expand(grid, root=tmp_path)
    assert len(cells) == 3 * 2 * 2 * 2
    first = [(c.method, c.noise.label(), c.seed, dict(c.options)["image_size"]) for c in cells[:7]]
    assert first == [
        ("ce", "clean", 0, 32),
        ("pc", "clean", 0, 32),
        ("ncctfer", "clean", 0, 32),
        ("ce", "asym 30%", 0, 32),
        ("pc", "asym 30%", 0, 32),
        ("ncctfer", "asym 30%", 0, 32),
        ("ce", "clean", 0, 48),
    ]
    assert cells[12].seed == 1 and [c.index for c in cells] == list(range(24))
    assert len({c.id for c in cells}) == 24 and cells[3].id == "ce.asym-30-ntrain.s0.image_size=32"

    def k(c):  # a TrainConfig field today, ncctfer's own option under the fernoise.methods registry
        return c.config.k if hasattr(c.config, "k") else getattr(c.config.method_params, "k", None)

    assert {k(c) for c in cells if c.method == "ncctfer"} == {2}
    assert {k(c) for c in cells if c.method != "ncctfer"} <= {
        4,
        None,
    }  # None: min(4, C-1), resolved by train.plan
    assert all(c.config.lr_head == 1.0 and c.config.epochs == 2 for c in cells)
    assert cells[15].noise_seed() == 1  # seed = "train": the noise follows the training seed


@pytest.mark.parametrize(("n", "of"), [(0, 1), (1, 2), (4, 2), (5, 3), (10, 4), (7, 7), (3, 5)])
def test_shards_are_disjoint_deterministic_and_cover_every_cell(n, of):
    cells = list(range(n))
    shares = [sweep.shard_cells(cells, i, of) for i in range(1, of + 1)]
    assert sorted(x for s in shares for x in s) == cells  # each cell in exactly one share
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert shares == [sweep.shard_cells(cells, i, of) for i in range(1, of + 1)]


def test_shard_and_gpu_arguments(tmp_path):
    assert sweep.parse_shard("2/4") == (2, 4) and sweep.parse_shard(None) == (1, 1)
    for bad in ("0/2", "3/2", "1", "a/b", "1/0"):
        with pytest.raises(FernoiseError, match="expected i/n"):
            sweep.parse_shard(bad)
    assert sweep.parse_gpus("0, 1,3") == ["0", "1", "3"] and sweep.parse_gpus(None) is None
    with pytest.raises(FernoiseError, match="listed twice"):
        sweep.parse_gpus("0,0")
    with pytest.raises(FernoiseError, match="GPU indices"):
        sweep.parse_gpus("gpu0")
    env = sweep.worker_env({"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}, "2", tmp_path)
    assert (
        env["CUDA_VISIBLE_DEVICES"] == "2"
        and env["FERNOISE_WORKSPACE"] == str(tmp_path)
        and env["PATH"] == "/bin"
    )
    assert (
        sweep.worker_env({"CUDA_VISIBLE_DEVICES": "5"}, None, tmp_path)["CUDA_VISIBLE_DEVICES"]
        == "5"
    )


def test_shipped_grids_parse(tmp_path):
    grids = sorted((REPO / "grids").glob("*.toml"))
    assert {g.stem for g in grids} >= {"smoke", "paper-table2", "paper-table4", "paper-table5"}
    counts = {g.stem: len(sweep.expand(sweep.load_grid(g), root=tmp_path)) for g in grids}
    assert counts["smoke"] == 2 * 2 * 1 and counts["paper-table2"] == 4 * 7 * 3
    assert counts["paper-table4"] == 2 * 5 * 3 and counts["paper-table5"] == 4 * 6 * 3
    assert counts["paper-table5-reduced"] == 4 * 3 * 2 == counts["paper-table5-face"]


# ----------------------------------------------------------------------------- malformed grids
@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (GOOD.replace('"ncctfer"', '"mixup"'), "methods: unknown method 'mixup'; valid: ce, "),
        (
            GOOD.replace("rates = [0.2]", "rates = [0.2, 1.5]"),
            "noise[0].rate: expected a rate in [0, 1), found 1.5",
        ),
        ('manifest = "nowhere/manifest.parquet"\n' + GOOD, "manifest: "),
        (
            "sedes = [0]\n" + GOOD,
            "unknown key 'sedes'; valid keys: description, eval, folds, manifest, methods",
        ),
        (
            GOOD.replace("epochs = 1", "epoch = 1"),
            "unknown train option 'epoch'; valid: augment, backbone, batch_size, ",
        ),
        (GOOD.replace("epochs = 1", 'epochs = "one"'), "train.epochs: expected int, found 'one'"),
        (GOOD.replace("warmup = 0", "warmup = 3"), "train.warmup: "),
        (
            GOOD.replace('kind = "sym"', 'kind = "symmetric"'),
            "noise[0].kind: unknown noise kind 'symmetric'; valid: clean, sym, asym",
        ),
        (
            GOOD.replace('kind = "sym", rates = [0.2]', 'kind = "column", column = "votes"'),
            "noise[0].column: manifest.parquet has no column 'votes'",
        ),
        ('pretrained = ["none", "missing.pth"]\n' + GOOD, "pretrained: "),
        (GOOD.replace("[train]", "[train.pc]\nk = 2\n[train]"), "train.pc: "),
        (GOOD + "[eval]\ncams = 1\n", "eval: unknown key 'cams'; valid keys: cam"),
        (
            GOOD.replace("seeds = [0]", "seeds = [0, -1]"),
            "seeds: expected a list of non-negative integers",
        ),
        ("methods = [", "is not valid TOML"),
    ],
)
def test_malformed_grid_is_one_line_and_nothing_runs(text, needle, data, tmp_path, monkeypatch):
    ws = new_workspace(tmp_path / "ws", data)
    monkeypatch.chdir(ws)
    monkeypatch.setenv("FERNOISE_WORKSPACE", str(ws))
    before = sorted(p.name for p in data.parent.iterdir())
    lock = (ws / "fernoise.lock").read_text()
    listing = sorted(os.listdir(ws))
    grid = write_grid(tmp_path / "bad.toml", text)
    res = CliRunner().invoke(app, ["sweep", str(grid)])
    lines = [ln for ln in res.output.splitlines() if ln.strip() and not ln.startswith("using ")]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert lines[0].startswith("error: GRID: ") or lines[0].startswith("error: MANIFEST: ")
    assert needle in " ".join(res.output.split()), res.output
    assert sorted(os.listdir(ws)) == listing and (ws / "fernoise.lock").read_text() == lock
    assert "sweeps" not in listing and "runs" not in listing
    assert sorted(p.name for p in data.parent.iterdir()) == before  # no noisy manifest written


def test_missing_manifest_argument_and_corrupted_manifest(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FERNOISE_WORKSPACE", str(tmp_path))
    grid = write_grid(tmp_path / "g.toml", GOOD)
    res = CliRunner().invoke(app, ["sweep", str(grid)])  # no lock, no argument
    assert res.exit_code == 2 and "error: MANIFEST: no manifest given" in res.output
    res = CliRunner().invoke(app, ["sweep", str(grid), str(tmp_path / "none.parquet")])
    assert res.exit_code == 2 and "none.parquet does not exist" in res.output
    noisy = data.parent / "manifest.sym-r0.20-s0.parquet"
    from fernoise.corrupt.stage import run_corrupt

    run_corrupt(data, kind="sym", rate=0.2, workspace=Workspace(tmp_path))
    res = CliRunner().invoke(app, ["sweep", str(grid), str(noisy)])
    assert res.exit_code == 2 and "already corrupted" in res.output


# ----------------------------------------------------------------------------- the real thing
@pytest.fixture(scope="module")
def smoke(data, tmp_path_factory):
    """The smoke grid from nothing, then again (the second run probes for torch)."""
    ws = new_workspace(tmp_path_factory.mktemp("smoke"), data)
    first = cli(ws, str(SMOKE))
    after_first = cell_files(ws), table(ws)
    again = cli(ws, str(SMOKE), probe=True)
    return ws, first, again, after_first


@pytest.mark.slow
def test_smoke_from_nothing_then_all_hits_without_torch(smoke):
    ws, first, again, (cells, rows) = smoke
    assert first.returncode == 0, first.stdout + first.stderr
    assert "4 done (0 cache hits), 0 failed" in first.stdout
    assert sorted(cells) == sorted(SMOKE_IDS)
    for c in cells.values():
        assert c["status"] == "done" and not c["hit"] and c["shard"] == "1/1" and c["epochs"] == 1
        run = Path(c["run"])
        assert run.parent == ws / "runs" and (run / "eval.json").is_file()
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
        report = json.loads((run / "eval.json").read_text())
        assert (
            c["top1"] == report["top1"]
            and c["val_selected_test_acc"] == report["history"]["val_selected"]["test_acc"]
        )
        assert json.loads((run / "config.json").read_text())["noise"]["rate"] in (0.2, 0.4)
    assert [r["id"] for r in rows] == SMOKE_IDS and {r["status"] for r in rows} == {"done"}
    assert len(list((ws / "runs").glob("*/model.pt"))) == 4
    # Again: every cell a hit, decided without importing torch or starting a child.
    assert again.returncode == 0, again.stdout + again.stderr
    assert "4 done (4 cache hits), 0 failed" in again.stdout
    assert "TORCH_IMPORTED False EXIT 0" in again.stdout
    assert (
        cell_files(ws) == cells
    )  # a finished cell's file is left as the run that made it wrote it
    assert figures(table(ws)) == figures(rows)
    md = (state(ws) / "table.md").read_text()
    assert md.count("| done |") == 4


@pytest.mark.slow
def test_kill_9_mid_sweep_then_resume_gives_the_same_table(smoke, data, tmp_path):
    ws = new_workspace(tmp_path / "ws", data)
    proc = cli(ws, str(SMOKE), wait=False)
    deadline = time.time() + 300
    child = None
    while time.time() < deadline and proc.poll() is None:
        cells = cell_files(ws)
        done = [c for c in cells.values() if c["status"] == "done"]
        running = [c for c in cells.values() if c["status"] == "running" and c["pid"]]
        if done and running:
            child = running[0]["pid"]
            break
        time.sleep(0.05)
    assert child is not None, "the first cell never finished"
    os.kill(proc.pid, signal.SIGKILL)  # the sweep only: its running cell must die with it
    proc.wait()

    def alive(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state not in ("Z", "X")

    t = time.time()
    while alive(child) and time.time() - t < 30:
        time.sleep(0.1)
    assert not alive(child), "the running cell outlived the killed sweep"
    resumed = cli(ws, str(SMOKE))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "4 done (" in resumed.stdout and "0 failed" in resumed.stdout
    smoke_ws = smoke[0]
    assert figures(table(ws)) == figures(
        table(smoke_ws)
    )  # the same figures as an uninterrupted sweep
    assert all(
        len((Path(c["run"]) / "metrics.jsonl").read_text().splitlines()) == 1
        for c in cell_files(ws).values()
    )
    assert [len(runs_started(ws, c)) for c in SMOKE_IDS] == [
        1,
        2,
        1,
        1,
    ]  # the killed cell, started again


def runs_started(ws: Path, cell_id: str, name: str = "smoke") -> list[str]:
    """The header line the sweep writes into a cell's log each time it starts the cell's run."""
    log = state(ws, name) / "logs" / f"{cell_id}.log"
    return (
        [ln for ln in log.read_text().splitlines() if ln.startswith("== ")] if log.exists() else []
    )


@pytest.mark.slow
def test_two_shards_at_once_into_one_workspace(smoke, data, tmp_path):
    ws = new_workspace(tmp_path / "ws", data)
    procs = [cli(ws, str(SMOKE), "--shard", f"{i}/2", wait=False) for i in (1, 2)]
    # and, overlapping both, the whole sweep started by mistake at the same time
    procs.append(cli(ws, str(SMOKE), wait=False))
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert "2 done" in outs[0][0] and "2 done" in outs[1][0] and "4 done" in outs[2][0]
    cells = cell_files(ws)
    assert sorted(cells) == sorted(SMOKE_IDS) and {c["status"] for c in cells.values()} == {"done"}
    # Every cell's run was started exactly once (the others waited for it, then hit the cache),
    # and never by a process whose share does not hold it.
    for i, cell_id in enumerate(SMOKE_IDS):
        started = runs_started(ws, cell_id)
        assert len(started) == 1, started
        assert f"shard {'1/2' if i < 2 else '2/2'} " in started[0] or "shard 1/1 " in started[0]
    runs = sorted((ws / "runs").glob("*/metrics.jsonl"))
    assert len(runs) == 4 and all(len(r.read_text().splitlines()) == 1 for r in runs)
    rows = table(ws)  # written last by whichever shard finished last: every cell, done
    assert figures(rows) == figures(table(smoke[0]))
    lock = json.loads((ws / "fernoise.lock").read_text())
    assert {"align", "corrupt", "train", "eval"} <= set(lock["stages"])
    again = cli(ws, str(SMOKE), "--dry-run")
    assert again.returncode == 0 and "dry run: 4 of 4 cells done" in again.stdout
    model = (
        Path(cells[SMOKE_IDS[0]]["run"]) / "model.pt"
    )  # changed behind the sweep's back: not a hit
    model.write_bytes(model.read_bytes()[:-1] + bytes([model.read_bytes()[-1] ^ 1]))
    again = cli(ws, str(SMOKE), "--dry-run")
    assert again.returncode == 0 and "dry run: 3 of 4 cells done" in again.stdout


@pytest.mark.slow
def test_one_cell_per_gpu_and_a_failed_cell_does_not_stop_the_other(data, tmp_path):
    ws = new_workspace(tmp_path / "ws", data)
    grid = write_grid(
        tmp_path / "gpus.toml", 'name = "gpus"\n' + GOOD + "[train.ncctfer]\nk = 7\n"
    )  # 7 classes: k <= 6
    res = cli(ws, str(grid), "--gpus", "0,1")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "1 done (0 cache hits), 1 failed" in res.stdout
    assert "failed ncctfer.sym-20.s0: --k: " in res.stderr and "got 7" in res.stderr
    cells = cell_files(ws, "gpus")
    ce, ncc = cells["ce.sym-20.s0"], cells["ncctfer.sym-20.s0"]
    assert ce["status"] == "done" and ncc["status"] == "failed"
    assert {ce["gpu"], ncc["gpu"]} == {"0", "1"}  # one cell per GPU, at once
    assert ce["visible_devices"] == ce["gpu"] and ncc["visible_devices"] == ncc["gpu"]
    assert ce["started"] < ncc["finished"] and ncc["started"] < ce["finished"]
    rows = {r["id"]: r for r in table(ws, "gpus")}
    # table.csv escapes a cell that starts with "-" (a spreadsheet formula), fernoise/csvsafe.py
    assert rows["ncctfer.sym-20.s0"]["reason"].startswith("'--k: ")


@pytest.mark.slow
def test_slurm_example_runs_its_share(smoke):
    ws = smoke[0]
    env = {
        **os.environ,
        "SLURM_ARRAY_TASK_ID": "3",
        "SLURM_ARRAY_TASK_MIN": "2",
        "SLURM_ARRAY_TASK_COUNT": "2",
        "WORKSPACE": str(ws),
        "VENV": str(Path(sys.executable).parent.parent),
        "SWEEP_ARGS": "--dry-run",
    }
    res = subprocess.run(
        ["bash", str(REPO / "examples" / "slurm_sweep.sh"), str(SMOKE)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    out = " ".join(res.stdout.split())
    assert "sweep smoke shard 2/2: 2 cells" in out and "dry run: 2 of 2 cells done" in out
    assert "ce.sym-40" not in out and "sym 40%" in out and "sym 20%" not in out  # cells 3-4 only


def test_eta_from_finished_and_running_cells(tmp_path):
    grid = sweep.load_grid(
        write_grid(
            tmp_path / "g.toml", GOOD.replace('["ce", "ncctfer"]', '["ce", "pc", "nl", "ncctfer"]')
        )
    )
    cells = sweep.expand(grid, root=tmp_path)
    sw = sweep.Sweep(
        grid=grid,
        manifest=tmp_path / "m.parquet",
        manifest_key="k",
        workspace=Workspace(tmp_path),
        runs_dir=tmp_path / "runs",
        cells=cells,
        mine=cells,
        shard=(1, 1),
        state_dir=tmp_path / "s",
    )
    now = time.time()
    states = [sweep.CellState(c) for c in cells]
    sw.states = {s.cell.index: s for s in states}
    assert sweep.eta_seconds(sw) is None  # nothing known yet
    states[0].status, states[0].started, states[0].finished = (
        "done",
        now - 200,
        now - 100,
    )  # ran 100 s
    states[1].status, states[1].hit = "done", True  # a cache hit says nothing about duration
    states[2].status, states[2].started = "running", now - 30
    states[2].epoch, states[2].epochs, states[2].batch, states[2].batches = (
        1,
        2,
        1,
        2,
    )  # 25% done in 30 s
    # running: 120 s projected, 90 s left; one queued cell at the mean of 100 s
    assert sweep.eta_seconds(sw) == pytest.approx(190, abs=1)
    assert sweep.eta_seconds(sw, slots=2) == pytest.approx(95, abs=1)
    assert sweep.summary(states) == {"queued": 1, "running": 1, "done": 2, "failed": 0, "hits": 1}


def test_dry_run_lists_cells_and_writes_nothing(data, tmp_path, monkeypatch):
    ws = new_workspace(tmp_path / "ws", data)
    monkeypatch.chdir(ws)
    monkeypatch.setenv("FERNOISE_WORKSPACE", str(ws))
    grid = write_grid(tmp_path / "g.toml", GOOD.replace("rates = [0.2]", "rates = [0.3, 0.6]"))
    before, listing = sorted(p.name for p in data.parent.iterdir()), sorted(os.listdir(ws))
    res = CliRunner().invoke(app, ["sweep", str(grid), "--dry-run", "--shard", "2/2"])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "sweep g shard 2/2: 2 cells" in out and "dry run: 0 of 2 cells done" in out
    assert "sym 60%" in out and "sym 30%" not in out
    assert (
        sorted(os.listdir(ws)) == listing
        and sorted(p.name for p in data.parent.iterdir()) == before
    )


def test_a_crashing_cell_is_failed_with_its_log_and_the_others_go_on(data, tmp_path, monkeypatch):
    ws = new_workspace(tmp_path / "ws", data)
    monkeypatch.chdir(ws)
    monkeypatch.setenv("FERNOISE_WORKSPACE", str(ws))
    fake = tmp_path / "python"  # stands for the child's interpreter: dies without a word on stdout
    fake.write_text(
        "#!/bin/sh\ncat > /dev/null\necho 'Segmentation fault (core dumped)' >&2\nexit 139\n"
    )
    fake.chmod(0o755)
    grid = write_grid(tmp_path / "g.toml", GOOD)
    sw = sweep.plan(grid, workspace=Workspace(ws))
    seen = []
    states = sweep.run(
        sw, python=str(fake), update=lambda s: seen.append(sweep.summary(s.states.values()))
    )
    assert [s.status for s in states] == [
        "failed",
        "failed",
    ]  # the first failure did not stop the second
    for s in states:
        log = sw.log_file(s.cell)
        assert (
            s.reason
            == f"the cell's process exited with code 139 (Segmentation fault (core dumped)); log: {log}"
        )
        assert log.read_text().splitlines()[0].startswith("== ") and s.cell.id in log.read_text()
    rows = table(ws, "g")
    assert [r["status"] for r in rows] == ["failed", "failed"] and rows[0]["reason"].startswith(
        "the cell's process exited"
    )
    assert seen[-1] == {"queued": 0, "running": 0, "done": 0, "failed": 2, "hits": 0}


def test_gpus_and_an_explicit_cuda_index(tmp_path):
    grid = sweep.load_grid(
        write_grid(
            tmp_path / "g.toml", GOOD.replace("workers = 0", 'workers = 0\ndevice = "cuda:1"')
        )
    )
    cells = sweep.expand(grid, root=tmp_path)
    sweep.check_gpu_devices(cells, None)  # without --gpus, cuda:1 is the user's business
    with pytest.raises(
        FernoiseError, match=r"asks for cuda:1, but with --gpus each cell sees one GPU"
    ):
        sweep.check_gpu_devices(cells, ["0", "1"])


def test_a_methods_own_options_by_field_or_flag_name(tmp_path):
    grid = sweep.load_grid(
        write_grid(
            tmp_path / "g.toml",
            """
methods = ["scn", "ce"]
[train]
epochs = 12
[train.scn]
scn-margin = 0.15
relabel_epoch = 3
""",
        )
    )
    scn, ce = sweep.expand(grid, root=tmp_path)
    assert (scn.config.method_params.margin, scn.config.method_params.relabel_epoch) == (0.15, 3)
    assert ce.method == "ce" and not hasattr(ce.config.method_params, "margin")
    with pytest.raises(
        FernoiseError,
        match=r"train: 'margin' is an option of scn, not of ce; set it under \[train.scn\]",
    ):
        sweep.load_grid(
            write_grid(tmp_path / "h.toml", 'methods = ["scn", "ce"]\n[train]\nmargin = 0.1\n')
        )
    with pytest.raises(
        FernoiseError, match=r"train.ce: unknown train option 'margin'; valid: .*batch_size"
    ):
        sweep.load_grid(
            write_grid(tmp_path / "i.toml", 'methods = ["scn", "ce"]\n[train.ce]\nmargin = 0.1\n')
        )


def test_shipped_grids_are_named_by_name(data, tmp_path, monkeypatch):
    ws = new_workspace(tmp_path / "ws", data)
    monkeypatch.chdir(ws)  # no grids/ folder here: the grid comes from the package
    monkeypatch.setenv("FERNOISE_WORKSPACE", str(ws))
    listing = sorted(os.listdir(ws))
    res = CliRunner().invoke(app, ["sweep", "smoke", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "sweep smoke: 4 cells" in " ".join(res.output.split())
    bad = CliRunner().invoke(app, ["sweep", "smokey", "--dry-run"])
    lines = [ln for ln in bad.output.splitlines() if ln.strip() and not ln.startswith("using ")]
    assert bad.exit_code == 2 and len(lines) == 1, bad.output
    assert "shipped grids: paper-table2, paper-table4, paper-table5," in lines[0]
    assert "smoke" in lines[0].split("shipped grids:")[1]
    assert sorted(os.listdir(ws)) == listing
