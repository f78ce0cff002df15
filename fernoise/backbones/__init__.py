"""The registry of backbones (``fernoise train --backbone NAME``): one card per family, one module
per family, loaded only when a network is built.

- ``resnet18`` (:mod:`fernoise.backbones.resnet18`): torchvision's ResNet-18 without ``fc``,
  the backbone fernoise always had (its state-dict keys unchanged).
- ``dlib-resnet29`` (:mod:`fernoise.backbones.dlib_resnet29`): dlib's face-recognition ResNet-29
  without its 256 -> 128 descriptor layer; its weights come from face-api's TensorFlow.js copy
  (:mod:`fernoise.backbones.faceapi_files`).

A :class:`Card` is what the CLI, the run's config and the size checks need without torch: the
name, the parameter count, the smallest input side, the feature width, the input
normalisation (mean/std on the 0..1 scale, as :func:`fernoise.data.normalize` applies them),
the rule for the last conv map's side, and where pretrained weights come from.

Every backbone module built by :func:`create` exposes ``forward(x)`` -> pooled features
``(N, D)``, ``feature_map(x)`` -> the last conv map ``(N, D, h, w)``, ``pool(fmap)`` -> ``(N, D)``
(``pool(feature_map(x)) == forward(x)``), ``feature_dim`` (D), ``cam_layer`` (the module whose
output Grad-CAM hooks) and ``compile_stages`` (names of the child modules ``--compile``
compiles). Its family module has ``create()``, ``map_size(side)`` and ``load_pretrained(backbone,
spec, *, partial, workspace)`` (:class:`Start`).

Importing this package does not import torch; the family modules do.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fernoise.errors import FernoiseError

if TYPE_CHECKING:
    from torch import nn

DEFAULT = "resnet18"
FLAG = "--backbone"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# dlib's input_rgb_image_sized: (pixel - (122.782, 117.001, 104.298)) / 256 on 0..255 values,
# i.e. on the 0..1 scale mean = MEAN_RGB / 255 and std = 256 / 255
# (fernoise.backbones.dlib_resnet29.MEAN_RGB, INPUT_SCALE; tests/test_backbones.py checks them).
DLIB_MEAN = (122.782 / 255, 117.001 / 255, 104.298 / 255)
DLIB_STD = (256 / 255, 256 / 255, 256 / 255)


@dataclass(frozen=True)
class Card:
    """What fernoise knows about a backbone family without building it."""

    name: str
    summary: str
    module: str
    """The family module (``create``, ``map_size``, ``load_pretrained``)."""
    parameters: int
    """Parameters of the backbone as fernoise trains it (no classifier, no descriptor layer)."""
    min_size: int
    """Smallest input side in pixels (``--image-size`` below it is an error)."""
    feature_dim: int
    """Width of the pooled feature the heads read."""
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    """Input normalisation on the 0..1 scale: ``(x / 255 - mean) / std``."""
    normalisation: str
    map_rule: str
    """The last conv map's side as a function of the input side, in words."""
    weights: str
    """Where ``--pretrained`` weights come from."""
    license: str | None = None
    """The license of the pretrained weights this card names, when fernoise knows it."""
    aliases: tuple[str, ...] = field(default=())

    def map_size(self, side: int) -> int:
        """Side of the last conv map for a square input of ``side`` px (imports the family)."""
        return int(family(self.name).map_size(int(side)))


_CARDS: dict[str, Card] = {
    "resnet18": Card(
        name="resnet18",
        summary="torchvision ResNet-18 without fc (BatchNorm; ImageNet-style stem)",
        module="fernoise.backbones.resnet18",
        parameters=11_176_512,
        min_size=16,
        feature_dim=512,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        normalisation="ImageNet: (x/255 - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225)",
        map_rule="ceil(side / 32): 4x4 at 112, 7x7 at 224",
        weights="a local state dict (MS-Celeb-1M resnet18_msceleb.pth, torchvision resnet18-*.pth), "
        "a fernoise train run or a fernoise pretrain folder",
    ),
    "dlib-resnet29": Card(
        name="dlib-resnet29",
        summary="dlib's face-recognition ResNet-29 (dlib_face_recognition_resnet_model_v1) "
        "without its 256->128 descriptor layer",
        module="fernoise.backbones.dlib_resnet29",
        parameters=5_581_824,
        min_size=103,
        feature_dim=256,
        mean=DLIB_MEAN,
        std=DLIB_STD,
        normalisation="dlib: (RGB - (122.782, 117.001, 104.298)) / 256",
        map_rule="1x1 at 103-134, 2x2 at 135-198, 3x3 at 199-262, 4x4 at 263-326 (+1 per 64 px)",
        weights="face-api's copy: the npm tarball of `npm pack @vladmandic/face-api@1.7.15` "
        "or a folder with face_recognition_model-weights_manifest.json + .bin",
        license="dlib model: public domain (Davis King); face-api package: MIT",
    ),
}


def names() -> list[str]:
    """Registered backbone names, in table order."""
    return list(_CARDS)


def get(name: str) -> Card:
    """The card of ``name``; an unknown name lists every backbone (flag ``--backbone``)."""
    try:
        return _CARDS[name]
    except KeyError:
        listing = "; ".join(f"{n}: {c.summary}" for n, c in _CARDS.items())
        raise FernoiseError(
            f"unknown backbone {name!r}; choose one of: {listing}", flag=FLAG
        ) from None


def family(name: str) -> Any:
    """The family module of backbone ``name`` (imports torch)."""
    return importlib.import_module(get(name).module)


def create(name: str = DEFAULT) -> nn.Module:
    """A freshly initialised backbone ``name`` (draws from torch's global generator)."""
    return family(name).create()


def check_image_size(name: str, size: int, *, flag: str = "--image-size") -> None:
    """One-line error (naming ``flag``) when ``size`` is below the backbone's smallest side."""
    card = get(name)
    if size < card.min_size:
        raise FernoiseError(
            f"--backbone {card.name} needs images of at least {card.min_size} px, got {size}",
            flag=flag,
        )


@dataclass(frozen=True)
class Start:
    """A ``--pretrained`` start as read and matched: what config.json records and the key uses."""

    path: str
    """The file or folder given, resolved."""
    kind: str
    """state_dict | train_run | pretrain_run | faceapi-tarball | faceapi-folder."""
    sha256: str
    """The key's ``pretrained_sha256``: of the file read (face-api: of the ``.bin``, whichever
    form held it)."""
    report: dict[str, Any]
    """``MatchReport.as_dict()``: loaded, missing, unexpected, mismatched."""
    table: list[tuple[str, int, str]]
    complete: bool
    license: str | None = None
