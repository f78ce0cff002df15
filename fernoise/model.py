"""The network every method shares: a ResNet-18 backbone; heads come from the method.

``FerNet()`` holds only ``backbone`` (torchvision ResNet-18 with ``fc`` = Identity); the method
adds its heads with ``model.add_module`` (``fernoise.methods.base.Method.build``), so the
key names of model.pt are ``backbone.*`` plus the method's modules (``pcc.*``, ``ncc.*`` for
ce/pc/nl/ncctfer, as always). ``model(fn, *args)`` calls ``fn(model, *args)``: the training
loop runs a method's whole loss inside the module call, so DistributedDataParallel sees every
head it uses. Pretrained weights come only from a local file, read by the one loader,
``fernoise.train.weights.load_backbone(model.backbone, spec)``. Nothing is ever downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

FEATURE_DIM = 512


class FerNet(nn.Module):
    """ResNet-18 without ``fc``: ``feature_map`` ``(N, 512, h, w)``, ``features`` ``(N, 512)``."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = self.new_backbone()

    def new_backbone(self) -> nn.Module:
        """A freshly initialised backbone of this network's family (ResNet-18 without ``fc``),
        e.g. a method's second network (``Method.build``); draws from torch's global generator."""
        from torchvision.models import resnet18

        backbone = resnet18(weights=None)
        backbone.fc = nn.Identity()
        return backbone

    def __getattr__(self, name: str) -> Any:
        """The method's modules (``pcc``, ``ncc``, ...), added at run time by ``Method.build``."""
        return super().__getattr__(name)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last convolutional stage (``layer4``) before pooling: ``(N, 512, H/32, W/32)``."""
        b: Any = self.backbone  # a torchvision ResNet
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

    def __init__(
        self, net: FerNet, logits: Callable[[FerNet, torch.Tensor], torch.Tensor], num_classes: int
    ):
        super().__init__()
        self.net = net
        self._logits = logits
        self.num_classes = num_classes

    @property
    def backbone(self) -> nn.Module:
        return self.net.backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._logits(self.net, x)
