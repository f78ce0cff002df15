"""Grad-CAM (Selvaraju et al., 2017) of the last backbone stage, and the grid of Figure 8.

The map of a face is ``relu(sum_k w_k A_k)`` where ``A`` ``(512, h, w)`` is the output of
``backbone.cam_layer`` (ResNet-18: ``layer4``; dlib-resnet29: its last block) and ``w_k`` the spatial mean of the gradient of the predicted class's
test-time logit (the method's, e.g. ``pcc``) with respect to ``A_k``; it is upsampled bilinearly to the face size and scaled
to [0, 1] per face. With small inputs layer4 is coarse (2x2 at 48 px, 1x1 at 32 px), so the
map is coarse too: below 112 px the grid and ``fernoise eval`` say so. :func:`gradcam` is the
model side; :func:`gradcam_grid` draws from its arrays and takes no model.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def gradcam(model, images: np.ndarray, *, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM maps ``(N, H, W)`` in [0, 1] and softmax probabilities ``(N, C)``.

    ``images``: uint8 ``(N, H, W, 3)``. The target of each face is its predicted class.
    """
    import torch
    import torch.nn.functional as F

    from fernoise.images import normalisation_of, to_tensor

    layer = model.backbone.cam_layer  # ResNet-18: layer4
    store: dict[str, torch.Tensor] = {}

    def hook(_m, _i, out):
        store["act"] = out
        out.register_hook(lambda g: store.__setitem__("grad", g))

    handle = layer.register_forward_hook(hook)
    try:
        model.eval()
        x = to_tensor(images, device, *normalisation_of(model))
        with torch.enable_grad():
            logits = model(x)  # a fernoise.model.Classifier: the method's test-time logits
            pred = logits.argmax(dim=1)
            model.zero_grad(set_to_none=True)
            logits.gather(1, pred[:, None]).sum().backward()
        act, grad = store["act"].detach(), store["grad"].detach()
    finally:
        handle.remove()
    w = grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((w * act).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=images.shape[1:3], mode="bilinear", align_corners=False)[:, 0]
    lo = cam.amin(dim=(1, 2), keepdim=True)
    hi = cam.amax(dim=(1, 2), keepdim=True)
    cam = torch.where(
        hi - lo > 1e-12, (cam - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(cam)
    )
    probs = torch.softmax(logits.detach().float(), dim=1)
    return cam.cpu().numpy(), probs.cpu().numpy()


def gradcam_grid(
    images: np.ndarray,
    cams: np.ndarray,
    probs: np.ndarray,
    labels: Sequence[int],
    classes: Sequence[str],
    path: str | os.PathLike,
    *,
    cols: int | None = None,
    layer: str = "backbone.layer4",
    cells: int | None = None,
) -> Path:
    """:func:`gradcam_figure` written to ``path``."""
    from fernoise.evaluate.plots import _save

    fig = gradcam_figure(images, cams, probs, labels, classes, cols=cols, layer=layer, cells=cells)
    return _save(fig, path)


def gradcam_figure(
    images: np.ndarray,
    cams: np.ndarray,
    probs: np.ndarray,
    labels: Sequence[int],
    classes: Sequence[str],
    *,
    cols: int | None = None,
    layer: str = "backbone.layer4",
    cells: int | None = None,
):
    """A grid PNG: each face with its Grad-CAM overlaid, then true label, prediction, probability.

    Data only (no model): ``images`` uint8 ``(N, H, W, 3)``, ``cams`` ``(N, H, W)`` in [0, 1] and
    ``probs`` ``(N, C)`` as :func:`gradcam` returns them, ``labels`` ``(N,)`` true class indices.
    The caption is green when the prediction is right and red when wrong. Below 112 px the
    title says that the last layer is too coarse for the map to mean much, and whenever the
    hooked ``layer``'s map is under 4x4 ``cells`` (:func:`cam_layer_of` gives both).
    """
    from fernoise.evaluate.plots import _figure, gradcam_coarse_note, gradcam_is_coarse

    images, cams, probs = np.asarray(images), np.asarray(cams), np.asarray(probs)
    n = len(images)
    if not (len(cams) == len(probs) == len(labels) == n):
        raise ValueError(
            f"images, cams, probs and labels differ in length: {n}, {len(cams)}, {len(probs)}, {len(labels)}"
        )
    cols = cols or min(n, 4)
    rows = math.ceil(n / cols)
    size = int(images.shape[1])
    coarse = gradcam_is_coarse(size, cells)
    fig = _figure(2.4 * cols, 3.0 * rows + (0.5 if coarse else 0))
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(images[i])
        ax.imshow(cams[i], cmap="jet", alpha=0.4, vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        p = int(probs[i].argmax())
        t = int(labels[i])
        ax.set_xlabel(
            f"true: {classes[t]}\npred: {classes[p]} ({probs[i, p]:.2f})",
            fontsize=9,
            color="darkgreen" if p == t else "firebrick",
        )
    title = f"Grad-CAM of {layer} (predicted class)"
    if coarse:
        import textwrap

        title += "\n" + "\n".join(
            textwrap.wrap(
                "Caution: " + gradcam_coarse_note(size, cells, layer),
                width=int(18 * cols),
                break_on_hyphens=False,
            )
        )
    fig.suptitle(title, fontsize=10, color="firebrick" if coarse else "black")
    return fig


def cam_layer_of(model, size: int) -> tuple[str, int]:
    """``(name, cells)`` of the layer :func:`gradcam` hooks in a ``fernoise.model.Classifier``:
    its module name (``backbone.layer4`` on ResNet-18) and its map's side at ``size`` px."""
    from fernoise import backbones

    b = model.backbone
    name = next(n for n, m in b.named_modules() if m is b.cam_layer)
    card = backbones.get(getattr(model.net, "backbone_name", backbones.DEFAULT))
    return f"backbone.{name}", card.map_size(size)
