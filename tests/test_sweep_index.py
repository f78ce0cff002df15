"""fernoise/runindex.py: a finished run (and its evaluation) found from the requested
configuration without importing torch; a changed output is never trusted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from factories import SIZE, make_aligned

from fernoise import runindex
from fernoise.cache import Workspace
from fernoise.evaluate.stage import EvalParams, evaluate_run
from fernoise.train.stage import TrainConfig, train


def tiny(**kw) -> TrainConfig:
    base = dict(
        method="ce", epochs=1, warmup=0, batch_size=16, image_size=SIZE, workers=0, device="cpu"
    )
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("idx")
    manifest = make_aligned(root / "data")
    with pytest.MonkeyPatch.context() as mp:  # the array cache goes to the workspace, not the repo
        mp.chdir(root)
        mp.setenv("FERNOISE_WORKSPACE", str(root))
        res = train(manifest, tiny(), runs_dir=root / "runs")
    return root, manifest, res


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FERNOISE_WORKSPACE", str(tmp_path))


def test_finished_run_is_indexed_and_found(trained):
    root, manifest, res = trained
    entries = list((root / "runs" / ".fernoise" / "index").glob("*.json"))
    assert len(entries) == 1
    entry = json.loads(entries[0].read_text())
    assert entry["key"] == res.key and entry["run"] == res.key[:16]
    assert set(entry["files"]) == {"config.json", "metrics.jsonl", "model.pt", "val_ids.json"}
    assert (
        entry["request"]["config"]["method"] == "ce" and "workers" not in entry["request"]["config"]
    )
    assert entry["request"]["host"] is None  # --device cpu: no machine facts in the key
    hit = runindex.lookup(
        manifest, tiny(workers=3), runs_dir=root / "runs"
    )  # workers change no result
    assert hit is not None and hit.hit and hit.key == res.key and hit.output == res.output
    assert runindex.lookup(manifest, tiny(seed=1), runs_dir=root / "runs") is None


def test_hit_through_the_cli_imports_no_torch(trained):
    root, manifest, res = trained
    code = (
        "import sys\n"
        "from fernoise.cli.app import app\n"
        "try:\n    app()\nexcept SystemExit as e:\n    code = e.code\n"
        "print('TORCH', 'torch' in sys.modules, code)\n"
    )
    args = [
        "train",
        str(manifest),
        "--method",
        "ce",
        "--epochs",
        "1",
        "--warmup",
        "0",
        "--batch-size",
        "16",
        "--image-size",
        str(SIZE),
        "--device",
        "cpu",
        "--runs-dir",
        str(root / "runs"),
    ]
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "FERNOISE_WORKSPACE": str(root)},
        check=True,
    ).stdout
    assert f"cache hit: {res.output}" in out
    assert "TORCH False 0" in out


def test_touched_file_is_rehashed_and_changed_file_misses(tmp_path):
    manifest = make_aligned(tmp_path / "data", n=35)
    runs = tmp_path / "runs"
    res = train(manifest, tiny(), runs_dir=runs)
    metrics = res.output / "metrics.jsonl"
    os.utime(metrics, ns=(1, 1))  # same bytes, another mtime: hashed again, still intact
    assert runindex.lookup(manifest, tiny(), runs_dir=runs) is not None
    config = res.output / "config.json"
    config.write_text(config.read_text().replace('"ce"', '"pc"'))
    assert runindex.lookup(manifest, tiny(), runs_dir=runs) is None
    again = train(manifest, tiny(), runs_dir=runs, workspace=Workspace(tmp_path))
    assert not again.hit and again.key == res.key  # rebuilt, never trusted
    assert json.loads(config.read_text())["method"] == "ce"
    assert runindex.lookup(manifest, tiny(), runs_dir=runs) is not None  # re-indexed


def test_eval_index_and_its_inputs(trained):
    root, manifest, res = trained
    run = res.output
    assert runindex.lookup_eval(run) is None
    before = runindex.eval_inputs(run)
    stage, report = evaluate_run(run, EvalParams(device="cpu"))
    assert runindex.record_eval(run, stage.key, inputs_before=before) is not None
    found = runindex.lookup_eval(run)
    assert found == report and found["key"] == stage.key
    assert runindex.lookup_eval(run, cam=2) is None  # another eval parameter
    os.utime(run / "model.pt", ns=(5, 5))  # an input touched: the eval must be re-checked
    assert runindex.lookup_eval(run) is None


@pytest.mark.slow
def test_eval_hit_needs_the_same_model_manifest_and_crops(tmp_path):
    manifest = make_aligned(tmp_path / "data", n=35)
    runs = tmp_path / "runs"
    run = train(manifest, tiny(), runs_dir=runs).output

    def evaluate_and_index():
        before = runindex.eval_inputs(run)
        stage, _ = evaluate_run(run, EvalParams(device="cpu"), force=True)
        assert runindex.record_eval(run, stage.key, inputs_before=before) is not None
        assert runindex.lookup_eval(run) is not None

    evaluate_and_index()
    crop = manifest.parent / "faces" / "0000.png"  # row 0 is a test row
    crop.write_bytes(crop.read_bytes() + b"\0")  # a test crop changed behind the tool's back
    assert runindex.lookup_eval(run) is None

    evaluate_and_index()
    (manifest.parent / "faces" / "0005.png").unlink()  # a test crop gone
    assert runindex.lookup_eval(run) is None

    evaluate_and_index()
    manifest.write_bytes(
        manifest.read_bytes()
    )  # rewritten with the same bytes: the same input (issue 19:
    assert (
        runindex.lookup_eval(run) is not None
    )  # the manifest is known by its sha256, not its mtime)

    evaluate_and_index()
    model = run / "model.pt"
    model.write_bytes(
        model.read_bytes()[:-1] + b"\1"
    )  # the model changed: neither train nor eval is a hit
    assert runindex.lookup(manifest, tiny(), runs_dir=runs) is None
    assert runindex.lookup_eval(run) is None


def test_device_class_and_pretrained_identity(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert runindex.device_class() == "cpu"
    f = tmp_path / "w.pth"
    f.write_bytes(b"x")
    os.utime(f, ns=(7, 7))
    st = f.stat()
    stat = [1, 7, st.st_ctime_ns, st.st_ino]  # size, mtime, ctime, inode (issue 19: as git's index)
    assert runindex.pretrained_identity(str(f)) == {"file": str(f.resolve()), "stat": stat}
    assert runindex.pretrained_identity("no/such/file") is ...  # not cheaply known: no index
    assert runindex.pretrained_identity(None) is None
    monkeypatch.chdir(tmp_path)
    assert (
        runindex.pretrained_identity("latest", Workspace(tmp_path)) is ...
    )  # no pretrain recorded
    Workspace(tmp_path).record("pretrain", key="k1", output=f, params={})
    assert runindex.pretrained_identity("latest", Workspace(tmp_path)) == {
        "latest": ["k1", "w.pth"],
        "target": {"file": str(f.resolve()), "stat": stat},
    }


def test_unindexable_request_falls_back_to_train(trained):
    root, manifest, _ = trained
    cfg = tiny()
    object.__setattr__(
        cfg, "pretrained", "latest"
    )  # a start that cannot be told cheaply (no pretrain recorded)
    assert runindex.train_request(manifest, cfg, Workspace(root)) is None
    assert runindex.lookup(manifest, cfg, runs_dir=root / "runs", workspace=Workspace(root)) is None
    assert runindex.lookup(Path(root / "nope.parquet"), tiny(), runs_dir=root / "runs") is None
