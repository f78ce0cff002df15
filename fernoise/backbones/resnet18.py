"""``resnet18``: torchvision's ResNet-18 without ``fc``, the backbone fernoise always trained.

:class:`ResNet18Backbone` *is* a torchvision ``ResNet`` (a subclass built exactly as
``torchvision.models.resnet18(weights=None)`` builds it, then ``fc`` = Identity), so its
state-dict keys (``conv1.weight``, ``layer4.1.bn2.running_var``, ...) and its seeded
initialisation are those of every earlier run: old ``model.pt`` files load, keys are unchanged.
Pretrained weights: :mod:`fernoise.train.weights` (a local state dict, a run, a pretrain folder).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

FEATURE_DIM = 512


class ResNet18Backbone(ResNet):
    """ResNet-18 without ``fc``: ``forward`` -> ``(N, 512)``, ``feature_map`` -> ``(N, 512,
    ceil(H/32), ceil(W/32))`` (``layer4``), ``pool`` = its average pool."""

    feature_dim = FEATURE_DIM
    compile_stages: tuple[str, ...] = ("conv1", "layer1", "layer2", "layer3", "layer4")

    def __init__(self) -> None:
        super().__init__(BasicBlock, [2, 2, 2, 2])  # torchvision's resnet18(weights=None)
        self.fc = nn.Identity()

    @property
    def cam_layer(self) -> nn.Module:
        """The module Grad-CAM hooks: ``layer4``."""
        return self.layer4

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last convolutional stage (``layer4``) before pooling."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        """``(N, 512, h, w)`` -> ``(N, 512)``: the network's own average pool."""
        return torch.flatten(self.avgpool(fmap), 1)


def create() -> ResNet18Backbone:
    return ResNet18Backbone()


def map_size(side: int) -> int:
    """Side of ``layer4``'s map: five stride-2 steps that each round up (``ceil(side / 32)``)."""
    n = int(side)
    for _ in range(5):
        n = math.ceil(n / 2)
    return n


def load_pretrained(
    backbone: nn.Module, spec: str, *, partial: bool = False, workspace=None
) -> Any:
    """``--pretrained`` into a ResNet-18 backbone (:func:`fernoise.train.weights.load_backbone`):
    a :class:`fernoise.backbones.Start`."""
    from fernoise.backbones import Start
    from fernoise.cache import file_sha256
    from fernoise.train.weights import load_backbone

    source, report = load_backbone(
        backbone, spec, partial=partial, workspace=workspace, backbone_name="resnet18"
    )
    path = str(source.path.resolve())
    return Start(
        path=path,
        kind=source.kind,
        sha256=file_sha256(path),
        report=report.as_dict(),
        table=report.table(),
        complete=report.complete,
    )
