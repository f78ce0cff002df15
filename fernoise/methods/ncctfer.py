"""``ncctfer``: class-adaptive threshold + negative-class-guided consistency (Gera et al. 2023;
docs/methods.md).

``--threshold labelled`` (default) is Eq. 1 as docs/methods.md reads it: ``T_c`` = mean of
``p[i, c]`` over the samples *labelled* c, every present class keeping at least one sample.
``--threshold batch`` is the authors' earlier DNFER code (1980x/DNFER ``algorithm/loss.py``,
class ``DCE``): ``T_c`` = mean of ``p[:, c]`` over the whole batch (keep where
``p(y|x) >= p(y)``), no per-class guarantee, and cross-entropy on every sample in a batch
where no sample is confident. ``--bn-views joint`` (default) sends the weak and strong views
through the network as one concatenated batch (one BatchNorm pass, FixMatch-style);
``separate`` makes two passes (weak, then strong), as the independent reference does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fernoise.errors import FernoiseError
from fernoise.methods._registry import register
from fernoise.methods.base import LossOut, Method, OptimDefaults, check_choice, option
from fernoise.methods.pc import THRESHOLD_HELP, THRESHOLDS, confident_step

BN_VIEWS = ("joint", "separate")


@dataclass(frozen=True)
class NcctferParams:
    k: int | None = option(
        None,
        "--k",
        "Top-k negative-head classes in the consistency loss (Eq. 4), 1..C-1; "
        "unset: min(4, C-1), the paper's 4.",
    )
    threshold: str = option("labelled", "--threshold", THRESHOLD_HELP, choices=THRESHOLDS)
    bn_views: str = option(
        "joint",
        "--bn-views",
        "joint: weak and strong views in one BatchNorm pass; separate: two passes.",
        choices=BN_VIEWS,
    )

    def __post_init__(self) -> None:
        if self.k is not None and (not isinstance(self.k, int) or self.k < 1):
            raise FernoiseError(f"expected 1..C-1, got {self.k}", flag="--k")
        check_choice(self, "threshold")
        check_choice(self, "bn_views")


@register
class NCCTFER(Method):
    """Gera et al. 2023 (Eq. 1-5, Algorithm 1): ``pcc`` on the confident samples of the weak
    view plus, on the others, the top-k consistency of the negative head ``ncc`` between the
    weak view (target, no gradient) and the strong view. ``L = L_s + L_c``."""

    name = "ncctfer"
    summary = "class-adaptive threshold + negative-class consistency (the paper's method)"
    source = "Gera et al., 2023 (NCCTFER)"
    repo = "- (paper only; threshold=batch reads 1980x/DNFER algorithm/loss.py)"
    face_pretrained = True
    Params = NcctferParams
    views = ("weak", "strong")
    optim = OptimDefaults(lr_backbone=1e-4, lr_head=1e-3, epochs=40, batch_size=128)
    parts = ("s", "c")
    part_captions = {"c": "negative classes"}

    def __init__(self, params=None, *, num_classes: int, n_rows: int, image_size: int = 224):
        super().__init__(params, num_classes=num_classes, n_rows=n_rows, image_size=image_size)
        if self.params.k is None:  # the paper's 4, or every other class when there are fewer
            self.params = replace(self.params, k=min(4, num_classes - 1))
        if not 1 <= self.params.k <= num_classes - 1:
            raise FernoiseError(
                f"expected 1..{num_classes - 1} for {num_classes} classes, got {self.params.k}",
                flag="--k",
            )

    def build(self, model) -> None:
        from torch import nn

        # pcc then ncc: fernoise's creation order since the first release (seeded init).
        model.add_module("pcc", nn.Linear(model.feature_dim, self.num_classes))
        model.add_module("ncc", nn.Linear(model.feature_dim, self.num_classes))

    def loss(self, model, views, y, idx, *, epoch, warm, gen) -> LossOut:
        import torch

        from fernoise.methods import losses

        if warm:
            return self.warmup_loss(model, views, y)
        x_w, x_s = views["weak"], views["strong"]
        n = x_w.shape[0]
        if self.params.bn_views == "joint":
            f = model.features(torch.cat([x_w, x_s]))
            pcc_w, ncc = model.pcc(f)[:n], model.ncc(f)
            ncc_w, ncc_s = ncc[:n], ncc[n:]
        else:
            f_w, f_s = model.features(x_w), model.features(x_s)
            pcc_w, ncc_w, ncc_s = model.pcc(f_w), model.ncc(f_w), model.ncc(f_s)
        loss_s, conf, thresholds = confident_step(pcc_w, y, self.num_classes, self.params.threshold)
        loss_c = losses.consistency_loss(ncc_w, ncc_s, ~conf, self.params.k)
        return LossOut(
            loss_s + loss_c, {"s": loss_s, "c": loss_c}, pcc_w, selected=conf, thresholds=thresholds
        )
