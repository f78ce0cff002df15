"""`fernoise train` end to end on tiny generated images: every method, the run folder contract,
the cache, resume after kill -9, and bad input."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from factories import (
    CLASSES,
    CONFIG_FIELDS,
    METRIC_FIELDS,
    SIZE,
    TIMING,
    make_manifest,
    nothing_written,
    read_metrics,
    tiny_train,
)
from killing import kill_after_epochs, resume
from typer.testing import CliRunner

from fernoise import methods
from fernoise.cli.app import app
from fernoise.errors import FernoiseError
from fernoise.train.stage import TrainConfig, train


def model_of(config: dict):
    """The run's model, rebuilt through the registry from its config.json."""
    m = methods.create(
        config["method"],
        methods.params_from_dict(config["method"], config["method_params"]),
        num_classes=config["num_classes"],
        image_size=config["image_size"],
    )
    return methods.build_model(m)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return make_manifest(tmp_path_factory.mktemp("data"))


# pc and nl are slow here: test_method_contract trains their run folders in the fast tier
@pytest.mark.parametrize(
    "method",
    [
        "ce",
        pytest.param("pc", marks=pytest.mark.slow),
        pytest.param("nl", marks=pytest.mark.slow),
        "ncctfer",
    ],
)
def test_each_method_writes_the_run_folder_contract(method, manifest, workspace):
    events = []
    keep = method == "ncctfer"
    res = train(
        manifest,
        tiny_train(method=method, keep_checkpoint=keep),
        runs_dir=workspace / "runs",
        progress=events.append,
    )
    run = res.output
    assert not res.hit and run.parent == workspace / "runs" and run.name == res.key[:16]
    config = json.loads((run / "config.json").read_text())
    assert CONFIG_FIELDS <= set(config)
    assert config["method"] == method and config["two_heads"] == (method == "ncctfer")
    assert config["classes"] == CLASSES and config["num_classes"] == 7
    assert config["noise"] == {"kind": "sym", "rate": 0.2, "seed": 0} and config["align"] == {
        "size": SIZE
    }
    assert config["key"] == res.key and config["device"] == "cpu" and config["precision"] == "fp32"
    metrics = read_metrics(run)
    assert [m["epoch"] for m in metrics] == [1, 2] and [m["warmup"] for m in metrics] == [
        True,
        False,
    ]
    for m in metrics:
        assert METRIC_FIELDS <= set(m)
        assert m["test_acc"] is not None and m["val_acc"] is not None  # val carved from train
        assert m["lr_backbone"] == 1e-4 and m["lr_head"] == 1e-3
    last = metrics[-1]
    selecting = method in ("pc", "ncctfer")
    assert (last["thresholds"] is not None) == selecting
    assert (last["confident_frac"] is not None) == selecting
    assert ("loss_c" in last) == (method == "ncctfer")  # a run logs its own method's parts only
    assert metrics[0]["thresholds"] is None and metrics[0].get("loss_c") is None  # warm-up
    if selecting:
        assert len(last["thresholds"]) == 7 and all(0 < t <= 1 for t in last["thresholds"])
        assert 0 < last["confident_frac"] < 1
        assert 0 <= last["confident_precision"] <= 1 and 0 < last["confident_recall"] <= 1
    if method == "ncctfer":
        assert last["loss"] == pytest.approx(last["loss_s"] + last["loss_c"], rel=1e-6)
        assert last["images_per_s"] == pytest.approx(2 * last["samples_per_s"], rel=1e-6)
    val_ids = json.loads((run / "val_ids.json").read_text())
    assert len(val_ids) == config["n_val"] > 0
    state = torch.load(run / "model.pt", weights_only=True)
    model_of(config).load_state_dict(state)
    if keep:  # the checkpoint reads with the safe loader
        ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
        assert ckpt["epoch"] == 2 and ckpt["key"] == res.key and len(ckpt["metrics"]) == 2
    else:  # removed once the run finished
        assert not (run / "checkpoint.pt").exists()
    assert {e["event"] for e in events} >= {"epoch_start", "batch", "epoch_end"}


def test_cli_cache_hit_and_changed_parameter_misses(manifest, workspace):
    args = [
        "train",
        str(manifest),
        "--method",
        "pc",
        "--epochs",
        "1",
        "--warmup",
        "0",
        "--batch-size",
        "32",
        "--image-size",
        str(SIZE),
        "--precision",
        "fp32",
        "--workers",
        "0",
    ]
    runner = CliRunner()
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    run = Path(first.output.strip().splitlines()[-1].split(": ", 1)[1])
    assert (run / "model.pt").is_file() and "epoch   1" in first.output
    lock = json.loads((workspace / "fernoise.lock").read_text())
    assert Path(workspace / lock["stages"]["train"]["output"]) == run
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "cache hit" in again.output and str(run) in again.output
    changed = runner.invoke(app, [*args[:-2], "--seed", "1", "--workers", "0"])
    assert changed.exit_code == 0 and "cache hit" not in changed.output
    assert str(run) not in changed.output


@pytest.mark.slow
def test_kill_9_then_resume_gives_identical_metrics(tmp_path, workspace):
    data = make_manifest(tmp_path / "data", n=60)
    env = {**os.environ, "FERNOISE_WORKSPACE": str(workspace)}
    killed = [
        sys.executable,
        "-m",
        "fernoise.cli.app",
        "train",
        str(data),
        "--method",
        "ncctfer",
        "--epochs",
        "2",
        "--warmup",
        "1",
        "--batch-size",
        "16",
        "--image-size",
        str(SIZE),
        "--k",
        "3",
        "--workers",
        "1",
        "--runs-dir",
        str(tmp_path / "a"),
    ]
    metrics_file = (
        kill_after_epochs(killed, env, tmp_path / "a", timeout=120) / "metrics.jsonl"
    )  # mid-epoch 2
    assert not (metrics_file.parent / "model.pt").exists()
    resume(killed, env)
    # The uninterrupted run, in this process, with the same configuration.
    cfg = TrainConfig(
        method="ncctfer",
        method_params=methods.make_params("ncctfer", {"--k": 3}),
        epochs=2,
        warmup=1,
        batch_size=16,
        image_size=SIZE,
        workers=1,
    )
    full = train(data, cfg, runs_dir=tmp_path / "b").output

    def strip(run: Path) -> list[dict]:
        return [{k: v for k, v in m.items() if k not in TIMING} for m in read_metrics(run)]

    a = metrics_file.parent
    assert full.name == a.name
    assert len(strip(a)) == 2 and strip(a) == strip(full)
    sa, sb = (
        torch.load(a / "model.pt", weights_only=True),
        torch.load(full / "model.pt", weights_only=True),
    )
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------- bad input
def run_cli(args: list[str]):
    return CliRunner().invoke(app, ["train", *args])


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--k", "7"], "--k"),
        (["--k", "0"], "--k"),
        (["--warmup", "3", "--epochs", "2"], "--warmup"),
        (["--method", "mixup"], "--method"),
        (["--precision", "fp16"], "--precision"),
        (["--val-fraction", "1.5"], "--val-fraction"),
        (["--batch-size", "1"], "--batch-size"),
    ],
)
def test_bad_flags_fail_in_one_line_naming_the_flag(extra, flag, manifest, workspace):
    res = run_cli([str(manifest), "--image-size", str(SIZE), *extra])
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and flag in lines[0] and "error" in lines[0]
    assert nothing_written(workspace)


def test_pretrained_that_is_not_a_state_dict(manifest, workspace):
    bad = workspace / "weights.pt"
    torch.save([1, 2, 3], bad)
    res = run_cli([str(manifest), "--pretrained", str(bad), "--image-size", str(SIZE), "--k", "3"])
    assert (
        res.exit_code == 2
        and "--pretrained" in res.output
        and len(res.output.strip().splitlines()) == 1
    )
    garbage = workspace / "garbage.pth"
    garbage.write_bytes(b"not a pickle")
    res = run_cli(
        [str(manifest), "--pretrained", str(garbage), "--image-size", str(SIZE), "--k", "3"]
    )
    assert res.exit_code == 2 and "--pretrained" in res.output
    assert nothing_written(workspace)


def test_manifest_without_labelled_training_rows(tmp_path, workspace):
    data = make_manifest(tmp_path / "d", n=20, splits=("test", "test"))
    res = run_cli([str(data), "--image-size", str(SIZE), "--k", "3"])
    assert (
        res.exit_code == 2
        and "no labelled training rows" in res.output
        and "MANIFEST" in res.output
    )
    assert nothing_written(workspace)


def test_label_outside_the_class_list(tmp_path, workspace):
    data = make_manifest(tmp_path / "d", n=30, labels=lambda df: [9] + df["label"].tolist()[1:])
    res = run_cli([str(data), "--image-size", str(SIZE), "--k", "3"])
    assert (
        res.exit_code == 2 and "outside" in res.output and len(res.output.strip().splitlines()) == 1
    )
    assert nothing_written(workspace)


def test_class_without_training_samples_warns_and_trains(tmp_path, workspace):
    data = make_manifest(
        tmp_path / "d", n=70, noise=0.0, labels=lambda df: df["label"].where(df["label"] != 4, 0)
    )
    events = []
    res = train(
        data,
        tiny_train(method="pc", epochs=1, warmup=0),
        runs_dir=workspace / "runs",
        progress=events.append,
    )
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    assert any("'fear'" in w for w in warnings)
    m = read_metrics(res.output)[0]
    assert m["thresholds"][4] is None and m["thresholds"][0] is not None


def test_config_checks_name_the_flag():
    with pytest.raises(FernoiseError) as e:
        TrainConfig(lr_decay=1.5)
    assert e.value.flag == "--lr-decay"
    with pytest.raises(FernoiseError) as e:
        TrainConfig(epochs=0)
    assert e.value.flag == "--epochs"
