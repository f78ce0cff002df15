"""dlib's face-recognition ResNet-29 (``dlib_face_recognition_resnet_model_v1``) in PyTorch,
loaded from the face-api (TensorFlow.js) copy of its weights.

The network is dlib's ``anet_type`` of ``examples/dnn_face_recognition_ex.cpp``::

    input_rgb_image_sized<150>       (pixel - (122.782, 117.001, 104.298)) / 256, RGB
    con<32,7,7,2,2> affine relu      stem, stride 2, no padding          conv32_down
    max_pool<3,3,2,2>                no padding
    alevel4: ares<32> x3             conv32_1 .. conv32_3
    alevel3: ares_down<64>, ares<64> x3     conv64_down, conv64_1 .. conv64_3
    alevel2: ares_down<128>, ares<128> x2   conv128_down, conv128_1, conv128_2
    alevel1: ares_down<256>, ares<256> x2   conv256_down, conv256_1, conv256_2
    alevel0: ares_down<256>                 conv256_down_out
    avg_pool_everything              -> 256-D (``features``)
    fc_no_bias<128>                  -> 128-D descriptor (``forward``)

- ``ares<N>``: relu(x + affine(con3x3(relu(affine(con3x3(x)))))), both convs stride 1,
  padding 1.
- ``ares_down<N>``: the first con3x3 has stride 2 and *no* padding (dlib pads only stride-1
  convs; TF "valid"); the shortcut is ``avg_pool<2,2,2,2>(x)`` (no padding). When the two
  differ in size, dlib's ``add_prev`` adds them index-aligned at the top-left corner with zeros
  where one of them has no value: the conv branch gets a zero last row/column (one at most),
  the shortcut zero channels after its own (32 -> 64 etc.).
- ``affine``: dlib's per-channel ``gamma * x + beta`` (batch-norm folded at training time,
  no batch statistics); kept here as a learnable :class:`Affine` so that fine-tuning can move
  it. Every conv has a bias (dlib's ``con``; face-api's ``conv/bias``).

Sizes: at 150x150 (dlib's chip) the last conv map is 256 x 2 x 2; at 112, 256 x 1 x 1.
The smallest side the network accepts is :data:`MIN_INPUT_SIZE` = 103 (each stride-2 conv
needs 3 rows: 103 -> 49 -> 24 -> 12 -> 6 -> 3 -> 1; 102 leaves 2 rows before the last
``ares_down``). A smaller input is a one-line :class:`~fernoise.errors.FernoiseError`
naming 103 (:func:`check_input_size`, called by ``feature_map`` and usable before training).

Weights: ``face_recognition_model-weights_manifest.json`` + ``face_recognition_model.bin``
of npm ``@vladmandic/face-api`` 1.7.15 (117 tensors; uint8 ones dequantised as
``q * scale + min``, the others float32; conv filters in TF's HWIO layout, turned to OIHW;
``fc`` is ``[256, 128]``, turned to ``Linear(256, 128, bias=False)``). Both files are
checked against their sha256 (:data:`FACEAPI_SHA256`) and every tensor against the shape
this module expects: a missing, extra, misshaped or truncated tensor is a one-line error,
never a half-loaded network.

:func:`extract_chip` redoes dlib's ``extract_image_chip`` (pyramid + bilinear) in numpy, so
that a chip placed by dlib's 5-point alignment can be cut again without dlib.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fernoise.errors import FernoiseError

FACEAPI_MANIFEST = "face_recognition_model-weights_manifest.json"
FACEAPI_BIN = "face_recognition_model.bin"
# ../shared/data/faceapi/README.md; npm @vladmandic/face-api 1.7.15, package/model/
FACEAPI_SHA256: dict[str, str] = {
    FACEAPI_BIN: "b413e420d6840b2775fba32008db6f3cddb07d485967fb42cfcf379c16a8c589",
    FACEAPI_MANIFEST: "cbaffa501b0b9275a12b63357a6843e7e30c054e1c9151e1a5f879b26e32986b",
}

MEAN_RGB = (122.782, 117.001, 104.298)  # dlib input_rgb_image_sized: avg_red/green/blue
INPUT_SCALE = 256.0  # dlib divides by 256 (face-api by 255)
CHIP_SIZE = 150
FEATURE_DIM = 256
DESCRIPTOR_DIM = 128

# (name, in channels, out channels, down-sampling) after the stem, in dlib's order
BLOCKS: tuple[tuple[str, int, int, bool], ...] = (
    ("conv32_1", 32, 32, False),
    ("conv32_2", 32, 32, False),
    ("conv32_3", 32, 32, False),
    ("conv64_down", 32, 64, True),
    ("conv64_1", 64, 64, False),
    ("conv64_2", 64, 64, False),
    ("conv64_3", 64, 64, False),
    ("conv128_down", 64, 128, True),
    ("conv128_1", 128, 128, False),
    ("conv128_2", 128, 128, False),
    ("conv256_down", 128, 256, True),
    ("conv256_1", 256, 256, False),
    ("conv256_2", 256, 256, False),
    ("conv256_down_out", 256, 256, True),
)


# --------------------------------------------------------------------------------------------
# sizes


def _valid(n: int, k: int, s: int) -> int:
    """Output side of a k x k, stride s window without padding; 0 when n < k."""
    return (n - k) // s + 1 if n >= k else 0


def feature_map_size(side: int) -> int:
    """Side of the last conv map (``feature_map``) for an input side ``side``; 0 when the
    network cannot take it (a stride-2 conv would get fewer than 3 rows)."""
    n = _valid(_valid(int(side), 7, 2), 3, 2)  # stem conv, max-pool
    for _, _, _, down in BLOCKS:
        if down:
            conv, pool = _valid(n, 3, 2), _valid(n, 2, 2)
            if conv == 0 or pool == 0:
                return 0
            n = max(conv, pool)  # the add zero-pads the smaller to the larger (pool)
    return n


def _smallest_input_size() -> int:
    side = 1
    while feature_map_size(side) == 0:
        side += 1
    return side


MIN_INPUT_SIZE = _smallest_input_size()  # 103


def check_input_size(height: int, width: int | None = None, *, flag: str | None = None) -> None:
    """One-line :class:`FernoiseError` unless both sides are at least :data:`MIN_INPUT_SIZE`."""
    width = height if width is None else width
    if min(height, width) < MIN_INPUT_SIZE:
        size = f"{height}" if height == width else f"{height}x{width}"
        raise FernoiseError(
            f"dlib-resnet29 needs inputs of at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} px "
            f"(its stride-2 convs have no padding), got {size}; use an image size of "
            f"{MIN_INPUT_SIZE} or more (dlib's own chips are {CHIP_SIZE})",
            flag=flag,
        )


# --------------------------------------------------------------------------------------------
# layers


class Affine(nn.Module):
    """dlib's ``affine`` layer: per-channel ``weight * x + bias`` (learnable)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class ConvAffine(nn.Module):
    """``affine(con(x))``: dlib pads stride-1 convs by k//2 and stride-2 convs not at all."""

    def __init__(self, cin: int, cout: int, k: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(
            cin, cout, k, stride=stride, padding=0 if stride != 1 else k // 2, bias=True
        )
        self.scale = Affine(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale(self.conv(x))


class Residual(nn.Module):
    """``ares<N>``: relu(x + conv2(relu(conv1(x))))."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = ConvAffine(cin, cout, 3, 1)
        self.conv2 = ConvAffine(cout, cout, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


class ResidualDown(nn.Module):
    """``ares_down<N>``: relu(avg_pool2(x) + conv2(relu(conv1_stride2_valid(x)))), the two
    added index-aligned at the top-left with zeros where either has no value (dlib's
    ``add_prev``)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = ConvAffine(cin, cout, 3, 2)
        self.conv2 = ConvAffine(cout, cout, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.conv1(x)))
        short = F.avg_pool2d(x, 2, 2)
        dh, dw = short.shape[-2] - out.shape[-2], short.shape[-1] - out.shape[-1]
        if dh or dw:  # the pool is never smaller than the valid conv (at most one larger)
            out = F.pad(out, (0, dw, 0, dh))
        dc = out.shape[1] - short.shape[1]
        if dc:
            short = F.pad(short, (0, 0, 0, 0, 0, dc))
        return F.relu(out + short)


class DlibResNet29(nn.Module):
    """dlib's face-recognition ResNet-29 (5,614,592 parameters).

    Input: ``(N, 3, H, W)`` already normalised the dlib way (:meth:`normalize` of RGB pixel
    values 0..255), H and W at least :data:`MIN_INPUT_SIZE`; dlib's own input is the 150x150
    chip of its 5-point alignment. ``forward`` -> the 128-D descriptor (dlib's
    ``compute_face_descriptor``, not normalised), ``features`` -> the 256-D pooled feature
    before ``fc``, ``feature_map`` -> the last conv map ``(N, 256, h, w)``
    (:func:`feature_map_size`: 2 at 150, 1 at 112).

    A fresh module has random convs and identity affines; :meth:`from_faceapi` loads dlib's
    weights.
    """

    feature_dim = FEATURE_DIM
    descriptor_dim = DESCRIPTOR_DIM

    def __init__(self) -> None:
        super().__init__()
        self.conv32_down = ConvAffine(3, 32, 7, 2)
        for name, cin, cout, down in BLOCKS:
            self.add_module(name, (ResidualDown if down else Residual)(cin, cout))
        self.fc = nn.Linear(FEATURE_DIM, DESCRIPTOR_DIM, bias=False)

    @staticmethod
    def normalize(x: torch.Tensor) -> torch.Tensor:
        """RGB pixel values 0..255 (``(N, 3, H, W)``, any dtype) -> dlib's input:
        ``(x - (122.782, 117.001, 104.298)) / 256``."""
        mean = torch.tensor(MEAN_RGB, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        return (x.to(torch.float32) - mean) / INPUT_SCALE

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise FernoiseError(
                f"dlib-resnet29 takes (N, 3, H, W) RGB tensors, got shape {tuple(x.shape)}"
            )
        check_input_size(int(x.shape[-2]), int(x.shape[-1]))
        x = F.relu(self.conv32_down(x))
        x = F.max_pool2d(x, 3, 2)
        for name, _, _, _ in BLOCKS:
            x = getattr(self, name)(x)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))

    # ---------------------------------------------------------------------------------------
    # weights

    @staticmethod
    def expected_tensors() -> dict[str, tuple[int, ...]]:
        """Every face-api tensor this network uses, with its shape in face-api's layout (conv
        filters HWIO, ``fc`` ``[256, 128]``), in manifest order."""
        shapes: dict[str, tuple[int, ...]] = {}

        def conv(prefix: str, cin: int, cout: int, k: int) -> None:
            shapes[f"{prefix}/conv/filters"] = (k, k, cin, cout)
            shapes[f"{prefix}/conv/bias"] = (cout,)
            shapes[f"{prefix}/scale/weights"] = (cout,)
            shapes[f"{prefix}/scale/biases"] = (cout,)

        conv("conv32_down", 3, 32, 7)
        for name, cin, cout, _ in BLOCKS:
            conv(f"{name}/conv1", cin, cout, 3)
            conv(f"{name}/conv2", cout, cout, 3)
        shapes["fc"] = (FEATURE_DIM, DESCRIPTOR_DIM)
        return shapes

    @staticmethod
    def _parameter_name(tensor: str) -> str:
        if tensor == "fc":
            return "fc.weight"
        prefix, kind = tensor.rsplit("/", 2)[0], "/".join(tensor.rsplit("/", 2)[1:])
        suffix = {
            "conv/filters": "conv.weight",
            "conv/bias": "conv.bias",
            "scale/weights": "scale.weight",
            "scale/biases": "scale.bias",
        }[kind]
        return prefix.replace("/", ".") + "." + suffix

    def load_faceapi_tensors(
        self, tensors: Mapping[str, np.ndarray], source: str = "face-api weights"
    ) -> None:
        """Copy face-api's tensors into this module: each expected tensor exactly once, each
        with its expected shape; a missing, extra or misshaped tensor is a one-line error and
        the module is left unchanged."""
        expected = self.expected_tensors()
        missing = [n for n in expected if n not in tensors]
        extra = [n for n in tensors if n not in expected]
        if missing or extra:
            parts = []
            if missing:
                parts.append(
                    f"missing {len(missing)} tensor(s) ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})"
                )
            if extra:
                parts.append(
                    f"unexpected {len(extra)} tensor(s) ({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''})"
                )
            raise FernoiseError(
                f"{source} are not dlib's face-recognition ResNet-29: {'; '.join(parts)}"
            )
        for name, shape in expected.items():
            got = tuple(np.shape(tensors[name]))
            if got != shape:
                raise FernoiseError(
                    f"{source}: tensor {name} has shape {list(got)}, dlib-resnet29 needs {list(shape)}"
                )
        params = dict(self.named_parameters())
        new: dict[str, torch.Tensor] = {}
        for name in expected:
            value = np.asarray(tensors[name], dtype=np.float32)
            if value.ndim == 4:  # HWIO -> OIHW
                value = value.transpose(3, 2, 0, 1)
            elif name == "fc":  # x @ fc  ==  Linear with weight fc.T
                value = value.T
            pname = self._parameter_name(name)
            if pname in new or pname not in params or tuple(params[pname].shape) != value.shape:
                raise FernoiseError(
                    f"{source}: tensor {name} does not fit parameter {pname}"
                )  # a bug, not the file
            new[pname] = torch.from_numpy(np.ascontiguousarray(value))
        if set(new) != set(params):
            raise FernoiseError(
                f"{source}: parameters left unset: {sorted(set(params) - set(new))[:3]}"
            )
        with torch.no_grad():
            for pname, t in new.items():
                params[pname].copy_(t)

    @classmethod
    def from_faceapi(
        cls, folder: str | os.PathLike, *, sha256: Mapping[str, str] | None = FACEAPI_SHA256
    ) -> DlibResNet29:
        """dlib's network with the weights of a folder holding face-api's
        ``face_recognition_model-weights_manifest.json`` and ``face_recognition_model.bin``;
        ``sha256`` (file name -> hex) checks the files first (None: no check)."""
        net = cls()
        net.load_faceapi_tensors(
            read_faceapi(folder, sha256=sha256), source=f"face-api weights in {folder}"
        )
        return net


class DlibBackbone(DlibResNet29):
    """``--backbone dlib-resnet29``: :class:`DlibResNet29` without ``fc`` (the 128-D descriptor
    layer, which FER does not use: no parameter left out of the loss under DDP).

    ``forward`` -> the pooled 256-D feature, ``feature_map`` -> ``(N, 256, s, s)`` with ``s`` =
    :func:`feature_map_size` (1 at 103-134 px, 2 at 135-198), ``pool`` = the mean over the map
    (dlib's ``avg_pool_everything``), ``cam_layer`` = the last block. Its state-dict keys are
    :class:`DlibResNet29`'s without ``fc.weight``."""

    compile_stages: tuple[str, ...] = ("conv32_down", *(name for name, _, _, _ in BLOCKS))

    def __init__(self) -> None:
        super().__init__()
        del self.fc

    @property
    def cam_layer(self) -> nn.Module:
        """The module Grad-CAM hooks: the last block, ``conv256_down_out``."""
        return self.get_submodule("conv256_down_out")

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        return fmap.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def create() -> DlibBackbone:
    return DlibBackbone()


def map_size(side: int) -> int:
    """The backbone card's map-size rule: :func:`feature_map_size`."""
    return feature_map_size(side)


LICENSE = "dlib model: public domain (Davis King); face-api package: MIT"


def load_pretrained(
    backbone: nn.Module, spec: str, *, partial: bool = False, workspace=None
) -> Any:
    """``--pretrained`` into a :class:`DlibBackbone`: face-api's npm tarball or model folder
    (:mod:`fernoise.backbones.faceapi_files`; the full :class:`DlibResNet29` is loaded, then every
    tensor but ``fc.*`` copied strictly), or a state dict of this backbone (a dlib-resnet29
    ``fernoise train`` run or ``pretrain`` folder, through :mod:`fernoise.train.weights`).
    A :class:`fernoise.backbones.Start`; every problem a one-line error naming ``--pretrained``."""
    from fernoise.backbones import Start, faceapi_files
    from fernoise.cache import file_sha256
    from fernoise.train.weights import MatchReport, load_backbone

    found = faceapi_files.locate(spec)
    if found is None:
        source, report = load_backbone(
            backbone, spec, partial=partial, workspace=workspace, backbone_name="dlib-resnet29"
        )
        path = str(source.path.resolve())
        return Start(
            path, source.kind, file_sha256(path), report.as_dict(), report.table(), report.complete
        )
    with faceapi_files.opened(found) as folder:
        where = f"{found.path}:package/model" if found.kind == "faceapi-tarball" else str(folder)
        try:
            tensors = read_faceapi(folder)
            sha = _sha256(folder / FACEAPI_BIN)
            with torch.random.fork_rng(devices=[]):  # the caller's seeded draws stay as they were
                full = DlibResNet29()
            full.load_faceapi_tensors(tensors, source=f"face-api weights in {where}")
        except FernoiseError as e:
            raise FernoiseError(
                e.one_line().replace(str(folder), where), flag="--pretrained"
            ) from None
    state = {k: v for k, v in full.state_dict().items() if not k.startswith("fc.")}
    backbone.load_state_dict(state, strict=True)
    report = MatchReport(loaded=list(state), unexpected=["fc.weight"])
    return Start(
        path=str(found.path),
        kind=found.kind,
        sha256=sha,
        report=report.as_dict(),
        table=report.table(),
        complete=True,
        license=LICENSE,
    )


# --------------------------------------------------------------------------------------------
# reading face-api's files

_QUANT: dict[str, type[np.generic]] = {
    "uint8": np.uint8,
    "uint16": np.uint16,
    "float16": np.float16,
}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_faceapi(
    folder: str | os.PathLike,
    *,
    sha256: Mapping[str, str] | None = FACEAPI_SHA256,
    manifest_name: str = FACEAPI_MANIFEST,
) -> dict[str, np.ndarray]:
    """The tensors of a TensorFlow.js weights manifest and its ``.bin`` file(s), dequantised
    to float32 (``q * scale + min`` for uint8/uint16; float16 widened), in face-api's layout.

    Every problem is a one-line :class:`FernoiseError`: no folder, no manifest, a file whose
    sha256 differs from ``sha256``, a manifest that is not a weights manifest, a dtype or
    quantisation this reader does not know, a ``.bin`` shorter or longer than the manifest
    says, a tensor named twice."""
    root = Path(folder)
    manifest_path = _check_faceapi_files(root, manifest_name, sha256)
    try:
        manifest = json.loads(manifest_path.read_text())
        groups = [(list(g["paths"]), list(g["weights"])) for g in manifest]
    except (ValueError, TypeError, KeyError) as e:
        raise FernoiseError(
            f"{manifest_path} is not a TensorFlow.js weights manifest ({type(e).__name__}: {e})"
        ) from None
    tensors: dict[str, np.ndarray] = {}
    for paths, weights in groups:
        data = _group_bytes(root, manifest_path, paths)
        where = f"{', '.join(map(str, paths))}"
        offset = 0
        for w in weights:
            name, shape, quant, qdtype = _weight_entry(manifest_path, w)
            count = math.prod(shape)
            nbytes = count * np.dtype(qdtype).itemsize if quant else count * 4
            if offset + nbytes > len(data):
                raise FernoiseError(
                    f"{where} has {len(data)} bytes but {manifest_path.name} needs more "
                    f"(tensor {name} ends at byte {offset + nbytes}): truncated"
                )
            raw = bytes(data[offset : offset + nbytes])
            offset += nbytes
            value = _dequantise(manifest_path, name, raw, quant, qdtype)
            if name in tensors:
                raise FernoiseError(f"{manifest_path}: tensor {name} is listed twice")
            tensors[name] = value.reshape(shape)
        if offset != len(data):
            raise FernoiseError(
                f"{where} has {len(data)} bytes, {manifest_path.name} accounts for {offset}: "
                "not the file this manifest describes"
            )
    return tensors


def _check_faceapi_files(root: Path, manifest_name: str, sha256: Mapping[str, str] | None) -> Path:
    """The manifest's path in ``root``, after checking the folder, the manifest and (unless
    ``sha256`` is empty) each named file's sha256."""
    if not root.is_dir():
        raise FernoiseError(f"face-api weights folder {root} does not exist or is not a folder")
    manifest_path = root / manifest_name
    if not manifest_path.is_file():
        raise FernoiseError(f"{root} has no {manifest_name} (expected face-api's model folder)")
    if sha256:
        for name, want in sha256.items():
            p = root / name
            if not p.is_file():
                raise FernoiseError(f"{root} has no {name} (expected face-api's model folder)")
            got = _sha256(p)
            if got != want:
                raise FernoiseError(
                    f"{p} has sha256 {got}, expected {want} (npm @vladmandic/face-api 1.7.15); "
                    "the file is truncated, edited or another one"
                )
    return manifest_path


def _group_bytes(root: Path, manifest_path: Path, paths: list[Any]) -> bytearray:
    """The bytes of one weights group's files, in order; each must be a file inside ``root``."""
    data = bytearray()
    for rel in paths:
        p = root / str(rel)
        if Path(str(rel)).is_absolute() or ".." in Path(str(rel)).parts or not p.is_file():
            raise FernoiseError(
                f"{manifest_path} names weights file {rel!r}, which is not in {root}"
            )
        data += p.read_bytes()
    return data


def _weight_entry(
    manifest_path: Path, w: Any
) -> tuple[str, list[int], dict[str, Any] | None, type[np.generic] | None]:
    """``(name, shape, quantization, quantised dtype)`` of one manifest entry: float32 only,
    quantised (if at all) to one of :data:`_QUANT`."""
    try:
        name, shape, dtype = str(w["name"]), [int(s) for s in w["shape"]], str(w["dtype"])
        quant = w.get("quantization")
    except (KeyError, TypeError, ValueError) as e:
        raise FernoiseError(
            f"{manifest_path}: a weights entry lacks name/shape/dtype ({e})"
        ) from None
    if dtype != "float32":
        raise FernoiseError(f"{manifest_path}: tensor {name} has dtype {dtype}, expected float32")
    qdtype = None
    if quant:
        qdtype = _QUANT.get(str(quant.get("dtype")))
        if qdtype is None:
            raise FernoiseError(
                f"{manifest_path}: tensor {name} has quantisation {quant.get('dtype')!r}, "
                f"expected one of {', '.join(_QUANT)}"
            )
    return name, shape, quant, qdtype


def _dequantise(
    manifest_path: Path,
    name: str,
    raw: bytes,
    quant: dict[str, Any] | None,
    qdtype: type[np.generic] | None,
) -> np.ndarray:
    """One tensor's little-endian bytes as a flat float32 array: float32 as stored, float16
    widened, uint8/uint16 as ``q * scale + min`` (float math, float32 store, as tfjs)."""
    if quant and qdtype is np.float16:
        return np.frombuffer(raw, dtype="<f2").astype(np.float32)
    if quant:
        try:
            scale, vmin = float(quant["scale"]), float(quant["min"])
        except (KeyError, TypeError, ValueError):
            raise FernoiseError(
                f"{manifest_path}: tensor {name} is quantised without scale/min"
            ) from None
        q = np.frombuffer(raw, dtype=np.dtype(qdtype).newbyteorder("<"))
        return (q.astype(np.float64) * scale + vmin).astype(np.float32)
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)


def _affine_from_3(
    src: Sequence[Sequence[float]], dst: Sequence[Sequence[float] | np.ndarray]
) -> np.ndarray:
    """The 2x3 matrix mapping the three ``src`` points onto ``dst`` (dlib find_affine_transform)."""
    a = np.array([[x, y, 1.0] for x, y in src], dtype=np.float64)
    b = np.array(dst, dtype=np.float64)
    return np.linalg.solve(a, b).T


def _rotate(center: np.ndarray, p: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    d = p - center
    return np.array([c * d[0] - s * d[1], s * d[0] + c * d[1]]) + center


def _corners(rect: Sequence[float], angle: float) -> dict[str, np.ndarray]:
    left, t, r, b = rect
    cen = np.array([(left + r) / 2.0, (t + b) / 2.0])
    return {
        k: _rotate(cen, np.array(p, dtype=np.float64), angle)
        for k, p in {"tl": (left, t), "tr": (r, t), "bl": (left, b), "br": (r, b)}.items()
    }


def _darea(rect: Sequence[float]) -> float:
    left, t, r, b = rect
    if r < left or b < t:
        return 0.0
    return (r - left + 1) * (b - t + 1)  # dlib drectangle: width = r - l + 1


def _rect_down(rect: Sequence[float]) -> tuple[float, float, float, float]:
    left, t, r, b = rect  # pyramid_down<2>::point_down: p/2 - (1.25, 0.75)
    return (left / 2.0 - 1.25, t / 2.0 - 0.75, r / 2.0 - 1.25, b / 2.0 - 0.75)


def _pyramid_down(img: np.ndarray) -> np.ndarray:
    """dlib's ``pyramid_down<2>`` of an RGB uint8 image: 5-tap [1 4 6 4 1] rows then columns,
    every other sample, integer sums divided by 256 (truncated)."""
    nr, nc = img.shape[:2]
    if nr <= 8 or nc <= 8:
        return np.zeros((0, 0, 3), dtype=np.uint8)
    src = img.astype(np.int64)
    oc = (nc - 3) // 2
    w = (1, 4, 6, 4, 1)
    tmp = w[0] * src[:, 0 : 2 * oc : 2]  # (nr, oc)
    for i in range(1, 5):
        tmp = tmp + w[i] * src[:, i : i + 2 * oc : 2]
    orows = (nr - 3) // 2
    rows = list(range(2, tmp.shape[0] - 2, 2))[:orows]
    out = np.zeros((orows, oc, 3), dtype=np.int64)
    for dr, r in enumerate(rows):
        out[dr] = tmp[r - 2] + 4 * tmp[r - 1] + 6 * tmp[r] + 4 * tmp[r + 1] + tmp[r + 2]
    return (out // 256).astype(np.uint8)


def _bilinear(img: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """dlib ``interpolate_bilinear`` + ``transform_image``: a point whose 2x2 neighbourhood
    leaves the image is black; the value is truncated to uint8."""
    nr, nc = img.shape[:2]
    left, top = np.floor(xs).astype(np.int64), np.floor(ys).astype(np.int64)
    ok = (left >= 0) & (top >= 0) & (left + 1 < nc) & (top + 1 < nr)
    lc, tc = np.clip(left, 0, max(nc - 2, 0)), np.clip(top, 0, max(nr - 2, 0))
    fx, fy = (xs - left)[..., None], (ys - top)[..., None]
    f = img.astype(np.float64)
    tl, tr = f[tc, lc], f[tc, np.minimum(lc + 1, nc - 1)]
    bl, br = (
        f[np.minimum(tc + 1, nr - 1), lc],
        f[np.minimum(tc + 1, nr - 1), np.minimum(lc + 1, nc - 1)],
    )
    v = (1 - fy) * ((1 - fx) * tl + fx * tr) + fy * ((1 - fx) * bl + fx * br)
    v = np.where(ok[..., None], v, 0.0)
    return np.clip(v, 0, 255).astype(np.uint8)  # static_cast<unsigned char>: truncation


def extract_chip(
    img: np.ndarray, rect_ltrb: Sequence[float], angle: float, size: int = CHIP_SIZE
) -> np.ndarray:
    """dlib's ``extract_image_chip(img, chip_details(rect, angle, size x size))`` in numpy, for
    an ``(H, W, 3)`` uint8 RGB image: the same bounding box, the same ``pyramid_down<2>``
    levels when the chip is much smaller than its rectangle, the same bilinear sampling and
    truncation. ``rect_ltrb``/``angle`` are dlib's ``get_face_chip_details(shape, 150,
    0.25)``'s ``rect`` (left, top, right, bottom) and ``angle``."""
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise FernoiseError(
            f"extract_chip takes an (H, W, 3) uint8 RGB image, got {img.shape} {img.dtype}"
        )
    rect = tuple(float(v) for v in rect_ltrb)
    nr, nc = img.shape[:2]
    area = size * size
    # depth of the pyramid and the crop it is built from (dlib's bounding_box)
    depth, grow = 0, 2.0
    r = _rect_down(rect)
    while _darea(r) > area:
        r = _rect_down(r)
        depth += 1
        grow = grow * 2 + 2
    pts = np.array(list(_corners(rect, angle).values()))
    gl, gt = pts[:, 0].min() - grow, pts[:, 1].min() - grow
    gr, gb = pts[:, 0].max() + grow, pts[:, 1].max() + grow
    il, it, ir, ib = max(gl, 0.0), max(gt, 0.0), min(gr, nc - 1.0), min(gb, nr - 1.0)

    def lround(v: float) -> int:  # std::lround: halves away from zero
        return int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)

    bl_, bt_, br_, bb_ = lround(il), lround(it), lround(ir), lround(ib)
    if br_ < bl_ or bb_ < bt_:
        return np.zeros((size, size, 3), dtype=np.uint8)
    base = img[bt_ : bb_ + 1, bl_ : br_ + 1]
    levels: list[np.ndarray] = []
    for _ in range(depth):
        levels.append(_pyramid_down(levels[-1] if levels else base))
    level = -1
    r = (rect[0] - bl_, rect[1] - bt_, rect[2] - bl_, rect[3] - bt_)
    while _darea(_rect_down(r)) > area:
        level += 1
        r = _rect_down(r)
    c = _corners(r, angle)
    m = _affine_from_3([(0, 0), (size - 1, 0), (0, size - 1)], [c["tl"], c["tr"], c["bl"]])
    src = base if level == -1 else levels[level]
    cols, rows = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64))
    xs = m[0, 0] * cols + m[0, 1] * rows + m[0, 2]
    ys = m[1, 0] * cols + m[1, 1] * rows + m[1, 2]
    if src.size == 0:
        return np.zeros((size, size, 3), dtype=np.uint8)
    return _bilinear(src, xs, ys)
