"""SCN, RUL and EAC building blocks on hand-computed tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fernoise.methods import eac, rul, scn


# ----------------------------------------------------------------------------- SCN
def test_weighted_logits_scale_each_row():
    alpha = torch.tensor([[0.5], [2.0]])
    z = torch.tensor([[1.0, -2.0, 4.0], [3.0, 0.0, -1.0]])
    assert torch.equal(scn.weighted_logits(alpha, z), torch.tensor([[0.5, -1.0, 2.0], [6.0, 0.0, -2.0]]))


def test_rank_regularization_groups_value_and_gradient():
    alpha = torch.tensor([[0.9], [0.8], [0.3], [0.6], [0.2]], requires_grad=True)
    # N = 5, int(5 * 0.7) = 3: high {0.9, 0.8, 0.6} mean 0.76667, low {0.3, 0.2} mean 0.25
    loss, high = scn.rank_regularization(alpha, beta=0.7, margin=0.6)
    assert high.tolist() == [True, True, False, True, False]
    assert loss.item() == pytest.approx(0.6 - (2.3 / 3 - 0.25), abs=1e-6)
    loss.backward()
    expected = torch.tensor([[-1 / 3], [-1 / 3], [0.5], [-1 / 3], [0.5]])
    assert torch.allclose(alpha.grad, expected)
    # margin already met: zero, no gradient
    alpha.grad = None
    loss, _ = scn.rank_regularization(alpha, beta=0.7, margin=0.07)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(alpha.grad, torch.zeros(5, 1))


def test_rank_regularization_group_size_is_int_of_n_beta():
    alpha = torch.arange(64, dtype=torch.float32) / 64
    _, high = scn.rank_regularization(alpha, beta=0.7, margin=0.07)
    assert high.sum().item() == 44 and high[20:].all() and not high[:20].any()  # int(44.8)
    _, high = scn.rank_regularization(alpha[:10], beta=0.7, margin=0.07)
    assert high.sum().item() == 7  # int(7.000000000000001)
    loss, high = scn.rank_regularization(torch.tensor([0.4]), beta=0.7, margin=0.07)
    assert loss.item() == 0.0 and high.tolist() == [False]


def test_relabel_rule_and_low_group_restriction():
    probs = torch.tensor([
        [0.70, 0.20, 0.10],  # y=1: 0.5 > 0.2 -> 0
        [0.50, 0.40, 0.10],  # y=1: 0.1 -> keep
        [0.10, 0.10, 0.80],  # y=0: 0.7 -> 2
        [0.30, 0.30, 0.40],  # y=2: already argmax -> keep
        [0.05, 0.55, 0.40],  # y=2: 0.15 -> keep
    ])
    y = torch.tensor([1, 1, 0, 2, 2])
    assert scn.relabel(probs, y, margin=0.2).tolist() == [0, -1, 2, -1, -1]
    assert scn.relabel(probs, y, margin=0.1).tolist() == [0, -1, 2, -1, 1]
    low = torch.tensor([False, True, True, True, True])
    assert scn.relabel(probs, y, margin=0.2, allowed=low).tolist() == [-1, -1, 2, -1, -1]


# ----------------------------------------------------------------------------- RUL
def test_uncertainty_mix_by_hand():
    mu = torch.tensor([[1.0, 0.0], [0.0, 2.0], [4.0, 4.0]])
    # u = mean(exp(logvar)): 2, 6, 1
    logvar = torch.log(torch.tensor([[1.0, 3.0], [6.0, 6.0], [1.0, 1.0]]))
    perm = torch.tensor([1, 2, 0])
    mixed, lam = rul.uncertainty_mix(mu, logvar, perm)
    assert torch.allclose(lam, torch.tensor([[2 / 8], [6 / 7], [1 / 3]]))
    expected = torch.tensor([
        [0.25 * 1 + 0.75 * 0, 0.25 * 0 + 0.75 * 2],
        [6 / 7 * 0 + 1 / 7 * 4, 6 / 7 * 2 + 1 / 7 * 4],
        [1 / 3 * 4 + 2 / 3 * 1, 1 / 3 * 4 + 2 / 3 * 0],
    ])
    assert torch.allclose(mixed, expected)


def test_uncertainty_mix_trains_logvar_through_lam():
    mu = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    logvar = torch.zeros(2, 2, requires_grad=True)
    mixed, _ = rul.uncertainty_mix(mu, logvar, torch.tensor([1, 0]))
    mixed[0, 0].backward()  # = u0 / (u0 + u1) with u = 1, 1: d/du0 = u1 / (u0+u1)^2 = 1/4
    # du0/dlogvar0[d] = exp(0) / 2 -> 1/8 each; du1 enters with -u0/(u0+u1)^2 = -1/4 -> -1/8
    assert torch.allclose(logvar.grad, torch.tensor([[0.125, 0.125], [-0.125, -0.125]]))


def test_mixup_cross_entropy_is_half_and_half():
    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(3.0), 0.0]])  # softmax 1/4 3/4, 3/4 1/4
    y = torch.tensor([1, 1])
    perm = torch.tensor([1, 0])
    # CE(., y): -log 3/4 and -log 1/4; y[perm] = (1, 1): the same
    ce_y = (-math.log(0.75) - math.log(0.25)) / 2
    assert rul.mixup_cross_entropy(logits, y, perm).item() == pytest.approx(ce_y, abs=1e-6)
    y = torch.tensor([1, 0])  # y[perm] = (0, 1): -log 1/4 and -log 1/4
    expected = 0.5 * (-math.log(0.75) - math.log(0.75)) / 2 + 0.5 * (-math.log(0.25) - math.log(0.25)) / 2
    assert rul.mixup_cross_entropy(logits, y, perm).item() == pytest.approx(expected, abs=1e-6)


def test_uncertainty_head_layout_and_seeded_dropout():
    head = rul.uncertainty_head(512 * 2 * 2, 64, 0.4)
    keys = sorted(head.state_dict())
    assert keys == ["0.num_batches_tracked", "0.running_mean", "0.running_var",
                    "3.bias", "3.weight",
                    "4.bias", "4.num_batches_tracked", "4.running_mean", "4.running_var", "4.weight"]
    assert head[0].eps == 2e-5 and head[4].eps == 2e-5 and not head[0].affine and head[4].affine
    fmap = torch.randn(6, 512, 2, 2, generator=torch.Generator().manual_seed(0))
    a = rul.run_head(head, fmap, torch.Generator().manual_seed(5))
    b = rul.run_head(head, fmap, torch.Generator().manual_seed(5))
    c = rul.run_head(head, fmap, torch.Generator().manual_seed(6))
    assert a.shape == (6, 64) and torch.equal(a, b) and not torch.equal(a, c)
    head.eval()
    assert torch.equal(rul.run_head(head, fmap, torch.Generator().manual_seed(5)), head(fmap))


def test_seeded_dropout_keeps_sixty_percent_scaled():
    head = rul.uncertainty_head(512, 4, 0.4)
    head[0].eval()  # identity-like BN (running stats 0/1) to see the mask itself
    x = torch.ones(50, 512, 1, 1)
    seen = {}

    def grab(module, inputs, output):
        seen["x"] = inputs[0]

    head[3].register_forward_hook(grab)
    rul.run_head(head, x, torch.Generator().manual_seed(0))
    vals = seen["x"]
    bn_one = 1 / math.sqrt(1 + 2e-5)
    kept = vals != 0
    assert kept.float().mean().item() == pytest.approx(0.6, abs=0.01)
    assert torch.allclose(vals[kept], torch.full_like(vals[kept], bn_one / 0.6))


# ----------------------------------------------------------------------------- EAC
def test_cams_by_hand_and_detached_weight():
    fmap = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]], requires_grad=True)  # (1, 2, 1, 2)
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]], requires_grad=True)  # (3, 2)
    cam = eac.class_activation_maps(fmap, weight)
    assert cam.shape == (1, 3, 1, 2)
    assert torch.equal(cam, torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]], [[-2.0, -2.0]]]]))
    cam.sum().backward()
    assert weight.grad is None
    # d sum / d F_c = sum_k W[k, c] = (2, 0)
    assert torch.equal(fmap.grad, torch.tensor([[[[2.0, 2.0]], [[0.0, 0.0]]]]))


def test_flip_consistency_by_hand():
    cam1 = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    cam2 = torch.tensor([[[[2.0, 1.0], [4.0, 3.0]]]])  # the mirror of cam1: loss 0
    assert eac.flip_consistency(cam1, cam2).item() == 0.0
    cam2 = torch.tensor([[[[0.0, 0.0], [0.0, 2.0]]]])  # flipped: [[0, 0], [2, 0]]
    assert eac.flip_consistency(cam1, cam2).item() == pytest.approx((1 + 4 + 1 + 16) / 4)


@pytest.mark.parametrize("h,w", [(2, 2), (4, 4), (7, 7), (3, 5)])
def test_flip_equals_the_official_grid_sample(h, w):
    # the official generate_flip_grid + ACLoss, rebuilt here to check torch.flip against it
    xs = torch.arange(w).view(1, -1).expand(h, -1).float()
    ys = torch.arange(h).view(-1, 1).expand(-1, w).float()
    grid = torch.stack([-(2 * xs / (w - 1) - 1), 2 * ys / (h - 1) - 1], dim=-1).unsqueeze(0)
    cam = torch.randn(3, 7, h, w, generator=torch.Generator().manual_seed(h * w))
    official = F.grid_sample(cam, grid.expand(3, -1, -1, -1), mode="bilinear", padding_mode="border", align_corners=True)
    assert torch.allclose(official, cam.flip(-1), atol=1e-5)
    cam1 = torch.randn(3, 7, h, w)
    assert eac.flip_consistency(cam1, cam).item() == pytest.approx(F.mse_loss(cam1, official).item(), rel=1e-5)
