"""FerNet shapes and --pretrained loading into it (local files only, fernoise.train.weights)."""

from __future__ import annotations

import pytest
import torch

from fernoise import methods
from fernoise.errors import FernoiseError
from fernoise.model import FerNet
from fernoise.train.weights import load_backbone


def test_backbone_feature_map_features_and_method_heads():
    x = torch.randn(2, 3, 64, 64)
    net = FerNet().eval()
    assert [name for name, _ in net.named_children()] == ["backbone"]
    fmap = net.feature_map(x)
    assert fmap.shape == (2, 512, 2, 2)
    assert torch.allclose(net.features(x), fmap.mean(dim=(2, 3)), atol=1e-6)
    assert net(lambda m, a, b=0: (a, b), 1, b=2) == (1, 2)  # forward calls fn(model, ...)
    m = methods.create("ncctfer", num_classes=7)
    net = methods.build_model(m).eval()
    assert [name for name, _ in net.named_children()] == ["backbone", "pcc", "ncc"]
    assert net(m.logits, x).shape == (2, 7)
    one = methods.build_model(methods.create("ce", num_classes=8))
    assert not hasattr(one, "ncc") and one.pcc.out_features == 8


def test_seeded_init_is_the_old_creation_order():
    """backbone, then pcc, then ncc from one seeded stream: the init fernoise always had."""
    from torch import nn
    from torchvision.models import resnet18

    torch.manual_seed(3)
    old_backbone = resnet18(weights=None)
    old_pcc, old_ncc = nn.Linear(512, 7), nn.Linear(512, 7)
    torch.manual_seed(3)
    net = methods.build_model(methods.create("ncctfer", num_classes=7))
    assert torch.equal(net.backbone.conv1.weight, old_backbone.conv1.weight)
    assert torch.equal(net.pcc.weight, old_pcc.weight) and torch.equal(net.ncc.bias, old_ncc.bias)


def test_pretrained_wrapped_prefixed_and_reported(tmp_path):
    src = FerNet()
    state = {f"module.{k}": v for k, v in src.backbone.state_dict().items()}
    state["module.fc.weight"] = torch.zeros(1000, 512)  # a classifier head is ignored
    state["module.extra.weight"] = torch.zeros(3)
    del state["module.layer4.1.bn2.bias"]
    torch.save({"state_dict": state}, tmp_path / "w.pth")
    dst = FerNet()
    with pytest.raises(
        FernoiseError, match=r"fills 119 of 120 .*layer4.1.bn2.bias.*--pretrained-partial"
    ):
        load_backbone(dst.backbone, tmp_path / "w.pth")  # a file short of one tensor is refused...
    assert not torch.equal(
        dst.backbone.conv1.weight, src.backbone.conv1.weight
    )  # ...before any load
    source, report = load_backbone(dst.backbone, tmp_path / "w.pth", partial=True)
    assert source.kind == "state_dict" and not report.complete
    assert report.unexpected == ["extra.weight"]
    assert report.missing == ["layer4.1.bn2.bias"]
    assert len(report.loaded) == 119 and report.mismatched == []
    assert torch.equal(dst.backbone.conv1.weight, src.backbone.conv1.weight)


def test_pretrained_refuses_shape_mismatch_and_non_state_dicts(tmp_path):
    state = FerNet().backbone.state_dict()
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(FernoiseError, match=r"conv1.weight.*\(64, 1, 7, 7\)"):
        load_backbone(FerNet().backbone, tmp_path / "bad.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(FernoiseError, match="not a state dict"):
        load_backbone(FerNet().backbone, tmp_path / "list.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(FernoiseError, match="could not be read"):
        load_backbone(FerNet().backbone, tmp_path / "text.pth")
