"""Train on input that lies (issue 8) and a researcher's defaults (issue 9): a hostile or
truncated checkpoint, a manifest edited behind its metadata, crops changed after the image
cache was built, crop paths leaving the manifest's folder, bad inputs that must be one line,
validation labels, unseen test classes, warm-up, --max-rows, the header line, checkpoints."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from factories import SIZE, TINY_ARGS, cli, make_manifest, read_metrics, tiny_train
from PIL import Image

from fernoise.manifest import read_manifest
from fernoise.train.config import TrainConfig
from fernoise.train.plan import plan
from fernoise.train.stage import train


class Payload:
    """Unpickling this object creates ``marker`` (what an attacker's code would do)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def one_line(res) -> str:
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    return lines[0]


# ----------------------------------------------------------------------------- 8.1 checkpoint
def test_a_pickle_payload_checkpoint_runs_nothing_and_the_run_starts_over(tmp_path, workspace):
    data = make_manifest(tmp_path / "d", n=40)
    cfg = tiny_train(method="ce", epochs=1, warmup=0)
    p = plan(data, cfg, runs_dir=workspace / "runs")
    marker = tmp_path / "pwned"
    p.run_dir.mkdir(parents=True)
    torch.save(
        {"key": p.key, "epoch": 1, "evil": Payload(str(marker))}, p.run_dir / "checkpoint.pt"
    )
    events = []
    res = train(data, cfg, runs_dir=workspace / "runs", progress=events.append)
    assert not marker.exists()
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    assert any(
        "checkpoint.pt is not a readable checkpoint" in w and "starts over" in w for w in warnings
    )
    assert not any(e["event"] == "resume" for e in events)
    assert [m["epoch"] for m in read_metrics(res.output)] == [1] and (
        res.output / "model.pt"
    ).is_file()


@pytest.mark.slow
def test_a_truncated_or_foreign_checkpoint_is_absent_in_one_line(tmp_path, workspace):
    data = make_manifest(tmp_path / "d", n=40)
    args = ["train", data, *TINY_ARGS, "--epochs", "2", "--keep-checkpoint"]
    first = cli(*args)
    assert first.exit_code == 0, first.output
    run = Path(first.output.strip().splitlines()[-1].split(": ", 1)[1])
    ckpt = run / "checkpoint.pt"
    whole = ckpt.read_bytes()
    ckpt.write_bytes(whole[: len(whole) // 2])
    (run / "model.pt").unlink()  # the run is unfinished: train must look at the checkpoint
    again = cli(*args)
    assert again.exit_code == 0, again.output
    warn = [ln for ln in again.output.splitlines() if "warning" in ln]
    assert len(warn) == 1 and "not a readable checkpoint" in warn[0] and "starts over" in warn[0]
    assert (
        "resuming" not in again.output
        and "epoch   1" in again.output
        and (run / "model.pt").is_file()
    )
    # a checkpoint of another run (other key) is ignored the same way
    state = torch.load(ckpt, weights_only=True)
    state["key"] = "0" * 64
    torch.save(state, ckpt)
    (run / "model.pt").unlink()
    third = cli(*args)
    assert (
        third.exit_code == 0
        and "belongs to another run" in third.output
        and "resuming" not in third.output
    )


# ----------------------------------------------------------------------------- 8.4 content keys
def _rewrite_keeping_metadata(path: Path, change) -> None:
    """Edit a manifest with pyarrow as a user would, keeping its schema metadata."""
    table = pq.read_table(path)
    meta = table.schema.metadata
    table = change(table)
    pq.write_table(table.replace_schema_metadata(meta), path)


@pytest.mark.slow
def test_a_manifest_edited_behind_its_metadata_misses_the_train_cache(tmp_path, workspace):
    data = make_manifest(tmp_path / "d", n=60)
    cfg = tiny_train(method="ce", epochs=1, warmup=0)
    first = train(data, cfg, runs_dir=workspace / "runs")
    assert train(data, cfg, runs_dir=workspace / "runs").hit
    _rewrite_keeping_metadata(data, lambda t: t.slice(0, 50))  # rows dropped
    events = []
    dropped = train(data, cfg, runs_dir=workspace / "runs", progress=events.append)
    assert not dropped.hit and dropped.key != first.key
    assert any(
        "was edited after" in e["message"] and "rows" in e["message"]
        for e in events
        if e["event"] == "warning"
    )
    zero = pa.array([0] * 50, pa.int64())
    _rewrite_keeping_metadata(
        data, lambda t: t.set_column(t.column_names.index("label"), "label", zero)
    )
    relabelled = train(data, cfg, runs_dir=workspace / "runs")
    assert not relabelled.hit and relabelled.key not in (first.key, dropped.key)
    assert (
        json.loads((relabelled.output / "config.json").read_text())["train_class_counts"][1:]
        == [0] * 6
    )


# ----------------------------------------------------------------------------- 8.5 crops
def test_crops_changed_or_deleted_after_the_cache_was_built_are_not_trained_on(tmp_path, workspace):
    data = make_manifest(tmp_path / "d", n=40)
    cfg = tiny_train(method="ce", epochs=1, warmup=0)
    train(data, cfg, runs_dir=workspace / "runs")
    cache = workspace / ".fernoise" / "arrays"
    (old,) = cache.glob("*.npy")
    df = read_manifest(data).df
    first = df["path"].iloc[1]
    Image.fromarray(np.full((SIZE, SIZE, 3), 255, np.uint8)).save(data.parent / first)
    os.utime(data.parent / first, ns=(1, 1))  # even a reset mtime: the size changed
    (data.parent / df["path"].iloc[2]).unlink()
    events = []
    train(data, cfg, runs_dir=workspace / "runs", progress=events.append, force=True)
    (new,) = cache.glob("*.npy")  # rebuilt; the stale cache of the same rows is gone
    assert new != old
    arr = np.load(new)
    assert (arr[1] == 255).all() and (arr[2] == 0).all()
    skipped = json.loads(new.with_name(new.name.replace(".npy", ".skipped.json")).read_text())[
        "skipped"
    ]
    assert skipped == {"2": "missing"}
    assert any(
        "1 rows skipped" in e["message"] and "missing" in e["message"]
        for e in events
        if e["event"] == "warning"
    )


def test_a_crop_that_differs_from_the_recorded_sha256_is_skipped(tmp_path, workspace):
    from fernoise.cache import file_sha256
    from fernoise.manifest import write_manifest

    data = make_manifest(tmp_path / "d", n=40)
    m = read_manifest(data)
    m.df["crop_sha256"] = [file_sha256(data.parent / p) for p in m.df["path"]]
    m.df.loc[3, "crop_sha256"] = "0" * 64
    write_manifest(m.df, data, m.meta)
    events = []
    res = train(
        data,
        tiny_train(method="ce", epochs=1, warmup=0),
        runs_dir=workspace / "runs",
        progress=events.append,
    )
    config = json.loads((res.output / "config.json").read_text())
    assert (
        config["skipped_crops"] == 1
        and "differs from the sha256" in config["skipped_example"]["reason"]
    )


# ----------------------------------------------------------------------------- 8.3 paths
def test_paths_outside_the_manifest_folder_are_reported_and_non_images_skipped(tmp_path, workspace):
    data = make_manifest(tmp_path / "d", n=40)
    outside = tmp_path / "elsewhere.png"
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(outside)
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    m = read_manifest(data)
    m.df.loc[1, "path"] = "../elsewhere.png"
    m.df.loc[2, "path"] = str(secret)
    from fernoise.manifest import write_manifest

    write_manifest(m.df, data, m.meta)
    res = cli("train", data, *TINY_ARGS)
    assert res.exit_code == 0, res.output
    warn = [ln for ln in res.output.splitlines() if "warning" in ln]
    assert any("2 crop paths resolve outside" in w and "'../elsewhere.png'" in w for w in warn)
    assert any(
        "1 rows skipped" in w and "passwd" in w and "not a readable image" in w for w in warn
    )


# ----------------------------------------------------------------------------- 8.7 one line
def _nothing_written(ws: Path) -> bool:
    return not (ws / "runs").exists() and not (ws / "fernoise.lock").exists()


def test_one_training_row_is_one_line_and_writes_nothing(tmp_path, workspace):
    data = make_manifest(tmp_path / "d", n=2, splits=("train", "test"))  # row 0 test, row 1 train
    res = cli("train", data, *TINY_ARGS)
    assert res.exit_code == 2
    line = one_line(res)
    assert "1 training row(s)" in line and "at least 2" in line
    assert _nothing_written(workspace)


def test_runs_dir_that_is_a_file(tmp_path, workspace):
    data = make_manifest(tmp_path / "d", n=20)
    f = tmp_path / "runs.txt"
    f.write_text("x")
    res = cli("train", data, *TINY_ARGS, "--runs-dir", f)
    assert res.exit_code == 2 and "--runs-dir" in one_line(res) and "is a file" in res.output


def test_manifest_without_a_path_column(tmp_path, workspace):
    data = make_manifest(tmp_path / "d", n=20)
    _rewrite_keeping_metadata(data, lambda t: t.drop_columns(["path"]))
    res = cli("train", data, *TINY_ARGS)
    assert res.exit_code == 2 and "no `path` column" in one_line(res)
    assert _nothing_written(workspace)


def test_folders_given_for_files_are_called_folders(tmp_path, workspace):
    data = make_manifest(tmp_path / "d", n=20)
    (tmp_path / "empty").mkdir()
    res = cli(
        "train", tmp_path / "empty", *TINY_ARGS
    )  # a folder with a manifest.parquet: test_manifest_folder
    assert res.exit_code == 2 and "is a folder without a manifest.parquet" in one_line(res)
    res = cli("train", data, *TINY_ARGS, "--pretrained", tmp_path)
    assert res.exit_code == 2 and "--pretrained" in one_line(res) and "is a folder" in res.output
    assert _nothing_written(workspace)


# ----------------------------------------------------------------------------- 8.13 workspace
def test_the_image_cache_lives_in_the_workspace(tmp_path, monkeypatch):
    data = make_manifest(tmp_path / "d", n=40)
    ws, elsewhere = tmp_path / "ws", tmp_path / "cwd"
    ws.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("FERNOISE_WORKSPACE", raising=False)
    res = cli("train", data, *TINY_ARGS, "--workspace", ws)
    assert res.exit_code == 0, res.output
    assert len(list((ws / ".fernoise" / "arrays").glob("*.npy"))) == 1
    assert not (elsewhere / ".fernoise").exists() and (ws / "runs").is_dir()


# ----------------------------------------------------------------------------- 9.3 validation
@pytest.mark.slow
def test_carved_validation_says_it_is_noisy_and_val_clean_uses_the_clean_label(tmp_path, workspace):
    data = make_manifest(tmp_path / "d", n=105, noise=0.4)
    noisy = plan(data, tiny_train(), runs_dir=workspace / "runs")
    assert noisy.config["val_source"] == "carved" and noisy.config["val_labels"] == "noisy"
    assert any("noisy training labels" in n and "--val-clean" in n for n in noisy.notes)
    clean = plan(data, tiny_train(val_clean=True), runs_dir=workspace / "runs")
    assert clean.config["val_labels"] == "oracle-clean" and clean.key != noisy.key
    df = clean.rows
    vpos = clean.val_pos
    assert np.array_equal(clean.labels[vpos], df["label_clean"].iloc[vpos].astype(int).to_numpy())
    assert not np.array_equal(
        noisy.labels[vpos], clean.labels[vpos]
    )  # 40% noise: some val rows differ
    assert np.array_equal(
        clean.labels[clean.train_pos], noisy.labels[noisy.train_pos]
    )  # training keeps noise
    res = cli("train", data, *TINY_ARGS, "--val-clean")
    assert res.exit_code == 0 and "label_clean (oracle-clean" in res.output
    run = Path(res.output.strip().splitlines()[-1].split(": ", 1)[1])
    assert json.loads((run / "config.json").read_text())["val_labels"] == "oracle-clean"


def test_val_clean_needs_label_clean(tmp_path, workspace):
    data = make_manifest(tmp_path / "d", n=30)
    _rewrite_keeping_metadata(data, lambda t: t.drop_columns(["label_clean"]))
    res = cli("train", data, *TINY_ARGS, "--val-clean")
    assert res.exit_code == 2 and "--val-clean" in one_line(res)


# ----------------------------------------------------------------------------- 9.4 unseen classes
def test_a_test_class_never_seen_in_training_warns(tmp_path, workspace):
    # class 4 (fear) only in test rows: its training rows are relabelled
    data = make_manifest(
        tmp_path / "d",
        n=70,
        noise=0.0,
        labels=lambda df: df["label"].where((df["label"] != 4) | (df["split"] == "test"), 0),
    )
    p = plan(data, tiny_train(), runs_dir=workspace / "runs")
    (w,) = [w for w in p.warnings if "never occur in training" in w]
    assert "'fear'" in w and "(2 test rows)" in w


# ----------------------------------------------------------------------------- 9.8 warm-up
def test_default_warmup_scales_with_epochs():
    assert [TrainConfig(epochs=e).warmup for e in (1, 3, 9, 15, 40)] == [0, 1, 3, 5, 5]
    assert TrainConfig(epochs=3, warmup=2).warmup == 2
    res = cli("train", "--help", env={"COLUMNS": "200"})
    assert "min(5, epochs // 3)" in res.output


@pytest.mark.slow
def test_three_epochs_train_without_a_warmup_flag(tmp_path, workspace):
    data = make_manifest(tmp_path / "d", n=40)
    res = cli(
        "train",
        data,
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--image-size",
        SIZE,
        "--precision",
        "fp32",
        "--workers",
        "0",
        "--method",
        "pc",
    )
    assert res.exit_code == 0, res.output
    run = Path(res.output.strip().splitlines()[-1].split(": ", 1)[1])
    assert [m["warmup"] for m in read_metrics(run)] == [True, False, False]


# ----------------------------------------------------------------------------- 9.9 max rows
def test_max_rows_is_a_seeded_stratified_subset_in_the_key(tmp_path, workspace):
    data = make_manifest(tmp_path / "d", n=105, noise=0.0)  # 84 train rows, 12 per class
    full = plan(data, tiny_train(val_fraction=0.0), runs_dir=workspace / "runs")
    sub = plan(data, tiny_train(val_fraction=0.0, max_rows=35), runs_dir=workspace / "runs")
    again = plan(data, tiny_train(val_fraction=0.0, max_rows=35), runs_dir=workspace / "runs")
    other = plan(
        data, tiny_train(val_fraction=0.0, max_rows=35, seed=1), runs_dir=workspace / "runs"
    )
    assert len(full.train_pos) == 84 and len(sub.train_pos) == 35
    assert np.bincount(sub.labels[sub.train_pos], minlength=7).tolist() == [5] * 7
    assert np.array_equal(sub.train_pos, again.train_pos) and not np.array_equal(
        sub.train_pos, other.train_pos
    )
    assert len({full.key, sub.key, other.key}) == 3 and sub.key == again.key
    assert sub.config["max_rows"] == 35 and sub.config["n_train_available"] == 84
    assert np.array_equal(sub.test_pos, full.test_pos)  # test rows untouched
    res = cli("train", data, *TINY_ARGS, "--max-rows", "1")
    assert res.exit_code == 2 and "--max-rows" in one_line(res)


# ----------------------------------------------------------------------------- 9.11 header
def test_one_header_line_before_epoch_one(tmp_path, workspace):
    data = make_manifest(tmp_path / "d", n=40)
    res = cli("train", data, *TINY_ARGS)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    (i,) = [k for k, ln in enumerate(lines) if ln.startswith("ce: ")]
    assert i < next(k for k, ln in enumerate(lines) if ln.startswith("epoch"))
    run = lines[-1].split(": ", 1)[1]
    config = json.loads((Path(run) / "config.json").read_text())
    assert lines[i] == (
        f"ce: {config['n_train']} train, {config['n_val']} val (carved, noisy), "
        f"{config['n_test']} test rows; 7 classes; cpu fp32; random init; run {run}"
    )


# ----------------------------------------------------------------------------- 9.13 checkpoint kept?
def test_checkpoint_removed_at_the_end_and_rerun_is_a_hit(tmp_path, workspace):
    data = make_manifest(tmp_path / "d", n=40)
    first = cli("train", data, *TINY_ARGS)
    run = Path(first.output.strip().splitlines()[-1].split(": ", 1)[1])
    assert sorted(p.name for p in run.iterdir() if p.is_file()) == [
        "config.json",
        "metrics.jsonl",
        "model.pt",
        "val_ids.json",
    ]
    again = cli("train", data, *TINY_ARGS)
    assert again.exit_code == 0 and "cache hit" in again.output
    kept = cli("train", data, *TINY_ARGS, "--keep-checkpoint", "--force")
    assert kept.exit_code == 0 and (run / "checkpoint.pt").is_file()


# ----------------------------------------------------------------------------- k default
def test_k_defaults_to_min_4_c_minus_1_for_small_class_lists(tmp_path, workspace):
    from fernoise.errors import FernoiseError
    from fernoise.manifest import write_manifest

    data = make_manifest(tmp_path / "d", n=42, noise=0.0)
    m = read_manifest(data)
    keep = m.df["label"] < 3  # a dataset of three classes
    meta = {**m.meta, "classes": m.meta["classes"][:3]}
    write_manifest(m.df[keep].reset_index(drop=True), data, meta)
    base = dict(epochs=1, batch_size=16, image_size=SIZE, workers=0, precision="fp32")
    p = plan(
        data, TrainConfig(**base), runs_dir=workspace / "runs"
    )  # k is ncctfer's (method_params)
    assert (
        p.cfg.method_params.k == 2
        and p.config["k"] == 2
        and p.key_params["method_params"]["k"] == 2
    )
    assert (
        plan(
            data, TrainConfig(**base, method_params={"k": 1}), runs_dir=workspace / "runs"
        ).cfg.method_params.k
        == 1
    )
    with pytest.raises(FernoiseError) as e:
        plan(data, TrainConfig(**base, method_params={"k": 4}), runs_dir=workspace / "runs")
    assert e.value.flag == "--k" and "expected 1..2 for 3 classes" in str(e.value)
    assert (
        TrainConfig().method_params.k is None
        and plan(
            make_manifest(tmp_path / "seven", n=40),
            TrainConfig(**base),
            runs_dir=workspace / "runs",
        ).cfg.method_params.k
        == 4
    )
