"""Self-supervised pieces for `fernoise pretrain`: face-safe batched views, projector and
predictor heads, the NT-Xent (SimCLR) and BYOL losses, the BYOL momentum schedule, and a
leave-one-out k-NN probe. Pure functions of tensors; every random draw comes from a
``torch.Generator`` passed in.

Views (on uint8 ``(N, H, W, 3)`` batches, on any device, one random draw per sample):
random resized crop with a high minimum scale (faces stay faces: default area 0.6-1.0, aspect
3/4-4/3), horizontal flip p=0.5, colour jitter p=0.8 (brightness, contrast, saturation 0.4,
hue 0.1), greyscale p=0.2. No vertical flip. The crop is a per-sample affine grid sampled
bilinearly (one ``grid_sample`` for the whole batch), which is why no augmentation library is
used: torchvision's v2 transforms draw one set of parameters per call, so per-sample views
would need a Python loop per image. Hue is rotated in YIQ space (a linear approximation of
torchvision's HSV hue shift, exact at hue 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fernoise.images import MEAN, STD


@dataclass(frozen=True)
class ViewParams:
    """Face-safe SSL augmentation strengths (SimCLR's, with a higher minimum crop scale)."""

    min_scale: float = 0.6
    flip: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grey_p: float = 0.2


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma of ``(N, 3, H, W)`` in [0, 1], as ``(N, 1, H, W)``."""
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def ssl_views(
    images: torch.Tensor,
    size: int,
    p: ViewParams,
    gen: torch.Generator,
    mean: tuple[float, ...] = MEAN,
    std: tuple[float, ...] = STD,
) -> torch.Tensor:
    """One augmented view per sample: uint8 ``(N, H, W, 3)`` -> normalised float ``(N, 3, size, size)``
    (``(x - mean) / std`` on the 0..1 scale: ImageNet's unless the backbone's are given).

    Every random parameter is drawn on the CPU from ``gen`` (so a view depends only on the
    generator's state, not on the device) and then moved to ``images.device``.
    """
    n = images.shape[0]
    dev = images.device
    x = images.permute(0, 3, 1, 2).float().div_(255)
    # Random resized crop: area fraction s in [min_scale, 1], log-uniform aspect r in [3/4, 4/3];
    # half-widths in normalised coordinates, clamped into the image, centre uniform in what is left.
    s = _uniform(n, p.min_scale, 1.0, gen)
    log_r = _uniform(n, math.log(3 / 4), math.log(4 / 3), gen)
    r = torch.exp(log_r)
    w = torch.sqrt(s * r).clamp(max=1.0)
    h = torch.sqrt(s / r).clamp(max=1.0)
    cx = (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * (1 - h)
    flip = torch.rand(n, generator=gen) < p.flip
    sx = torch.where(flip, -w, w)
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 2] = sx, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta.float().to(dev), [n, 3, size, size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    # Colour jitter (p = jitter_p), in torchvision's order brightness, contrast, saturation, hue.
    jit = (torch.rand(n, generator=gen) < p.jitter_p).to(dev).view(n, 1, 1, 1)
    b = _uniform(n, 1 - p.brightness, 1 + p.brightness, gen).float().to(dev).view(n, 1, 1, 1)
    c = _uniform(n, 1 - p.contrast, 1 + p.contrast, gen).float().to(dev).view(n, 1, 1, 1)
    sat = _uniform(n, 1 - p.saturation, 1 + p.saturation, gen).float().to(dev).view(n, 1, 1, 1)
    hue = _uniform(n, -p.hue, p.hue, gen).float().to(dev)
    y = (x * b).clamp(0, 1)
    level = _grey(y).mean(dim=(1, 2, 3), keepdim=True)
    y = ((y - level) * c + level).clamp(0, 1)
    g = _grey(y)
    y = ((y - g) * sat + g).clamp(0, 1)
    y = _hue_shift(y, hue).clamp(0, 1)
    x = torch.where(jit, y, x)
    grey = (torch.rand(n, generator=gen) < p.grey_p).to(dev).view(n, 1, 1, 1)
    x = torch.where(grey, _grey(x).expand_as(x), x)
    m = torch.tensor(mean, device=dev).view(1, 3, 1, 1)
    sd = torch.tensor(std, device=dev).view(1, 3, 1, 1)
    return ((x - m) / sd).contiguous(memory_format=torch.channels_last)


_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _hue_shift(x: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """Rotate the chroma of ``(N, 3, H, W)`` by ``hue * 2 pi`` radians in YIQ space."""
    m = _RGB2YIQ.to(x.device)
    inv = torch.linalg.inv(m)
    yiq = torch.einsum("ij,njhw->nihw", m, x)
    a = hue * 2 * math.pi
    cos, sin = torch.cos(a).view(-1, 1, 1), torch.sin(a).view(-1, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], dim=1)
    return torch.einsum("ij,njhw->nihw", inv, yiq)


# ----------------------------------------------------------------------------- heads
def mlp(dim_in: int, hidden: int, dim_out: int) -> nn.Sequential:
    """Linear -> BatchNorm1d -> ReLU -> Linear (SimCLR v2 / BYOL projector and predictor shape)."""
    return nn.Sequential(
        nn.Linear(dim_in, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, dim_out),
    )


class OnlineNet(nn.Module):
    """The online network's forward as one module call, which DistributedDataParallel needs to
    average the gradients: ``online["backbone"]`` -> ``["projector"]`` (-> ``["predictor"]`` for
    BYOL). Returns (projections, predictions or None). Holds ``online``; adds no parameters."""

    def __init__(self, online: nn.ModuleDict):
        super().__init__()
        self.online = online

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        z = self.online["projector"](self.online["backbone"](x))
        q = self.online["predictor"](z) if "predictor" in self.online else None
        return z, q


# ----------------------------------------------------------------------------- losses
def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's NT-Xent: for each of the 2N projections, cross-entropy of its positive (the
    other view of the same image) against the 2N - 2 other projections, cosine similarity
    divided by ``temperature``; mean over the 2N anchors. ``z1``, ``z2``: ``(N, D)``."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = z @ z.t() / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def byol_loss(
    p1: torch.Tensor, p2: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor
) -> torch.Tensor:
    """BYOL's symmetric loss: ``(2 - 2 cos(p1, t2)) + (2 - 2 cos(p2, t1))``, mean over the
    batch; ``p`` are the online predictions, ``t`` the target projections (no gradient)."""

    def one(p, t):
        return 2 - 2 * (F.normalize(p.float(), dim=1) * F.normalize(t.detach().float(), dim=1)).sum(
            dim=1
        )

    return (one(p1, t2) + one(p2, t1)).mean()


def byol_momentum(step: int, total: int, base: float = 0.996) -> float:
    """BYOL's cosine schedule: ``1 - (1 - base) (cos(pi step / total) + 1) / 2``: ``base`` at
    the first step, 1 at the last."""
    if total <= 0:
        return 1.0
    return 1 - (1 - base) * (math.cos(math.pi * min(step, total) / total) + 1) / 2


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """``target <- tau * target + (1 - tau) * online`` for parameters; buffers are copied."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.mul_(tau).add_(o.detach(), alpha=1 - tau)
    for tb, ob in zip(target.buffers(), online.buffers(), strict=True):
        tb.copy_(ob)


def knn_accuracy(features: torch.Tensor, labels: torch.Tensor, k: int = 20) -> float:
    """Leave-one-out k-NN accuracy: each sample is classified by the majority label of its
    ``k`` most cosine-similar *other* samples (ties to the lower class index). Uses only the
    labels of the probe rows themselves; nothing is trained on them."""
    n = features.shape[0]
    if n < 2:
        return float("nan")
    f = F.normalize(features.float(), dim=1)
    k = min(k, n - 1)
    num_classes = int(labels.max()) + 1
    correct = 0
    for start in range(0, n, 1024):
        sim = f[start : start + 1024] @ f.t()
        rows = torch.arange(start, min(start + 1024, n))
        sim[torch.arange(len(rows)), rows] = float("-inf")
        idx = sim.topk(k, dim=1).indices
        votes = F.one_hot(labels[idx], num_classes).sum(dim=1)
        correct += int((votes.argmax(dim=1) == labels[rows]).sum())
    return correct / n
