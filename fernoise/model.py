"""The network every method shares: a ResNet-18 backbone; heads come from the method.

``FerNet()`` holds only ``backbone`` (torchvision ResNet-18 with ``fc`` = Identity); the method
adds its heads with ``model.add_module`` (``fernoise.methods.base.Method.build``), so the
key names of model.pt are ``backbone.*`` plus the method's modules (``pcc.*``, ``ncc.*`` for
ce/pc/nl/ncctfer, as always). ``model(fn, *args)`` calls ``fn(model, *args)``: the training
loop runs a method's whole loss inside the module call, so DistributedDataParallel sees every
head it uses. Pretrained weights come only from a local file (docs/methods.md): a state dict,
optionally wrapped in ``state_dict``/``model``, with or without ``module.``. Nothing is ever
downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fernoise.errors import FernoiseError

FEATURE_DIM = 512


class FerNet(nn.Module):
    """ResNet-18 without ``fc``: ``feature_map`` ``(N, 512, h, w)``, ``features`` ``(N, 512)``."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet18

        backbone = resnet18(weights=None)
        backbone.fc = nn.Identity()
        self.backbone = backbone

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last convolutional stage (``layer4``) before pooling: ``(N, 512, H/32, W/32)``."""
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        return b.layer4(b.layer3(b.layer2(b.layer1(x))))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled 512-d feature ``(N, 512)`` (the backbone's own forward, average pool)."""
        return self.backbone(x)

    def forward(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(self, *args, **kwargs)``: e.g. ``model(method.loss, views, y, idx, ...)`` or
        ``model(method.logits, x)``."""
        return fn(self, *args, **kwargs)


class Classifier(nn.Module):
    """A trained ``FerNet`` with its method's test-time head: ``classifier(x)`` -> logits ``(N, C)``
    (eval, predict, Grad-CAM). ``backbone`` is the network's, for hooks on ``layer4``."""

    def __init__(self, net: FerNet, logits: Callable[[FerNet, torch.Tensor], torch.Tensor], num_classes: int):
        super().__init__()
        self.net = net
        self._logits = logits
        self.num_classes = num_classes

    @property
    def backbone(self) -> nn.Module:
        return self.net.backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._logits(self.net, x)


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise FernoiseError(
            f"{path} is not a state dict (expected a dict of tensors, optionally under "
            "'state_dict' or 'model')",
            flag="--pretrained",
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_pretrained(model: FerNet, path: str | os.PathLike) -> dict[str, list[str]]:
    """Load backbone weights from a local file into ``model.backbone``.

    Keys may be bare ResNet keys (``conv1.weight``) or prefixed ``backbone.``; ``fc.*`` and
    head keys are ignored. Returns ``{"missing": [...], "unexpected": [...]}``; a shape
    mismatch raises a FernoiseError naming the first offending key.
    """
    path = Path(path)
    if not path.is_file():
        raise FernoiseError(f"{path} does not exist", flag="--pretrained")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a state dict"
        raise FernoiseError(
            f"{path} could not be read as a torch state dict ({e.__class__.__name__})",
            flag="--pretrained",
        ) from None
    state = _unwrap_state_dict(obj, path)
    state = {k.removeprefix("backbone."): v for k, v in state.items()}
    target = model.backbone.state_dict()
    usable, unexpected = {}, []
    for k, v in state.items():
        if k.startswith(("fc.", "pcc.", "ncc.")):
            continue
        if k not in target:
            unexpected.append(k)
            continue
        if tuple(v.shape) != tuple(target[k].shape):
            raise FernoiseError(
                f"{path}: shape of {k} is {tuple(v.shape)}, the ResNet-18 backbone needs "
                f"{tuple(target[k].shape)}",
                flag="--pretrained",
            )
        usable[k] = v
    missing = [k for k in target if k not in usable]
    model.backbone.load_state_dict(usable, strict=False)
    return {"missing": missing, "unexpected": unexpected}
