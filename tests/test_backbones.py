"""Backbones as plugins (issue 21): the registry's cards against the networks they describe, the
``fernoise backbones`` listing, ``--backbone`` on train (every method on dlib-resnet29), the size
check, and ResNet-18 left exactly as it was."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from factories import make_manifest
from typer.testing import CliRunner

from fernoise import backbones, data, methods
from fernoise.backbones import dlib_resnet29 as dlib
from fernoise.cli.app import app
from fernoise.errors import FernoiseError
from fernoise.model import FerNet
from fernoise.train.stage import TrainConfig, train


def one_line(res) -> str:
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code != 0 and len(lines) == 1, res.output
    return lines[0]


@pytest.mark.parametrize("name", backbones.names())
def test_each_card_describes_its_network(name):
    card = backbones.get(name)
    torch.manual_seed(0)
    net = backbones.create(name).eval()
    assert sum(p.numel() for p in net.parameters()) == card.parameters
    assert net.feature_dim == card.feature_dim
    assert set(net.compile_stages) <= {n for n, _ in net.named_children()}
    for side in (card.min_size, 112, 134, 135, 150):
        x = torch.randn(2, 3, side, side)
        with torch.no_grad():
            fmap = net.feature_map(x)
            pooled = net(x)
        s = card.map_size(side)
        assert tuple(fmap.shape) == (2, card.feature_dim, s, s), side
        torch.testing.assert_close(net.pool(fmap), pooled, rtol=0, atol=1e-6)
    hooked: dict[str, torch.Size] = {}

    def hook(_m, _i, out) -> None:
        hooked["shape"] = out.shape

    handle = net.cam_layer.register_forward_hook(hook)
    with torch.no_grad():
        fmap = net.feature_map(torch.randn(1, 3, 150, 150))
    handle.remove()
    assert hooked["shape"] == fmap.shape  # Grad-CAM hooks the map the heads read


def test_the_dlib_card_matches_the_port():
    card = backbones.get("dlib-resnet29")
    assert card.min_size == dlib.MIN_INPUT_SIZE == 103
    assert card.feature_dim == dlib.FEATURE_DIM == 256
    assert [card.map_size(s) for s in (103, 112, 134, 135, 150, 198, 199)] == [1, 1, 1, 2, 2, 2, 3]
    x = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8)
    ours = data.normalize(x, torch.device("cpu"), mean=card.mean, std=card.std)
    torch.testing.assert_close(ours, dlib.DlibResNet29.normalize(x), rtol=0, atol=1e-6)
    # the FER backbone is the port without its descriptor layer
    keys = set(dlib.DlibResNet29().state_dict())
    assert set(backbones.create("dlib-resnet29").state_dict()) == keys - {"fc.weight"}


def test_resnet18_is_torchvision_resnet18_key_for_key_and_value_for_value():
    from torchvision.models import resnet18

    torch.manual_seed(3)
    old = resnet18(weights=None)
    old.fc = torch.nn.Identity()
    torch.manual_seed(3)
    new = FerNet().backbone
    a, b = old.state_dict(), new.state_dict()
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    x = torch.randn(2, 3, 48, 48)
    old.eval(), new.eval()
    with torch.no_grad():
        torch.testing.assert_close(new(x), old(x), rtol=0, atol=0)
        f = new.feature_map(x)
        torch.testing.assert_close(new.pool(f), old.avgpool(f).flatten(1), rtol=0, atol=0)
    assert (
        backbones.get("resnet18").map_size(112) == 4 and backbones.get("resnet18").map_size(48) == 2
    )


def test_fernet_delegates_to_its_backbone_and_methods_use_its_width():
    for name in backbones.names():
        for method in methods.names():
            m = methods.create(method, num_classes=5, image_size=112)
            with torch.device("meta"):
                net = methods.build_model(m, name)
            assert net.backbone_name == name and net.feature_dim == backbones.get(name).feature_dim
            if hasattr(net, "pcc") and isinstance(net.pcc, torch.nn.Linear) and method != "rul":
                assert net.pcc.in_features == net.feature_dim, (name, method)
            assert type(net.new_backbone()) is type(net.backbone)


def test_unknown_backbone_and_too_small_images_are_one_line_errors(tmp_path, workspace):
    with pytest.raises(FernoiseError, match="unknown backbone 'vgg'.*resnet18.*dlib-resnet29"):
        TrainConfig(backbone="vgg")
    with pytest.raises(FernoiseError, match="at least 103 px, got 96") as e:
        TrainConfig(backbone="dlib-resnet29", image_size=96)
    assert e.value.flag == "--image-size"
    TrainConfig(backbone="dlib-resnet29", image_size=103)  # the smallest side is fine
    man = make_manifest(tmp_path / "data", n=20)
    runs = tmp_path / "runs"
    res = CliRunner().invoke(
        app,
        ["train", str(man), "--backbone", "dlib-resnet29", "--image-size", "96"]
        + ["--runs-dir", str(runs)],
    )
    line = one_line(res)
    assert "--image-size" in line and "103" in line and "96" in line
    assert not runs.exists() or not any(runs.iterdir())


def test_the_listing_names_every_backbone_with_its_figures():
    res = CliRunner().invoke(app, ["backbones"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    for name in backbones.names():
        card = backbones.get(name)
        assert name in res.output and f"{card.parameters:,}" in res.output
    assert "1x1" in res.output and "122.782" in res.output and "npm pack" in res.output


# --------------------------------------------------------------------------- every method
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_manifest(tmp_path_factory.mktemp("data"), n=24)


@pytest.mark.filterwarnings("ignore:eac. the attention maps")
@pytest.mark.parametrize("method", methods.names())
def test_every_method_trains_one_epoch_on_dlib_resnet29(method, tiny, tmp_path):
    cfg = TrainConfig(
        method=method,
        backbone="dlib-resnet29",
        image_size=104,
        epochs=1,
        warmup=0,
        batch_size=8,
        workers=0,
        precision="fp32",
        device="cpu",
    )
    run = train(tiny, cfg, runs_dir=tmp_path).output
    config = json.loads((run / "config.json").read_text())
    assert config["backbone"] == "dlib-resnet29" and config["image_size"] == 104
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and np.isfinite(metrics[0]["loss"])
    state = torch.load(run / "model.pt", weights_only=True)
    assert "backbone.conv32_down.conv.weight" in state and "backbone.fc.weight" not in state
    assert not any(k.startswith("backbone.layer") for k in state)
    # nothing the method built is left out of its loss (DDP would need find_unused_parameters)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_eac_says_the_map_size_and_the_image_size_on_dlib():
    m = methods.create("eac", num_classes=3, image_size=112)
    with pytest.warns(UserWarning, match="attention maps are 1x1 at --image-size 112"):
        m._check_map(1, 1)


def test_a_resnet18_run_key_has_no_backbone_and_a_dlib_one_has(tmp_path, workspace):
    from fernoise.train.plan import plan

    man = make_manifest(tmp_path / "data", n=20)
    base = dict(method="ce", epochs=1, image_size=112, device="cpu")
    r18 = plan(man, TrainConfig(**base))
    explicit = plan(man, TrainConfig(**base, backbone="resnet18"))
    d29 = plan(man, TrainConfig(**base, backbone="dlib-resnet29"))
    assert "backbone" not in r18.key_params and r18.key == explicit.key
    assert r18.config["backbone"] == "resnet18"
    assert d29.key_params["backbone"] == "dlib-resnet29" and d29.key != r18.key


def test_pretrain_on_dlib_then_train_from_it(tmp_path, workspace):
    from fernoise.pretrain.stage import PretrainConfig, pretrain
    from fernoise.pretrain.stage import _key_params as pretrain_key_params

    man = make_manifest(tmp_path / "data", n=24)
    base = dict(method="simclr", epochs=1, batch_size=8, device="cpu", precision="fp32")
    r18 = PretrainConfig(**base, image_size=104)
    assert "backbone" not in pretrain_key_params(r18, "fp32")  # old pretrain keys unchanged
    with pytest.raises(FernoiseError, match="at least 103 px, got 64"):
        PretrainConfig(**base, image_size=64, backbone="dlib-resnet29")
    cfg = PretrainConfig(**base, image_size=104, probe_split=None, backbone="dlib-resnet29")
    assert pretrain_key_params(cfg, "fp32")["backbone"] == "dlib-resnet29"
    folder = pretrain(man, cfg).output
    assert json.loads((folder / "config.json").read_text())["backbone"] == "dlib-resnet29"
    start = torch.load(folder / "backbone.pt", weights_only=True)
    assert set(start) == set(backbones.create("dlib-resnet29").state_dict())

    train_cfg = dict(method="ce", epochs=1, warmup=0, batch_size=8, image_size=104)
    common = dict(train_cfg, workers=0, precision="fp32", device="cpu", lr_backbone=1e-12)
    run = train(
        man,
        TrainConfig(**common, backbone="dlib-resnet29", pretrained=str(folder)),
        runs_dir=tmp_path / "runs",
    ).output
    state = torch.load(run / "model.pt", weights_only=True)
    for k, v in start.items():
        torch.testing.assert_close(state[f"backbone.{k}"], v, rtol=0, atol=1e-9)
    from fernoise.train.plan import plan

    with pytest.raises(
        FernoiseError, match="for --backbone dlib-resnet29, not --backbone resnet18"
    ):
        plan(man, TrainConfig(**common, pretrained=str(folder)), runs_dir=tmp_path / "runs2")
    assert not (tmp_path / "runs2").exists()
