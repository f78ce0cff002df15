"""`fernoise train --pretrained X` end to end, one test per kind of X (issue 11, acceptance 2).

Every run trains 1 epoch with a backbone learning rate of 1e-12: Adam moves each weight by
about 1e-12, so the backbone's learned tensors in model.pt equal the start the run loaded
(to 1e-9) and differ from a random init by orders of magnitude more. BatchNorm running
statistics do move in training and are not compared.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from factories import RUNNING, SIZE, make_manifest, one_epoch_args, resnet18_state, run_of
from typer.testing import CliRunner

from fernoise.cache import file_sha256
from fernoise.cli.app import app
from fernoise.pretrain.stage import PretrainConfig, pretrain

ARGS = one_epoch_args(frozen=True)


def _train(manifest: Path, *extra: str):
    return CliRunner().invoke(app, ["train", str(manifest), *ARGS, *extra])


def _assert_backbone_started_from(run: Path, start: dict[str, torch.Tensor]) -> None:
    model = torch.load(run / "model.pt", weights_only=True)
    learned = [k for k in start if not k.endswith(RUNNING) and not k.startswith("fc.")]
    assert len(learned) == 60  # 20 conv weights + 20 BatchNorm weight/bias pairs
    for k in learned:
        got = model[f"backbone.{k}"]
        assert torch.allclose(got, start[k], rtol=0, atol=1e-9), k
    fresh = resnet18_state(0)  # what a run without --pretrained starts from (seed 0)
    assert not torch.allclose(
        fresh["layer3.0.conv1.weight"], start["layer3.0.conv1.weight"], atol=1e-3
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_manifest(tmp_path_factory.mktemp("pretrained_data"), n=30)


@pytest.mark.slow
def test_a_torchvision_state_dict_then_its_run_folder(data, tmp_path, workspace):
    start = resnet18_state(123)
    torch.save(start, tmp_path / "resnet18-f37072fd.pth")
    res = _train(data, "--pretrained", str(tmp_path / "resnet18-f37072fd.pth"))
    run = run_of(res)
    _assert_backbone_started_from(run, start)
    config = json.loads((run / "config.json").read_text())
    assert config["pretrained"] == str((tmp_path / "resnet18-f37072fd.pth").resolve())
    assert config["pretrained_kind"] == "state_dict"
    assert config["pretrained_sha256"] == file_sha256(tmp_path / "resnet18-f37072fd.pth")
    assert config["pretrained_report"] == {
        "loaded": 120,
        "missing": [],
        "unexpected": [],
        "mismatched": [],
    }
    assert config["pretrained_partial"] is False
    # The match table, on screen before epoch 1.
    out = res.output
    table = out.index("pretrained ")
    assert f"(state_dict, sha256 {config['pretrained_sha256'][:12]})" in out
    for what, count in (
        ("loaded", 120),
        ("missing (left random)", 0),
        ("unexpected (ignored)", 0),
        ("shape mismatch", 0),
    ):
        assert re.search(rf"^  {re.escape(what)} +{count}$", out, re.M), (what, out)
    assert table < out.index("epoch   1")

    # The run folder and its model.pt as the next run's start: the backbone is taken (the
    # trained one, not the file above), the ce head dropped.
    trained = {
        k.removeprefix("backbone."): v
        for k, v in torch.load(run / "model.pt", weights_only=True).items()
        if k.startswith("backbone.")
    }
    for i, spec in enumerate((run, run / "model.pt")):
        res = _train(data, "--pretrained", str(spec), "--seed", str(1 + i))
        second = run_of(res)
        _assert_backbone_started_from(second, trained)
        c2 = json.loads((second / "config.json").read_text())
        assert (
            c2["pretrained"] == str((run / "model.pt").resolve())
            and c2["pretrained_kind"] == "train_run"
        )
        assert c2["pretrained_given"] == str(spec)
        assert (
            c2["pretrained_report"]["loaded"] == 120 and c2["pretrained_report"]["unexpected"] == []
        )
        assert "(train_run, sha256" in res.output


@pytest.mark.slow
def test_a_pretrain_folder_and_latest(data, workspace):
    folder = pretrain(
        data,
        PretrainConfig(
            method="simclr",
            epochs=1,
            batch_size=8,
            image_size=SIZE,
            device="cpu",
            precision="fp32",
            probe_split=None,
        ),
    ).output
    start = torch.load(folder / "backbone.pt", weights_only=True)
    run = run_of(_train(data, "--pretrained", str(folder)))
    _assert_backbone_started_from(run, start)
    config = json.loads((run / "config.json").read_text())
    assert config["pretrained"] == str((folder / "backbone.pt").resolve())
    assert config["pretrained_kind"] == "pretrain_run"
    assert config["pretrained_sha256"] == file_sha256(folder / "backbone.pt")

    # `latest` resolves through the workspace lock to the same file: the same key (a cache hit).
    res = _train(data, "--pretrained", "latest")
    assert run_of(res, hit=True) == run
    latest = run_of(_train(data, "--pretrained", "latest", "--seed", "5"))
    _assert_backbone_started_from(latest, start)
    c2 = json.loads((latest / "config.json").read_text())
    assert c2["pretrained_given"] == "latest" and c2["pretrained"] == config["pretrained"]
    assert c2["pretrained_kind"] == "pretrain_run"


def test_latest_without_a_pretrain_is_one_line(data, workspace):
    res = _train(data, "--pretrained", "latest")
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert (
        res.exit_code == 2
        and len(lines) == 1
        and "--pretrained" in lines[0]
        and "fernoise pretrain" in lines[0]
    )
    assert not (workspace / "runs").exists()


def test_another_architecture_is_one_line_naming_its_keys(data, tmp_path, workspace):
    from torchvision.models import mobilenet_v3_small, resnet50

    torch.save(mobilenet_v3_small(weights=None).state_dict(), tmp_path / "mobilenet.pth")
    res = _train(data, "--pretrained", str(tmp_path / "mobilenet.pth"))
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert "--pretrained" in lines[0] and "another architecture" in lines[0]
    assert "features.0.0.weight, features.0.1.weight" in lines[0]  # the file's own names
    torch.save(resnet50(weights=None).state_dict(), tmp_path / "resnet50.pth")
    res = _train(data, "--pretrained", str(tmp_path / "resnet50.pth"))
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert "layer1.0.conv1.weight is (64, 64, 1, 1), needs (64, 64, 3, 3)" in lines[0]
    assert not (workspace / "runs").exists()


def test_a_partial_file_needs_the_flag_and_the_flag_is_keyed(data, tmp_path, workspace):
    start = resnet18_state(7)
    half = {k: v for k, v in start.items() if not k.startswith("layer4.")}
    torch.save(half, tmp_path / "half.pth")
    res = _train(data, "--pretrained", str(tmp_path / "half.pth"))
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "--pretrained-partial" in lines[0]
    assert "fills 90 of 120" in lines[0] and "layer4.0.conv1.weight" in lines[0]
    res = _train(data, "--pretrained-partial")
    assert (
        res.exit_code == 2
        and "--pretrained-partial" in res.output
        and "without --pretrained" in res.output
    )
    assert not (workspace / "runs").exists()
    res = _train(data, "--pretrained", str(tmp_path / "half.pth"), "--pretrained-partial")
    run = run_of(res)
    config = json.loads((run / "config.json").read_text())
    assert config["pretrained_partial"] is True
    assert config["pretrained_report"]["loaded"] == 90
    assert len(config["pretrained_report"]["missing"]) == 30
    assert all(k.startswith("layer4.") for k in config["pretrained_report"]["missing"])
    assert re.search(
        r"^  missing \(left random\) +30  layer4\.0\.conv1\.weight, ", res.output, re.M
    ), res.output
    model = torch.load(run / "model.pt", weights_only=True)
    assert torch.allclose(
        model["backbone.layer3.1.conv2.weight"], start["layer3.1.conv2.weight"], atol=1e-9
    )
    assert not torch.allclose(
        model["backbone.layer4.1.conv2.weight"], start["layer4.1.conv2.weight"], atol=1e-3
    )
