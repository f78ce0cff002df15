"""Issue 19, item 11 and GCE's underflow (item 5): each method's defaults as its official code
has them, and a loss whose gradient stays finite where its probability underflows."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fernoise import methods
from fernoise.methods import losses
from fernoise.sweep.grid import expand, load_grid
from fernoise.train.stage import TrainConfig

REPO = Path(__file__).resolve().parents[1]
NO_WARMUP = [
    "scn",
    "rul",
    "eac",
    "gce",
    "sce",
    "elr",
]  # their official code trains the loss from epoch 1
NCCTFER_PROTOCOL = ["ncctfer", "ce", "pc", "nl"]  # the paper's warm-up, shared by its baselines


@pytest.mark.parametrize("method", NO_WARMUP)
def test_peers_default_to_their_codes_warmup_of_zero(method):
    assert TrainConfig(method=method, epochs=40).warmup == 0
    assert TrainConfig(method=method).warmup == 0  # the method's own epochs (60, 70, 40)
    assert TrainConfig(method=method, epochs=40, warmup=3).warmup == 3  # --warmup still sets it


@pytest.mark.parametrize("method", NCCTFER_PROTOCOL)
def test_ncctfer_and_its_baselines_keep_min_5_epochs_over_3(method):
    assert [TrainConfig(method=method, epochs=e).warmup for e in (1, 3, 9, 40)] == [0, 1, 3, 5]


def test_sce_default_a_is_the_official_clamp():
    a = methods.get("sce").Params().log_zero
    assert a == math.log(1e-4)
    # HanxunH/SCELoss-Reproduce loss.py, written out: pred clamped to [1e-7, 1], the one-hot to [1e-4, 1]
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [-2.0, 4.0, 0.0]])
    y = torch.tensor([0, 0, 1])
    pred = F.softmax(logits, dim=1).clamp(min=1e-7, max=1.0)
    one_hot = F.one_hot(y, 3).float().clamp(min=1e-4, max=1.0)
    official = (-1 * torch.sum(pred * torch.log(one_hot), dim=1)).mean()
    assert losses.reverse_cross_entropy(logits, y, a).item() == pytest.approx(
        official.item(), abs=1e-6
    )
    assert losses.reverse_cross_entropy(logits, y, -4.0).item() != pytest.approx(
        official.item(), abs=1e-3
    )


def test_paper_table2_runs_scn_at_its_batch_of_64():
    cells = expand(load_grid(REPO / "grids" / "paper-table2.toml"), root=REPO)
    batch = {c.method: c.config.batch_size for c in cells}
    assert batch == {"scn": 64, "rul": 128, "eac": 128, "ncctfer": 128}


def test_gce_gradient_is_finite_where_p_y_underflows():
    # label 1 with a logit gap of 200: p_y = exp(-200) underflows to 0 in float32
    logits = torch.tensor([[200.0, 0.0, 0.0], [1.0, 2.0, 0.5]], requires_grad=True)
    y = torch.tensor([1, 1])
    loss = losses.generalized_cross_entropy(logits, y, 0.7)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    # the loss of row 0 is (1 - 0) / q; row 1 is (1 - p^q) / q by hand
    p1 = math.exp(2.0) / (math.exp(1.0) + math.exp(2.0) + math.exp(0.5))
    assert loss.item() == pytest.approx(((1 - 0.0) / 0.7 + (1 - p1**0.7) / 0.7) / 2, rel=1e-6)
    # the gradient of a normal row is d/dz (1 - p_y^q)/q = -p_y^q (onehot - p), as autograd of pow gives
    z = torch.tensor([[1.0, 2.0, 0.5]], requires_grad=True)
    ref = (1 - F.softmax(z, 1)[0, 1] ** 0.7) / 0.7
    ref.backward()
    assert torch.allclose(logits.grad[1] * 2, z.grad[0], atol=1e-6)
