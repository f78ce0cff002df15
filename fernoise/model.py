"""The network every method shares: a backbone (``fernoise.backbones``); heads come from the method.

``FerNet(backbone="resnet18")`` holds only ``backbone`` (``fernoise.backbones.create``:
torchvision ResNet-18 with ``fc`` = Identity by default, or ``dlib-resnet29``); the method
adds its heads with ``model.add_module`` (``fernoise.methods.base.Method.build``), so the
key names of model.pt are ``backbone.*`` plus the method's modules (``pcc.*``, ``ncc.*`` for
ce/pc/nl/ncctfer, as always). ``model(fn, *args)`` calls ``fn(model, *args)``: the training
loop runs a method's whole loss inside the module call, so DistributedDataParallel sees every
head it uses. Pretrained weights come only from a local file, read by the one loader,
the backbone family's ``load_pretrained`` (``fernoise.backbones``). Nothing is ever downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

FEATURE_DIM = 512
"""ResNet-18's feature width (the default backbone's); a model's own is ``model.feature_dim``."""


class FerNet(nn.Module):
    """A backbone (``fernoise.backbones``, ResNet-18 by default) and the method's heads:
    ``feature_map`` ``(N, D, h, w)``, ``features`` ``(N, D)``, ``pool``, ``feature_dim`` D."""

    def __init__(self, backbone: str = "resnet18") -> None:
        super().__init__()
        self.backbone_name = backbone
        self.backbone = self.new_backbone()

    def new_backbone(self) -> nn.Module:
        """A freshly initialised backbone of this network's family (``fernoise.backbones.create``),
        e.g. a method's second network (``Method.build``); draws from torch's global generator."""
        from fernoise import backbones

        return backbones.create(self.backbone_name)

    def __getattr__(self, name: str) -> Any:
        """The method's modules (``pcc``, ``ncc``, ...), added at run time by ``Method.build``."""
        return super().__getattr__(name)

    @property
    def feature_dim(self) -> int:
        """Width of the pooled feature (512 for ResNet-18, 256 for dlib-resnet29)."""
        b: Any = self.backbone  # a fernoise.backbones module
        return int(b.feature_dim)

    @property
    def card(self) -> Any:
        """The backbone's :class:`fernoise.backbones.Card` (normalisation, sizes)."""
        from fernoise import backbones

        return backbones.get(self.backbone_name)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last convolutional map before pooling, ``(N, D, h, w)`` (ResNet-18: ``layer4``,
        ``H/32``)."""
        b: Any = self.backbone
        return b.feature_map(x)

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        """``feature_map`` -> the pooled feature ``(N, D)``, as ``features`` pools it."""
        b: Any = self.backbone
        return b.pool(fmap)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled feature ``(N, D)`` (the backbone's own forward, average pool)."""
        return self.backbone(x)

    def forward(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(self, *args, **kwargs)``: e.g. ``model(method.loss, views, y, idx, ...)`` or
        ``model(method.logits, x)``."""
        return fn(self, *args, **kwargs)


class Classifier(nn.Module):
    """A trained ``FerNet`` with its method's test-time head: ``classifier(x)`` -> logits ``(N, C)``
    (eval, predict, Grad-CAM). ``backbone`` is the network's, for hooks on its ``cam_layer``;
    ``mean``/``std`` the input normalisation of its family (``fernoise.data.normalize``)."""

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

    @property
    def mean(self) -> tuple[float, float, float]:
        return self.net.card.mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.net.card.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._logits(self.net, x)
