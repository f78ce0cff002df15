"""The parameters of ``fernoise train`` (:class:`TrainConfig`) and the train stage's version.

Torch-free and importing no other stage module: the run index (:mod:`fernoise.runindex`)
keys a finished run by the requested configuration from here, and ``fernoise --help`` and
cache hits never import torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from fernoise.devices import check_device_name
from fernoise.errors import FernoiseError

# The method of `fernoise train` when --method is not given: the paper this toolkit reproduces
# (NCCTFER). A method name outside fernoise/methods/ on purpose (tests/test_method_contract.py
# allows it).
DEFAULT_METHOD = "ncctfer"

VERSION = 1
READS = ("id", "path", "crop_sha256", "split", "label", "label_clean", "is_noisy", "status")
"""The manifest columns train reads: their content digest is the key's manifest input."""
PRECISIONS = ("auto", "fp32", "bf16")


# ----------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class TrainConfig:
    """Parameters of one training run. ``None`` for ``epochs``, ``batch_size``, ``lr_backbone``,
    ``lr_head``, ``weight_decay`` and ``lr_decay`` means the method's official value
    (``Method.optim``); after construction they hold the resolved values."""

    method: str = DEFAULT_METHOD
    """A registered method (``fernoise methods``)."""
    method_params: Any = None
    """The method's ``Params`` (its own flags, e.g. ``--k``, ``--gce-q``), or a dict of its
    fields; None = its defaults."""
    epochs: int | None = None
    """Training epochs."""
    batch_size: int | None = None
    """Samples per batch (per process under torch.distributed)."""
    image_size: int = 224
    """Side of the square training and test images."""
    warmup: int | None = None
    """Epochs of plain cross-entropy on every sample before the method's loss; None = the
    method's (``Method.default_warmup``, shown by ``fernoise methods``): ``min(5, epochs // 3)``
    (5 for the paper's 40 epochs), or 0 for a method whose official code has none."""
    lr_backbone: float | None = None
    """Adam learning rate of the backbone."""
    lr_head: float | None = None
    """Adam learning rate of the method's heads."""
    weight_decay: float | None = None
    """Adam weight decay (L2, as torch.optim.Adam applies it)."""
    lr_decay: float | None = None
    """Per-epoch exponential learning-rate factor (e.g. 0.9); None = the method's (constant for ncctfer)."""
    randaug_magnitude: int = 10
    """RandAugment magnitude (0..30) of the strong view; 2 ops."""
    pretrained: str | None = None
    """Backbone start (the family's ``load_pretrained``): for resnet18 (``fernoise.train.weights``)
    a state dict file (resnet18_msceleb.pth, torchvision resnet18-*.pth, backbone.pt), a
    ``fernoise train`` run folder or its model.pt, a ``fernoise pretrain`` folder, or ``latest``
    (the workspace's latest pretrain); for dlib-resnet29 also face-api's npm tarball or model
    folder (``fernoise.backbones.faceapi_files``); None = random init."""
    pretrained_partial: bool = False
    """Accept a ``pretrained`` file that fills only part of the backbone (the rest stays random)."""
    seed: int = 0
    """Seed of the model init, the data order, the views and the loss's random draws."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    precision: str = "auto"
    """auto (bf16 autocast on CUDA, fp32 on the CPU: see resolve_precision), fp32 or bf16."""
    val_fraction: float = 0.1
    """Stratified share of train rows held out for validation when the manifest has no val rows."""
    workers: int | None = None
    """DataLoader worker processes; None = auto. Does not change results."""
    devices: int = 1
    """Local processes for torch.distributed (``--devices N``); torchrun sets its own."""
    val_clean: bool = False
    """Validate against ``label_clean`` (an oracle-clean validation; needs that column)."""
    max_rows: int | None = None
    """Train on a seeded, stratified subset of this many training-split rows (None = all)."""
    keep_checkpoint: bool = False
    """Keep ``checkpoint.pt`` after the run finishes (it is removed by default)."""
    augment: str = "auto"
    """Where the training views are made: ``device`` (in batches on the training device,
    fernoise/train/augment.py), ``workers`` (per sample in DataLoader workers, fernoise/data.py) or
    ``auto`` (device, on CUDA and on the CPU: ``augment.resolve_augment``)."""
    compile: bool = False
    """``torch.compile`` the model for training (skipped with one warning where unavailable)."""
    backbone: str = "resnet18"
    """The backbone family (``fernoise.backbones``, ``fernoise backbones``): ``resnet18`` or
    ``dlib-resnet29``; enters the key only when not ``resnet18``."""
    record_margins: bool = False
    """Record every training row's margin (logit of its given label minus the largest other
    logit) at every epoch in ``margins.npy`` (``fernoise.train.margins``: the data of the
    area-under-the-margin audit); enters the key only when set."""

    def __post_init__(self) -> None:
        from fernoise import methods

        cls = methods.get(self.method)  # an unknown name lists every method
        self._resolve(cls)
        self._check(cls)

    def _resolve(self, cls) -> None:
        """The method's parameters as its ``Params``; ``None`` fields from its defaults."""
        from fernoise import methods

        if self.method_params is None:
            object.__setattr__(self, "method_params", cls.Params())
        elif isinstance(self.method_params, dict):  # e.g. asdict(cfg) read back from JSON
            object.__setattr__(
                self, "method_params", methods.params_from_dict(self.method, self.method_params)
            )
        elif not isinstance(self.method_params, cls.Params):
            raise FernoiseError(
                f"method_params of {self.method} must be {cls.Params.__name__}, got "
                f"{type(self.method_params).__name__}",
                flag="--method",
            )
        for name in ("epochs", "batch_size", "lr_backbone", "lr_head", "weight_decay"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, getattr(cls.optim, name))
        if self.lr_decay is None:
            object.__setattr__(self, "lr_decay", cls.optim.lr_decay)
        if self.warmup is None and isinstance(self.epochs, int):
            object.__setattr__(self, "warmup", cls.default_warmup(self.epochs))

    def _check(self, cls) -> None:
        """Every value in its range; a FernoiseError naming the flag otherwise."""
        # _resolve filled them from the method's defaults
        assert self.epochs is not None and self.batch_size is not None
        assert self.warmup is not None and self.weight_decay is not None
        for name, flag in (
            ("epochs", "--epochs"),
            ("batch_size", "--batch-size"),
            ("devices", "--devices"),
        ):
            if getattr(self, name) < 1:
                raise FernoiseError(f"expected at least 1, got {getattr(self, name)}", flag=flag)
        if self.batch_size < 2:
            views = (
                f"; {self.method} needs {len(cls.views)} views per sample ({', '.join(cls.views)})"
                if len(cls.views) > 1
                else ""
            )
            raise FernoiseError(
                f"expected at least 2, got {self.batch_size} (BatchNorm and the per-batch statistics "
                f"need a batch{views})",
                flag="--batch-size",
            )
        if not 16 <= self.image_size <= 1024:  # 1024: over 4x the 224 px ResNet-18 was made for
            raise FernoiseError(f"expected 16..1024 px, got {self.image_size}", flag="--image-size")
        from fernoise import backbones

        backbones.check_image_size(self.backbone, self.image_size)  # an unknown name lists them
        if (
            self.devices > 1024
        ):  # above any one launch; a typo (10000) is refused before spawning anything
            raise FernoiseError(
                f"expected at most 1024 devices, got {self.devices}", flag="--devices"
            )
        if not 0 <= self.warmup <= self.epochs:
            raise FernoiseError(
                f"expected 0..{self.epochs} (--epochs), got {self.warmup}; lower --warmup or raise --epochs",
                flag="--warmup",
            )
        for name, flag in (("lr_backbone", "--lr-backbone"), ("lr_head", "--lr-head")):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise FernoiseError(f"expected a positive learning rate, got {v}", flag=flag)
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise FernoiseError(
                f"expected 0 or more, got {self.weight_decay}", flag="--weight-decay"
            )
        if self.lr_decay is not None and not 0 < self.lr_decay <= 1:
            raise FernoiseError(
                f"expected a factor in (0, 1], got {self.lr_decay}", flag="--lr-decay"
            )
        if not 0 <= self.randaug_magnitude <= 30:
            raise FernoiseError(
                f"expected 0..30, got {self.randaug_magnitude}", flag="--randaug-magnitude"
            )
        if self.precision not in PRECISIONS:
            raise FernoiseError(
                f"expected one of {', '.join(PRECISIONS)}, got {self.precision!r}",
                flag="--precision",
            )
        if not 0 <= self.val_fraction < 1:
            raise FernoiseError(
                f"expected a fraction in [0, 1), got {self.val_fraction}", flag="--val-fraction"
            )
        if self.workers is not None and self.workers < 0:
            raise FernoiseError(f"expected 0 or more, got {self.workers}", flag="--workers")
        if self.augment not in ("auto", "device", "workers"):
            raise FernoiseError(
                f"expected one of auto, device, workers, got {self.augment!r}", flag="--augment"
            )
        if self.max_rows is not None and self.max_rows < 2:
            raise FernoiseError(f"expected at least 2 rows, got {self.max_rows}", flag="--max-rows")
        if self.pretrained_partial and not self.pretrained:
            raise FernoiseError(
                "has no effect without --pretrained; pass the file too, or drop it",
                flag="--pretrained-partial",
            )
        check_device_name(self.device)

    def method_params_dict(self) -> dict[str, Any]:
        """``method_params`` as a plain dict (config.json, the key)."""
        return asdict(self.method_params)


def default_warmup(epochs: int, method: str = DEFAULT_METHOD) -> int:
    """The warm-up of ``method`` when ``--warmup`` is not given (``Method.default_warmup``):
    ``min(5, epochs // 3)``, or 0 for a method whose official code has none."""
    from fernoise import methods

    return methods.get(method).default_warmup(epochs)


def resolve_precision(precision: str, device: str) -> str:
    """auto: bf16 autocast on CUDA, fp32 on the CPU.

    Measured on the project's 2-core AVX512-BF16 machine (ResNet-18 train step, 64 px, batch
    128, channels_last, shared with other trainers; bench/train.py and alternating runs):
    fp32 102-103 img/s vs bf16 12 img/s with passive OpenMP waits, 26-39 vs 9 with active
    ones; bf16 won only one early, quieter sample (288 vs 169). bf16 autocast adds many small
    cast kernels, each a synchronisation point that a loaded CPU makes expensive.
    On the same machine when quiet, bf16 is faster: 283-348 vs 184-207 img/s (the lead's
    step-only check). fp32 stays the CPU default because its worst case is 1.7x slower and
    bf16's is 8x; pass ``--precision bf16`` on a CPU you have to yourself.
    """
    if precision != "auto":
        return precision
    return "bf16" if device.startswith("cuda") else "fp32"
