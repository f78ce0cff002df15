"""EAC, Erasing Attention Consistency (Zhang et al., ECCV 2022), as its official code computes it.

Source: zyh-uaiaaaa/Erasing-Attention-Consistency ``src/model.py``, ``src/loss.py``,
``src/main.py``, ``src/dataset.py`` (read, not copied). Shapes: ``N`` samples, ``C`` classes,
``F`` the last convolutional map ``(N, 512, h, w)`` (ResNet-18 here; the code uses ResNet-50).

- Views: ``x1`` = image (+ Gaussian noise with p=0.5) then RandomErasing; ``x2`` = the
  horizontal flip of the image then its own RandomErasing (``fernoise.views``).
- CAMs (:func:`class_activation_maps`): ``H_k = sum_c W[k, c] F_c`` with the classifier
  weights ``W`` detached (``.data`` in the code), ``F`` not: ``(N, C, h, w)``.
- ``L = CE(logits(x1), y) + lam * MSE(H(x1), flip(H(x2)))`` (:func:`flip_consistency`),
  ``lam`` 5, MSE averaged over all ``N C h w`` values; CE on ``x1`` only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
