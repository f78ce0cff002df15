"""``dividemix``: DivideMix (Li, Socher, Hoi, ICLR 2020), two networks that divide the rows
for each other with a Gaussian mixture on their losses and train semi-supervised (MixMatch).

As the official code runs it (LiJunnan1992/DivideMix ``Train_cifar.py``,
``dataloader_cifar.py``; docs/methods.md):

- Two networks of one architecture, initialised independently: network 1 is ``backbone`` +
  ``pcc``, network 2 is ``backbone2`` + ``pcc2``; one SGD over both (lr 0.02, momentum 0.9,
  weight decay 5e-4): SGD is per parameter and a phase leaves the other network without
  gradients (skipped by ``step``), so this is the official two optimisers. The lr falls to a
  tenth halfway: official epoch ``>= 150`` of ``num_epochs`` 300 (301 epochs, 0 .. 300);
  fernoise's epoch e is the official e - 1, so with ``--epochs E`` (``num_epochs = E - 1``)
  the lr is divided from ``e - 1 >= (E - 1) / 2`` on (``--epochs 301`` is the official run).
- Warm-up (``warmup``): network 1 a pass of plain cross-entropy over every row, then network 2
  a pass of its own shuffle (two phases, ``epoch_phases``). Official: 10 of 300 epochs
  (CIFAR-10); here ``ceil(10 * (E - 1) / 300)``, at least 1 (2 for the default 40 epochs,
  the official 10 for 301). The asymmetric-noise confidence penalty is left out.
- Before every later epoch (``start_epoch``), per network: the cross-entropy of every training
  row, un-augmented, eval mode; min-max normalised over all rows; ``GaussianMixture(2,
  max_iter=10, tol=1e-2, reg_covar=5e-4)``; the clean probability ``w`` = the posterior of the
  component with the smaller mean; labelled = ``w > p_threshold``. ``--dividemix-gmm global``
  is the official single mixture; the default ``per-class`` fits one mixture per given label
  (on the same globally normalised losses; a class of fewer than 2 rows takes the global
  mixture's posterior): FER's rare classes (fear, disgust) have large losses as a whole and a
  global mixture puts them nearly entirely into the unlabelled set, where their labels are
  lost. The mixtures' seeds are fixed by (seed, epoch, network, class), so a resumed run
  divides as the uninterrupted one (the official code draws from numpy's global state). The
  official 5-epoch loss average at 90% noise is not done (the noise rate is unknown here).
- Co-divide, two phases per epoch: network 1 trains on network 2's division (streams ``x1``
  labelled, leading, and ``u1`` unlabelled, cycled), then network 2 on network 1's (``x2``,
  ``u2``). Per batch (``--batch-size`` labelled + as many unlabelled rows, two weak views of
  each): the other network in eval mode, the trained one in train mode (its no-grad forwards
  update its BatchNorm statistics, as the official ones do, in the official order);
  co-guessing ``q = mean softmax`` of both networks on both unlabelled views, co-refinement
  ``p = w * onehot(y) + (1 - w) * mean softmax`` of the trained network on both labelled views,
  both sharpened ``x^(1/T) / sum``; MixMatch ``l ~ Beta(alpha, alpha)``, ``l = max(l, 1 - l)``,
  inputs and targets of ``[x1, x2, u1, u2]`` mixed with a random permutation, one forward;
  ``Lx = -mean(sum t log_softmax)`` (labelled part), ``Lu = mean((softmax - t)^2)``
  (unlabelled part), ``lambda_u`` ramped linearly ``clip((e - 1 + i / num_iter - warm_up) /
  rampup, 0, 1)`` (``num_iter = len(labelled) // batch + 1``, ``i`` the phase's batch), and
  the penalty ``sum(prior * log(prior / mean softmax))``: uniform prior (official) or
  ``--dividemix-prior marginal``, the training labels' class frequencies (a class without rows
  adds 0). The ramp's length: official 16 of 300 epochs, here ``ceil(16 * (E - 1) / 300)``
  unless ``--dividemix-rampup`` (3 for 40 epochs, the official 16 for 301).
- Test time: the argmax of the sum of both networks' logits (``logits``).
- Logged: ``loss_x``, ``loss_u``, ``loss_penalty`` (train accuracy: the trained network on the
  first labelled view); ``confident_*``: network 1's division (``w1 > p_threshold``) against
  the known-clean rows, per epoch (``epoch_selection``).

Where fernoise differs: one ``--batch-size`` (default the official 64) serves the warm-up too
(official 128 there); a final labelled batch of one row is dropped (fernoise's batches; the
official loader keeps it); a phase whose unlabelled set has fewer than 2 rows trains on the
labelled rows alone (``Lu = 0``; the official code would stop). The Beta draw and the
permutation come from the loop's per-epoch generator. Called directly with one stream (no
``start_epoch``), ``loss`` trains network 1 with the batch as both sets and ``w = 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fernoise.methods._registry import register
from fernoise.methods.base import (
    LossOut,
    Method,
    OptimDefaults,
    check_choice,
    check_range,
    option,
)

NETS = {1: ("backbone", "pcc"), 2: ("backbone2", "pcc2")}
OFFICIAL_EPOCHS = 300  # the official num_epochs (CIFAR), of which the warm-up and ramp below
OFFICIAL_WARMUP, OFFICIAL_RAMPUP = 10, 16


@dataclass(frozen=True)
class DivideMixParams:
    p_threshold: float = option(
        0.5,
        "--dividemix-p-threshold",
        "DivideMix: clean probability above which a row is labelled, in [0, 1) (official 0.5).",
    )
    temperature: float = option(
        0.5, "--dividemix-t", "DivideMix: sharpening temperature T, > 0 (official 0.5)."
    )
    alpha: float = option(
        4.0, "--dividemix-alpha", "DivideMix: MixMatch's Beta(alpha, alpha), > 0 (official 4)."
    )
    lambda_u: float = option(
        25.0,
        "--dividemix-lambda-u",
        "DivideMix: weight of the unlabelled loss after its ramp, >= 0 (official 25, CIFAR-10).",
    )
    rampup: int | None = option(
        None,
        "--dividemix-rampup",
        "DivideMix: epochs over which lambda_u ramps up after the warm-up, >= 1 (default: the "
        "official 16 of 300 scaled to --epochs, ceil(16 * (epochs - 1) / 300)).",
    )
    gmm: str = option(
        "per-class",
        "--dividemix-gmm",
        "DivideMix: one Gaussian mixture per given label (per-class, keeps rare classes "
        "labelled) or one over all rows (global, official).",
        choices=("per-class", "global"),
    )
    prior: str = option(
        "uniform",
        "--dividemix-prior",
        "DivideMix: the penalty's class prior: uniform (official) or the training labels' "
        "marginal.",
        choices=("uniform", "marginal"),
    )

    def __post_init__(self) -> None:
        check_range(self.p_threshold, 0, 1, "--dividemix-p-threshold", hi_open=True)
        check_range(self.temperature, 0, None, "--dividemix-t", lo_open=True)
        check_range(self.alpha, 0, None, "--dividemix-alpha", lo_open=True)
        check_range(self.lambda_u, 0, None, "--dividemix-lambda-u")
        if self.rampup is not None:
            check_range(self.rampup, 1, None, "--dividemix-rampup")
        check_choice(self, "gmm")
        check_choice(self, "prior")


# ----------------------------------------------------------------------------- the pieces
def scaled(official: int, epochs: int) -> int:
    """``official`` epochs of the official 300 scaled to a run of ``epochs`` (the official run
    is 301 epochs, 0 .. 300): ``ceil(official * (epochs - 1) / 300)``, at least 1."""
    return max(1, math.ceil(official * (epochs - 1) / OFFICIAL_EPOCHS))


def lr_factor(epoch: int, epochs: int) -> float:
    """0.1 from the official ``epoch >= num_epochs / 2`` on (fernoise epoch e = official e - 1,
    ``num_epochs = epochs - 1``), else 1."""
    return 0.1 if epoch - 1 >= (epochs - 1) / 2 else 1.0


def ramp(current: float, warm_up: int, rampup: int, lambda_u: float) -> float:
    """The official ``linear_rampup``: ``lambda_u * clip((current - warm_up) / rampup, 0, 1)``."""
    return lambda_u * min(1.0, max(0.0, (current - warm_up) / rampup))


def sharpen(p, temperature: float):
    """``p^(1/T)`` normalised per row."""
    pt = p ** (1 / temperature)
    return pt / pt.sum(dim=1, keepdim=True)


def co_refine(probs_x1, probs_x2, onehot, w, temperature: float):
    """The labelled targets: ``w * onehot + (1 - w) * mean(softmax of both views)``, sharpened
    (``w``: ``(N, 1)``)."""
    px = (probs_x1 + probs_x2) / 2
    return sharpen(w * onehot + (1 - w) * px, temperature)


def co_guess(probs, temperature: float):
    """The unlabelled targets: the mean of the four softmaxes (both networks, both views),
    sharpened."""
    return sharpen(sum(probs) / len(probs), temperature)


def semi_loss(logits_x, targets_x, logits_u, targets_u):
    """The official ``SemiLoss`` without the ramp: ``(Lx, Lu)``."""
    import torch
    import torch.nn.functional as F

    lx = -torch.mean(torch.sum(F.log_softmax(logits_x, dim=1) * targets_x, dim=1))
    lu = torch.mean((torch.softmax(logits_u, dim=1) - targets_u) ** 2)
    return lx, lu


def penalty(logits, prior):
    """``sum(prior * log(prior / mean softmax))``; a class of prior 0 adds 0."""
    import torch

    pred_mean = torch.softmax(logits, dim=1).mean(0)
    terms = prior * torch.log(prior / pred_mean)
    return torch.where(prior > 0, terms, torch.zeros_like(terms)).sum()


def clean_probability(losses, labels, *, per_class: bool, seed: list[int]):
    """The clean probability of every row: min-max normalised ``losses`` (float64 numpy),
    a 2-component mixture's posterior of its smaller-mean component, one mixture over all rows
    or one per label in ``labels`` (a class of fewer than 2 rows: the global posterior)."""
    import warnings

    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    x = np.asarray(losses, dtype=np.float64)
    x = (x - x.min()) / (x.max() - x.min())

    def fit(values, c: int):
        state = int(np.random.default_rng([*seed, c + 1]).integers(2**31))
        gmm = GaussianMixture(
            n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=state
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            gmm.fit(values.reshape(-1, 1))
            prob = gmm.predict_proba(values.reshape(-1, 1))
        return prob[:, gmm.means_.argmin()]

    w = fit(x, -1)
    if per_class:
        labels = np.asarray(labels)
        for c in np.unique(labels):
            rows = labels == c
            if rows.sum() >= 2:
                w[rows] = fit(x[rows], int(c))
    return w


# ----------------------------------------------------------------------------- the method
class Schedule:
    """Every group's base lr times :func:`lr_factor` of the epoch about to run: set at creation
    for epoch 1, then after every epoch (``step``)."""

    def __init__(self, optimizer, epochs: int):
        self.optimizer, self.epochs = optimizer, epochs
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.epoch = 1
        self._apply()

    def _apply(self) -> None:
        factor = lr_factor(self.epoch, self.epochs)
        for g, lr in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            g["lr"] = lr * factor

    def step(self) -> None:
        self.epoch += 1
        self._apply()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.base_lrs = int(state["epoch"]), [float(x) for x in state["base_lrs"]]
        self._apply()


@register
class DivideMix(Method):
    """Two networks; each divides the rows for the other, which trains with MixMatch."""

    name = "dividemix"
    summary = "two networks dividing rows by a loss mixture for each other, then MixMatch"
    source = "Li, Socher, Hoi, ICLR 2020"
    repo = "LiJunnan1992/DivideMix Train_cifar.py, dataloader_cifar.py"
    face_pretrained = False
    Params = DivideMixParams
    views = ("weak", "weak#2")
    optim = OptimDefaults(
        lr_backbone=0.02, lr_head=0.02, weight_decay=5e-4, epochs=40, batch_size=64
    )
    parts = ("s", "x", "u", "penalty")
    part_captions = {"x": "labelled (mixed)", "u": "unlabelled (mixed)", "penalty": "prior"}

    @classmethod
    def default_warmup(cls, epochs: int) -> int:
        return min(epochs, scaled(OFFICIAL_WARMUP, epochs))

    def __init__(self, params=None, *, num_classes: int, n_rows: int, image_size: int = 224):
        super().__init__(params, num_classes=num_classes, n_rows=n_rows, image_size=image_size)
        self.prob: dict[int, Any] = {}  # network -> float64 numpy (n_rows,): clean prob.
        self.prior: Any = None  # the penalty's prior (C,), set by start_epoch
        self.warm = False
        self.run = {"epochs": self.optim.epochs, "warmup": 0, "batch": self.optim.batch_size}
        self.run["seed"] = 0
        self.step_in = {1: 0, 2: 0}  # batches of each phase so far this epoch
        self.num_iter = {1: 1, 2: 1}

    def build(self, model) -> None:
        from torch import nn

        model.add_module("pcc", nn.Linear(model.feature_dim, self.num_classes))
        model.add_module("backbone2", model.new_backbone())
        model.add_module("pcc2", nn.Linear(model.feature_dim, self.num_classes))

    def backbones(self, model) -> dict:
        return {"backbone": model.backbone, "backbone2": model.backbone2}

    def configure_optimizers(self, model, cfg):
        import torch

        groups = self.param_groups(
            model, lr_backbone=cfg.lr_backbone, lr_head=cfg.lr_head, weight_decay=cfg.weight_decay
        )
        optimizer = torch.optim.SGD(groups, momentum=0.9)
        self.run = {
            "epochs": cfg.epochs,
            "warmup": cfg.warmup,
            "batch": cfg.batch_size,
            "seed": cfg.seed,
        }
        return optimizer, Schedule(optimizer, cfg.epochs)

    def logits(self, model, x):
        return model.pcc(model.backbone(x)) + model.pcc2(model.backbone2(x))

    def net(self, model, k: int, x):
        backbone, head = NETS[k]
        return getattr(model, head)(getattr(model, backbone)(x))

    # -- the epoch ------------------------------------------------------------------------
    def start_epoch(self, model, ctx) -> None:
        import torch

        self.warm, self.step_in = ctx.warm, {1: 0, 2: 0}
        labels = ctx.labels[ctx.rows]
        if self.params.prior == "marginal":
            from fernoise.methods.losses import label_marginal

            self.prior = label_marginal(labels, self.num_classes)
        if ctx.warm:
            return
        import numpy as np

        for k in (1, 2):

            def ce(m, x, idx, k=k):
                y = ctx.labels[idx].to(x.device)
                return torch.nn.functional.cross_entropy(
                    self.net(m, k, x).float(), y, reduction="none"
                )

            losses = ctx.predict(ce).double().numpy()
            w = np.zeros(self.n_rows)
            w[ctx.rows] = clean_probability(
                losses,
                labels.numpy(),
                per_class=self.params.gmm == "per-class",
                seed=[self.run["seed"], ctx.epoch, k],
            )
            self.prob[k] = w

    def division(self, k: int):
        """Network ``k``'s labelled mask over every row (``w > p_threshold``)."""
        return self.prob[k] > self.params.p_threshold

    def epoch_phases(self, epoch, rows):
        import numpy as np

        if self.warm or not self.prob:
            return [{"w1": rows}, {"w2": rows}]
        out = []
        for k, other in ((1, 2), (2, 1)):
            lab = self.division(other)[rows]
            x, u = rows[lab], rows[~lab]
            self.num_iter[k] = self._num_iter(len(x))
            out.append({f"x{k}": x, f"u{k}": u})
        return [{n: np.asarray(r, dtype=np.int64) for n, r in p.items()} for p in out]

    def _num_iter(self, n: int) -> int:
        """The official ``len(labelled) // batch + 1``, for this process's share of the rows."""
        import torch.distributed as dist

        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        return -(-n // world) // self.run["batch"] + 1

    def epoch_selection(self):
        import torch

        if self.warm or 1 not in self.prob:
            return None
        return torch.from_numpy(self.division(1))

    def views_for(self, *, warm, stream="train"):
        return ("weak",) if stream.startswith("w") else self.views

    # -- the batch ------------------------------------------------------------------------
    def loss(self, model, views, y, idx, *, epoch, warm, gen) -> LossOut:
        import torch
        import torch.nn.functional as F

        if not isinstance(next(iter(views.values())), dict):  # a direct call with one stream
            views, y, idx = {"x1": views, "u1": views}, {"x1": y}, {"x1": idx}
        lead = next(iter(views))
        if lead[0] == "w":  # warm-up: plain cross-entropy of the phase's network
            k = int(lead[1])
            self._modes(model, k)
            logits = self.net(model, k, views[lead]["weak"]).float()
            ce = F.cross_entropy(logits, y[lead])
            return LossOut(ce, {"s": ce}, logits.detach())
        k = int(lead[1])
        xs, us = f"x{k}", f"u{k}"
        self._modes(model, k)
        w = self._w(k, idx[xs], y[xs])
        with torch.no_grad():
            targets_x, targets_u, logits_x = self._targets(model, k, views, y[xs], w, us)
        lam = self._mix(gen)
        parts = [views[xs]["weak"], views[xs]["weak#2"]]
        if us in views:
            parts += [views[us]["weak"], views[us]["weak#2"]]
        targets = [targets_x, targets_x] + ([targets_u, targets_u] if us in views else [])
        all_inputs, all_targets = torch.cat(parts), torch.cat(targets)
        perm = torch.randperm(all_inputs.size(0), generator=gen).to(all_inputs.device)
        mixed_input = lam * all_inputs + (1 - lam) * all_inputs[perm]
        mixed_target = lam * all_targets + (1 - lam) * all_targets[perm]
        logits = self.net(model, k, mixed_input).float()
        n = 2 * len(targets_x)
        lx, lu = semi_loss(logits[:n], mixed_target[:n], logits[n:], mixed_target[n:])
        if us not in views:
            lu = torch.zeros((), device=logits.device)
        lamb = self._lambda_u(k, epoch)
        pen = penalty(logits, self._prior(logits.device))
        return LossOut(
            lx + lamb * lu + pen,
            {"x": lx.detach(), "u": lu.detach(), "penalty": pen.detach()},
            logits_x,
            selected=w.view(-1) > self.params.p_threshold,
        )

    def _modes(self, model, k: int) -> None:
        """The trained network in train mode, the other in eval mode (official ``train``)."""
        for j, (backbone, head) in NETS.items():
            for name in (backbone, head):
                getattr(model, name).train(j == k)

    def _w(self, k: int, idx, y):
        """``(N, 1)`` clean probabilities of the labelled rows, from the *other* network."""
        import torch

        other = 2 if k == 1 else 1
        if other not in self.prob:
            return torch.ones(len(y), 1, device=y.device)
        w = torch.from_numpy(self.prob[other][idx.cpu().numpy()]).float()
        return w.view(-1, 1).to(y.device)

    def _targets(self, model, k: int, views, y, w, us):
        """Co-guessed unlabelled and co-refined labelled targets (official order of forwards),
        and the trained network's logits on the first labelled view."""
        import torch

        other = 2 if k == 1 else 1
        targets_u = None
        if us in views:
            u1, u2 = views[us]["weak"], views[us]["weak#2"]
            outs = [self.net(model, k, u1), self.net(model, k, u2)]
            outs += [self.net(model, other, u1), self.net(model, other, u2)]
            targets_u = co_guess(
                [torch.softmax(o.float(), 1) for o in outs], self.params.temperature
            )
        xs = f"x{k}"
        out_x1 = self.net(model, k, views[xs]["weak"]).float()
        out_x2 = self.net(model, k, views[xs]["weak#2"]).float()
        onehot = torch.zeros(len(y), self.num_classes, device=y.device).scatter_(
            1, y.view(-1, 1), 1
        )
        targets_x = co_refine(
            torch.softmax(out_x1, 1), torch.softmax(out_x2, 1), onehot, w, self.params.temperature
        )
        return targets_x, targets_u, out_x1

    def _mix(self, gen) -> float:
        """``l ~ Beta(alpha, alpha)`` (numpy, seeded from ``gen``), ``max(l, 1 - l)``."""
        import numpy as np
        import torch

        seed = int(torch.randint(0, 2**62, (1,), generator=gen).item())
        lam = float(np.random.default_rng(seed).beta(self.params.alpha, self.params.alpha))
        return max(lam, 1 - lam)

    def _lambda_u(self, k: int, epoch: int) -> float:
        """The ramp at the phase's batch ``i``: ``current = e - 1 + i / num_iter``."""
        i = self.step_in[k]
        self.step_in[k] = i + 1
        run, p = self.run, self.params
        rampup = p.rampup if p.rampup is not None else scaled(OFFICIAL_RAMPUP, run["epochs"])
        return ramp(epoch - 1 + i / self.num_iter[k], run["warmup"], rampup, p.lambda_u)

    def _prior(self, device):
        import torch

        if self.prior is None:
            return torch.full((self.num_classes,), 1 / self.num_classes, device=device)
        return self.prior.to(device)
