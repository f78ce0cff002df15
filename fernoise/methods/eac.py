"""EAC, Erasing Attention Consistency (Zhang et al., ECCV 2022), as its official code computes it.

Source: zyh-uaiaaaa/Erasing-Attention-Consistency ``src/model.py``, ``src/loss.py``,
``src/main.py``, ``src/dataset.py`` (read, not copied). Shapes: ``N`` samples, ``C`` classes,
``F`` the last convolutional map ``(N, 512, h, w)`` (ResNet-18 here; the code uses ResNet-50).

- Views: ``x1`` = image (+ Gaussian noise with p=0.5) then RandomErasing; ``x2`` = the
  horizontal flip of the image then its own RandomErasing (``fernoise.methods.views``).
- CAMs (:func:`class_activation_maps`): ``H_k = sum_c W[k, c] F_c`` with the classifier
  weights ``W`` detached (``.data`` in the code), ``F`` not: ``(N, C, h, w)``.
- ``L = CE(logits(x1), y) + lam * MSE(H(x1), flip(H(x2)))`` (:func:`flip_consistency`),
  ``lam`` 5, MSE averaged over all ``N C h w`` values; CE on ``x1`` only.

Choices: ``x1`` and ``x2`` go through the network in two passes, as the code does (two
BatchNorm batches). The flip is ``torch.flip`` where the code uses ``grid_sample`` on a
mirrored grid (the same values, checked in the tests; the code's grid divides by ``w - 1``
and fails on a 1-px-wide map, ``torch.flip`` does not). The optimiser defaults are the
README's advice for ResNet-18 (Adam 2e-4; the code's 1e-4 is for its ResNet-50), weight decay
1e-4, x0.9 per epoch, 60 epochs, batch 32. The code has no warm-up; with ``--warmup`` > 0 the
warm-up epochs train CE on ``x1`` only. At small images the map is tiny (2 x 2 at 48 px,
4 x 4 at 112, 7 x 7 at the code's 224 on ResNet-18; 1 x 1 below 135 px on dlib-resnet29,
where flipping the map changes nothing and the term only compares the two views' class
scores): a warning says the map's size and the image size once per run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fernoise.methods._registry import register
from fernoise.methods.base import LossOut, Method, OptimDefaults, check_range, option

if TYPE_CHECKING:
    from torch import Tensor


def class_activation_maps(fmap: Tensor, weight: Tensor) -> Tensor:
    """``(N, c, h, w)`` feature map and ``(C, c)`` classifier weight -> ``(N, C, h, w)`` CAMs,
    ``H[n, k] = sum_c weight[k, c] * fmap[n, c]``; no gradient reaches ``weight``."""
    import torch

    return torch.einsum("nchw,kc->nkhw", fmap.float(), weight.detach().float())


def flip_consistency(cam1: Tensor, cam2: Tensor) -> Tensor:
    """``mean((cam1 - flip_w(cam2))^2)`` over every value: EAC's ACLoss.

    The code flips ``cam2`` with ``grid_sample`` on a negated x grid (bilinear,
    ``align_corners=True``), which samples exactly the mirrored pixel centres: the same as
    ``torch.flip`` on the width (tests/test_methods_peers.py checks it), which is used here.
    """
    import torch.nn.functional as F

    return F.mse_loss(cam1.float(), cam2.float().flip(-1))


# ----------------------------------------------------------------------------- the method
@dataclass(frozen=True)
class EACParams:
    lam: float = option(
        5.0, "--eac-lam", "Weight of the flip attention consistency (MSE of the CAMs)."
    )

    def __post_init__(self) -> None:
        check_range(self.lam, 0, None, "--eac-lam")


@register
class EAC(Method):
    """Erasing Attention Consistency: ``L = CE(logits(x1), y) + lam * MSE(H(x1), flip(H(x2)))``
    with CAMs ``H`` from the last map and the detached classifier weights. See the module
    docstring for the views and the choices."""

    name = "eac"
    summary = "Erasing Attention Consistency: CE + flip consistency of class activation maps"
    source = "Zhang et al., ECCV 2022"
    repo = "zyh-uaiaaaa/Erasing-Attention-Consistency src/main.py"
    face_pretrained = True
    Params = EACParams
    views = ("eac1", "eac2")
    optim = OptimDefaults(
        lr_backbone=2e-4, lr_head=2e-4, weight_decay=1e-4, lr_decay=0.9, epochs=60, batch_size=32
    )
    parts = ("s", "flip")
    warmup = 0  # src/main.py trains the EAC loss from the first epoch

    def __init__(self, params=None, *, num_classes: int, n_rows: int, image_size: int = 224):
        super().__init__(params, num_classes=num_classes, n_rows=n_rows, image_size=image_size)
        self._warned = False

    def _check_map(self, h: int, w: int) -> None:
        if self._warned:
            return
        self._warned = True
        if min(h, w) < 4:
            self.warn(
                f"eac: the attention maps are {h}x{w} at --image-size {self.image_size} "
                "(7x7 at the paper's 224 px on ResNet-18); the flip consistency has little to act "
                "on: train at a larger --image-size (the map sizes of each backbone: "
                "docs/backbones.md)"
            )

    def loss(self, model, views, y, idx, *, epoch, warm, gen) -> LossOut:
        from fernoise.methods import losses

        if warm:
            return self.warmup_loss(model, views, y)
        fmap1 = model.feature_map(views["eac1"])
        fmap2 = model.feature_map(views["eac2"])
        self._check_map(*fmap1.shape[-2:])
        logits = model.pcc(model.pool(fmap1)).float()
        ce = losses.cross_entropy(logits, y)
        weight = model.pcc.weight
        flip = flip_consistency(
            class_activation_maps(fmap1, weight), class_activation_maps(fmap2, weight)
        )
        return LossOut(ce + self.params.lam * flip, {"s": ce, "flip": flip}, logits)
