"""`--pretrained`: where a backbone start comes from, read safely, matched key by key.

Accepted (never downloaded; every file read with ``torch.load(..., weights_only=True)``):

- a state dict file: MS-Celeb-1M ``resnet18_msceleb.pth`` (``{"state_dict": ...}``), a
  torchvision ImageNet ``resnet18-*.pth``, a ``backbone.pt`` of ``fernoise pretrain``; keys
  may carry ``module.`` / ``backbone.`` / ``encoder.`` prefixes, SCN-style
  ``features.<i>.`` Sequential names are mapped to torchvision's, ``fc.*`` is dropped;
- a ``fernoise train`` run folder or its ``model.pt``: the backbone is taken, the heads dropped
  (supervised pretraining on another, cleaner manifest);
- a ``fernoise pretrain`` folder (its ``backbone.pt``);
- ``latest``: the workspace's latest ``pretrain`` output.

:func:`match` compares the file's tensors with the ResNet-18 backbone's and returns a
:class:`MatchReport` (loaded, missing, unexpected, shape-mismatched keys). A file that fills
less than the whole backbone is an error unless ``partial`` (a MobileNet state dict matches
nothing and would otherwise leave a random backbone while training "from pretrained
weights", the failure mode of ``strict=False`` loading).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fernoise.errors import FernoiseError

FLAG = "--pretrained"
# SCN's Res18Feature wraps torchvision's children in nn.Sequential: features.<i> -> name.
_SEQUENTIAL = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
# Every key of torchvision's ResNet-18 without fc: an SCN rename must land on one of these (a
# MobileNet's features.0.0.weight would otherwise become "conv1.0.weight", a name in no file).
_RESNET18_KEY = re.compile(
    r"(conv1\.weight|bn1\.\w+|layer[1-4]\.[01]\.(conv[12]\.weight|bn[12]\.\w+|downsample\.[01]\.\w+))"
)
_HEAD_PREFIXES = (
    "fc.",
    "pcc.",
    "ncc.",
    "projector.",
    "predictor.",
    "head.",
    "heads.",
    "classifier.",
)


@dataclass(frozen=True)
class Source:
    """A resolved ``--pretrained`` value: the file to read and what kind of thing it is."""

    path: Path
    kind: str  # state_dict | train_run | pretrain_run
    spec: str


@dataclass
class MatchReport:
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(
        default_factory=list
    )  # key, file shape, backbone shape

    @property
    def complete(self) -> bool:
        return not self.missing and not self.mismatched

    def as_dict(self) -> dict[str, Any]:
        return {
            "loaded": len(self.loaded),
            "missing": self.missing,
            "unexpected": self.unexpected,
            "mismatched": [[k, list(a), list(b)] for k, a, b in self.mismatched],
        }

    def table(self, limit: int = 5) -> list[tuple[str, int, str]]:
        """Rows ``(what, count, first keys)`` for a short on-screen table."""

        def first(keys):
            shown = ", ".join(keys[:limit])
            return shown + (f", ... (+{len(keys) - limit})" if len(keys) > limit else "")

        return [
            ("loaded", len(self.loaded), ""),
            ("missing (left random)", len(self.missing), first(self.missing)),
            ("unexpected (ignored)", len(self.unexpected), first(self.unexpected)),
            (
                "shape mismatch",
                len(self.mismatched),
                first([f"{k} {tuple(a)} vs {tuple(b)}" for k, a, b in self.mismatched]),
            ),
        ]


def _backbone_of(state: dict[str, Any]) -> str | None:
    """The backbone family whose keys ``state`` holds (after :func:`read_state`'s renames):
    ``resnet18``, ``dlib-resnet29`` or None when neither."""
    if any(_RESNET18_KEY.fullmatch(k) for k in state):
        return "resnet18"
    if any(k.startswith(("conv32_down.", "conv256_down_out.")) for k in state):
        return "dlib-resnet29"
    return None


def resolve(spec: str | os.PathLike, *, workspace=None, backbone_name: str = "resnet18") -> Source:
    """Turn a ``--pretrained`` value into a file to read; one-line errors for what is not (face-api's
    weights, the tarball or its folder, are for ``--backbone dlib-resnet29`` only: they are read by
    :mod:`fernoise.backbones.dlib_resnet29`, never here)."""
    from fernoise.backbones import faceapi_files

    text = str(spec)
    if text != "latest" and faceapi_files.is_faceapi(text):
        raise FernoiseError(
            f"{text} holds face-api's dlib ResNet-29 weights: they are for --backbone dlib-resnet29, "
            f"not --backbone {backbone_name}",
            flag=FLAG,
        )
    if text == "latest":
        from fernoise.cache import Workspace

        ws = workspace or Workspace()
        folder = ws.latest("pretrain", what="pretrained backbone", flag=FLAG)
        return resolve(folder, workspace=ws, backbone_name=backbone_name)
    path = Path(text)
    if path.is_dir():
        if (path / "backbone.pt").is_file():
            return Source(path / "backbone.pt", "pretrain_run", text)
        if (path / "model.pt").is_file():
            return Source(path / "model.pt", "train_run", text)
        raise FernoiseError(
            f"{path} is a folder without backbone.pt (a `fernoise pretrain` output) or model.pt "
            "(a finished `fernoise train` run); pass a weights file or one of those folders",
            flag=FLAG,
        )
    if not path.exists():
        raise FernoiseError(
            f"{path} does not exist; pass a state dict file, a run folder, a pretrain folder or `latest`",
            flag=FLAG,
        )
    if not path.is_file():
        raise FernoiseError(f"{path} is not a regular file", flag=FLAG)
    if path.name == "model.pt" and (path.parent / "config.json").is_file():
        return Source(path, "train_run", text)
    if path.name == "backbone.pt" and (path.parent / "config.json").is_file():
        return Source(path, "pretrain_run", text)
    return Source(path, "state_dict", text)


def read_state(source: Source) -> dict[str, Any]:
    """The file's tensors with backbone key names (torchvision ResNet-18), heads dropped."""
    import torch

    try:
        obj = torch.load(source.path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a safe state dict"
        raise FernoiseError(
            f"{source.path} could not be read as a torch state dict with the safe loader ({e.__class__.__name__})",
            flag=FLAG,
        ) from None
    for key in ("state_dict", "model", "backbone"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if (
        not isinstance(obj, dict)
        or not obj
        or not all(isinstance(v, torch.Tensor) for v in obj.values())
    ):
        raise FernoiseError(
            f"{source.path} is not a state dict (expected a dict of tensors, optionally under "
            "'state_dict' or 'model')",
            flag=FLAG,
        )
    if (
        source.kind == "train_run"
    ):  # a FerNet: backbone.* and the method's heads, whatever their names
        obj = {
            k: v for k, v in obj.items() if str(k).removeprefix("module.").startswith("backbone.")
        }
        if not obj:
            raise FernoiseError(
                f"{source.path} holds no backbone.* tensors; is it a `fernoise train` model.pt?",
                flag=FLAG,
            )
    out = {}
    for k, v in obj.items():
        k = str(k)
        for prefix in ("module.", "backbone.", "encoder.", "model."):
            k = k.removeprefix(prefix)
        if k.startswith("features."):
            head, _, rest = k.removeprefix("features.").partition(".")
            if head in _SEQUENTIAL and _RESNET18_KEY.fullmatch(f"{_SEQUENTIAL[head]}.{rest}"):
                k = f"{_SEQUENTIAL[head]}.{rest}"
        if k.startswith(_HEAD_PREFIXES):
            continue
        out[k] = v
    return out


def match(state: dict[str, Any], target: dict[str, Any]) -> MatchReport:
    """Compare ``state`` with the backbone's own ``target`` state dict, key by key."""
    r = MatchReport()
    for k, v in state.items():
        if k not in target:
            r.unexpected.append(k)
        elif tuple(v.shape) != tuple(target[k].shape):
            r.mismatched.append((k, tuple(v.shape), tuple(target[k].shape)))
        else:
            r.loaded.append(k)
    got = set(r.loaded) | {k for k, _, _ in r.mismatched}
    r.missing = [k for k in target if k not in got]
    return r


def check_finite(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Raise a one-line FernoiseError when a floating tensor of ``state`` holds NaN or inf: such
    a start makes every loss non-finite, and training would go on for nothing."""
    import torch

    bad = [
        k
        for k, v in state.items()
        if isinstance(v, torch.Tensor)
        and v.is_floating_point()
        and not bool(torch.isfinite(v).all())
    ]
    if bad:
        raise FernoiseError(
            f"{path} holds non-finite values (NaN or inf) in {len(bad)} of its {len(state)} backbone tensors, "
            f"e.g. {', '.join(bad[:3])}; it cannot start training: pass another file (a run that diverged "
            "leaves such weights)",
            flag=FLAG,
        )


def load_backbone(
    backbone,
    spec: str | os.PathLike,
    *,
    partial: bool = False,
    workspace=None,
    backbone_name: str = "resnet18",
) -> tuple[Source, MatchReport]:
    """Load ``spec`` into ``backbone`` (of family ``backbone_name``: a torchvision ResNet-18
    without ``fc`` by default).

    Raises a one-line FernoiseError when the file holds another backbone family (naming the
    ``--backbone`` it is for), when shapes mismatch, when the file does not fill the whole
    backbone and ``partial`` is False (the message names a few keys), or when a tensor it
    loads holds NaN or inf (:func:`check_finite`).
    """
    source = resolve(spec, workspace=workspace, backbone_name=backbone_name)
    state = read_state(source)
    family = _backbone_of(state)
    if family is not None and family != backbone_name:
        raise FernoiseError(
            f"{source.path} holds a {family} backbone: it is for --backbone {family}, "
            f"not --backbone {backbone_name}",
            flag=FLAG,
        )
    arch = "ResNet-18" if backbone_name == "resnet18" else backbone_name
    target = backbone.state_dict()
    report = match(state, target)
    if report.mismatched:
        shown = "; ".join(f"{k} is {a}, needs {b}" for k, a, b in report.mismatched[:3])
        raise FernoiseError(
            f"{source.path}: {len(report.mismatched)} tensors have the wrong shape for a {arch} backbone "
            f"({shown}{'; ...' if len(report.mismatched) > 3 else ''}); is it another architecture?",
            flag=FLAG,
        )
    if not report.loaded:
        raise FernoiseError(
            f"{source.path} fills none of the {arch} backbone: its keys ({', '.join(list(state)[:3])}, ...) "
            f"match none of the backbone's ({', '.join(list(target)[:3])}, ...); is it another architecture?",
            flag=FLAG,
        )
    if report.missing and not partial:
        raise FernoiseError(
            f"{source.path} fills {len(report.loaded)} of {len(target)} backbone tensors; missing "
            f"{', '.join(report.missing[:3])}{', ...' if len(report.missing) > 3 else ''}; "
            "pass --pretrained-partial to train the rest from random weights",
            flag=FLAG,
        )
    check_finite(source.path, {k: state[k] for k in report.loaded})
    backbone.load_state_dict({k: state[k] for k in report.loaded}, strict=False)
    return source, report
