"""The stage runner: keys, hits, misses, tampered outputs, the workspace lock."""

from __future__ import annotations

import json

import pytest

from fernoise.cache import Workspace, atomic_write_text, run_stage, stage_key
from fernoise.errors import FernoiseError


def test_stage_key_is_canonical_and_sensitive():
    a = stage_key("corrupt", 1, {"rate": 0.3, "kind": "sym"}, {"manifest": "abc"})
    b = stage_key("corrupt", 1, {"kind": "sym", "rate": 0.3}, {"manifest": "abc"})
    assert a == b and len(a) == 64
    assert a != stage_key("corrupt", 2, {"kind": "sym", "rate": 0.3}, {"manifest": "abc"})
    assert a != stage_key("corrupt", 1, {"kind": "sym", "rate": 0.4}, {"manifest": "abc"})
    assert a != stage_key("corrupt", 1, {"kind": "sym", "rate": 0.3}, {"manifest": "abd"})


def _runner(tmp_path, calls, value="x"):
    out = tmp_path / "out" / "result.txt"

    def build(key):
        calls.append(key)
        atomic_write_text(out, value)
        return [out]

    return run_stage(
        stage="demo",
        version=1,
        params={"v": value},
        inputs={},
        output=out,
        build=build,
        workspace=Workspace(tmp_path),
    )


def test_hit_miss_and_tampering(tmp_path):
    calls: list[str] = []
    r1 = _runner(tmp_path, calls)
    assert not r1.hit and len(calls) == 1 and r1.output.read_text() == "x"
    r2 = _runner(tmp_path, calls)
    assert r2.hit and len(calls) == 1 and r2.key == r1.key
    r1.output.write_text("edited behind the tool's back")
    r3 = _runner(tmp_path, calls)
    assert not r3.hit and len(calls) == 2 and r3.output.read_text() == "x"
    r3.output.unlink()
    r4 = _runner(tmp_path, calls)
    assert not r4.hit and r4.output.exists()
    r5 = _runner(tmp_path, calls, value="y")
    assert not r5.hit and r5.key != r1.key


def test_workspace_lock_records_latest(tmp_path):
    calls: list[str] = []
    r = _runner(tmp_path, calls)
    lock = json.loads((tmp_path / "fernoise.lock").read_text())
    assert lock["stages"]["demo"]["key"] == r.key
    assert lock["stages"]["demo"]["output"] == "out/result.txt"
    assert Workspace(tmp_path).latest("demo") == r.output.resolve()
    with pytest.raises(FernoiseError, match="fernoise align"):
        Workspace(tmp_path).latest("align")


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "1")
    atomic_write_text(tmp_path / "a.txt", "2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    assert (tmp_path / "a.txt").read_text() == "2"


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    import os
    import stat

    atomic_write_text(tmp_path / "b.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o666 & ~mask


def test_latest_picks_the_most_recent_of_several_stages(tmp_path):
    ws = Workspace(tmp_path)
    for name in ("a.parquet", "a.sym.parquet", "b.parquet"):
        (tmp_path / name).write_text("x")
    ws.record("align", key="k1", output=tmp_path / "a.parquet", params={})
    ws.record("corrupt", key="k2", output=tmp_path / "a.sym.parquet", params={})
    assert ws.latest("corrupt", "align") == (tmp_path / "a.sym.parquet").resolve()
    ws.record("align", key="k3", output=tmp_path / "b.parquet", params={})  # a new dataset
    assert ws.latest("corrupt", "align") == (tmp_path / "b.parquet").resolve()
    (tmp_path / "b.parquet").unlink()  # a deleted output is never offered
    assert ws.latest("corrupt", "align") == (tmp_path / "a.sym.parquet").resolve()


def test_concurrent_lock_updates_lose_no_write(tmp_path):
    """Three processes x 200 records, each under its own stage name: all 600 survive."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from fernoise.cache import Workspace\n"
        "ws = Workspace(sys.argv[1])\n"
        "for j in range(200):\n"
        "    ws.record(f'p{sys.argv[2]}-{j}', key=str(j), output=sys.argv[1], params={})\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(i)]) for i in range(3)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0]
    stages = json.loads((tmp_path / "fernoise.lock").read_text())["stages"]
    assert sorted(stages) == sorted(f"p{i}-{j}" for i in range(3) for j in range(200))
    assert sorted(e["seq"] for e in stages.values()) == list(range(1, 601))
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
