"""Grad-CAM (Selvaraju et al., 2017) of the last backbone stage, and the grid of Figure 8.

The map of a face is ``relu(sum_k w_k A_k)`` where ``A`` ``(512, h, w)`` is the output of
``backbone.layer4`` and ``w_k`` the spatial mean of the gradient of the predicted class's
test-time logit (the method's, e.g. ``pcc``) with respect to ``A_k``; it is upsampled bilinearly to the face size and scaled
to [0, 1] per face. With small inputs layer4 is coarse (2x2 at 48 px, 1x1 at 32 px), so the
map is coarse too.
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

    from fernoise.images import to_tensor

    layer = model.backbone.layer4
    store: dict[str, torch.Tensor] = {}

    def hook(_m, _i, out):
        store["act"] = out
        out.register_hook(lambda g: store.__setitem__("grad", g))

    handle = layer.register_forward_hook(hook)
    try:
        model.eval()
        x = to_tensor(images, device)
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
    cam = torch.where(hi - lo > 1e-12, (cam - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(cam))
    probs = torch.softmax(logits.detach().float(), dim=1)
    return cam.cpu().numpy(), probs.cpu().numpy()


def gradcam_grid(model, images: np.ndarray, labels: Sequence[int], classes: Sequence[str],
                 path: str | os.PathLike, *, device: str = "cpu", cols: int | None = None) -> Path:
    """A grid PNG: each face with its Grad-CAM overlaid, then true label, prediction, probability.

    The caption is green when the prediction is right and red when wrong.
    """
    from fernoise.plots import _figure, _save

    cams, probs = gradcam(model, images, device=device)
    n = len(images)
    cols = cols or min(n, 4)
    rows = math.ceil(n / cols)
    fig = _figure(2.4 * cols, 2.9 * rows, layout=None)
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(images[i])
        ax.imshow(cams[i], cmap="jet", alpha=0.4, vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        p = int(probs[i].argmax())
        t = int(labels[i])
        ax.set_xlabel(f"true: {classes[t]}\npred: {classes[p]} ({probs[i, p]:.2f})", fontsize=9,
                      color="darkgreen" if p == t else "firebrick")
    fig.suptitle("Grad-CAM of backbone.layer4 (predicted class)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
