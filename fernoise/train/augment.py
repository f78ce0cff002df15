"""Training views made in batches on the training device (``--augment device``).

The worker path (fernoise/data.py) makes each sample's views in a DataLoader worker from a
per-sample numpy generator seeded by (seed, epoch, sample). This module makes the *same*
views for a whole batch with tensor ops on the device, through the one view registry
(``fernoise/methods/views.py``: every view's ``draw`` and ``batch`` beside its ``sample``):

- the random draws are the worker path's, in the same order, from the same per-sample
  generators (``views.draw_views``): a few numbers per sample, cheap on the CPU;
- each view is made for the whole batch at once (``views.batch_views``): the weak view is one
  gather, RandAugment groups the batch by (op, sign) and applies torchvision's own tensor op
  to each group, the methods' views are batched ``torch.where`` / arithmetic; the Gaussian
  noise field is the one value that differs from the worker path (equal in distribution, see
  views.py);
- the images come from the uint8 array cache: copied to the device once when they fit in
  ``memory_share`` of its free memory, else each batch is gathered on the CPU into pinned
  memory and copied without blocking (:class:`DeviceImages`).

``--augment device`` and ``--augment workers`` are two paths of the key (the key records
which ran, since the noise values differ and op implementations on other devices may round
differently).
"""

from __future__ import annotations

import numpy as np
import torch

from fernoise.methods import views as _views

# The batched ops, importable from here as before (they live with their views).
from fernoise.methods.views import (  # noqa: F401
    Draws,
    RandAugment,
    ViewDraws,
    ViewEnv,
    _hash32,
    method_view_batch,
    noise_field,
    randaug_batch,
    weak_batch,
)

AUGMENT = ("auto", "device", "workers")


class DeviceImages:
    """The uint8 array cache, served by row positions as ``(B, H, W, 3)`` uint8 on ``device``.

    On CUDA: held whole on the device when it takes at most ``memory_share`` of the device's
    free memory, otherwise gathered per batch into pinned memory and copied with
    ``non_blocking=True``. On the CPU: gathered per batch from the (memory-mapped) array.
    """

    def __init__(self, images: np.ndarray, device: torch.device, *, memory_share: float = 0.5):
        self.images = images
        self.device = device
        self.resident = None
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if images.nbytes <= memory_share * free:
                self.resident = torch.from_numpy(np.ascontiguousarray(images)).to(device)

    def __call__(self, positions: np.ndarray) -> torch.Tensor:
        if self.resident is not None:
            return self.resident[torch.from_numpy(np.asarray(positions)).to(self.resident.device)]
        batch = torch.from_numpy(np.ascontiguousarray(self.images[np.asarray(positions)]))
        if self.device.type != "cuda":
            return batch
        return batch.pin_memory().to(self.device, non_blocking=True)


class DeviceViews:
    """The views of a batch made on the device: the batched twin of ``data.ViewBatches``
    (same draws; same pixels except the noise field, see ``fernoise/methods/views.py``).

    ``views(positions, seeds, names)`` -> ``{name: uint8 (B, 3, H, W)}`` on ``device``; the
    draws can be made ahead (:meth:`draws`, CPU only, e.g. in a thread) and passed in.
    """

    def __init__(
        self,
        images: np.ndarray,
        size: int,
        randaug_magnitude: int,
        device: torch.device,
        *,
        memory_share: float = 0.5,
    ):
        self.images = DeviceImages(images, device, memory_share=memory_share)
        self.size = size
        self.env = ViewEnv(size, RandAugment(size, randaug_magnitude))

    def draws(self, seeds: np.ndarray, names) -> dict:
        return _views.draw_views(seeds, names, self.env)

    def __call__(
        self, positions: np.ndarray, seeds: np.ndarray, names, draws: dict | None = None
    ) -> dict:
        d = draws if draws is not None else self.draws(seeds, names)
        return _views.batch_views(self.images(positions), d, names, self.env)


def resolve_augment(augment: str, device: str) -> str:
    """auto: ``device`` on CUDA (the GPU would wait on CPU workers) and on the CPU too:
    bench/train.py on the project's 2-core CPU, quiet (2026-12-02, 64 px, end to end): ce 157 vs
    139 samples/s (1.13x), ncctfer 156 vs 150 (1.04x); an earlier quiet round 1.08x / 0.99x,
    and 1.11x / 1.50x under load: DataLoader workers take cores from the step, the batched views
    cost less than the per-sample ones. ``workers`` stays available: its runs keep the keys
    they had before ``--augment`` existed."""
    if augment not in AUGMENT:
        from fernoise.errors import FernoiseError

        raise FernoiseError(
            f"expected one of {', '.join(AUGMENT)}, got {augment!r}", flag="--augment"
        )
    if augment != "auto":
        return augment
    return "device"
