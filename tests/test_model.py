"""FerNet shapes and --pretrained loading (local files only)."""

from __future__ import annotations

import pytest
import torch

from fernoise.errors import FernoiseError
from fernoise.model import FerNet, load_pretrained


def test_two_heads_and_one_head_shapes():
    x = torch.randn(2, 3, 32, 32)
    pcc, ncc = FerNet(7).eval()(x)
    assert pcc.shape == (2, 7) and ncc.shape == (2, 7)
    pcc, ncc = FerNet(8, two_heads=False).eval()(x)
    assert pcc.shape == (2, 8) and ncc is None


def test_pretrained_wrapped_prefixed_and_reported(tmp_path):
    src = FerNet(7)
    state = {f"module.{k}": v for k, v in src.backbone.state_dict().items()}
    state["module.fc.weight"] = torch.zeros(1000, 512)  # a classifier head is ignored
    state["module.extra.weight"] = torch.zeros(3)
    del state["module.layer4.1.bn2.bias"]
    torch.save({"state_dict": state}, tmp_path / "w.pth")
    dst = FerNet(7)
    report = load_pretrained(dst, tmp_path / "w.pth")
    assert report["unexpected"] == ["extra.weight"]
    assert report["missing"] == ["layer4.1.bn2.bias"]
    assert torch.equal(dst.backbone.conv1.weight, src.backbone.conv1.weight)


def test_pretrained_refuses_shape_mismatch_and_non_state_dicts(tmp_path):
    state = FerNet(7).backbone.state_dict()
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(FernoiseError, match=r"conv1.weight.*\(64, 1, 7, 7\)"):
        load_pretrained(FerNet(7), tmp_path / "bad.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(FernoiseError, match="not a state dict"):
        load_pretrained(FerNet(7), tmp_path / "list.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(FernoiseError, match="could not be read"):
        load_pretrained(FerNet(7), tmp_path / "text.pth")
