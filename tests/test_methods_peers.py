"""SCN, RUL and EAC building blocks on hand-computed tensors."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from fernoise import methods
from fernoise.errors import FernoiseError
from fernoise.methods import OptimDefaults, eac, rul, scn


# ----------------------------------------------------------------------------- SCN
def test_weighted_logits_scale_each_row():
    alpha = torch.tensor([[0.5], [2.0]])
    z = torch.tensor([[1.0, -2.0, 4.0], [3.0, 0.0, -1.0]])
    assert torch.equal(
        scn.weighted_logits(alpha, z), torch.tensor([[0.5, -1.0, 2.0], [6.0, 0.0, -2.0]])
    )


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
    probs = torch.tensor(
        [
            [0.70, 0.20, 0.10],  # y=1: 0.5 > 0.2 -> 0
            [0.50, 0.40, 0.10],  # y=1: 0.1 -> keep
            [0.10, 0.10, 0.80],  # y=0: 0.7 -> 2
            [0.30, 0.30, 0.40],  # y=2: already argmax -> keep
            [0.05, 0.55, 0.40],  # y=2: 0.15 -> keep
        ]
    )
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
    expected = torch.tensor(
        [
            [0.25 * 1 + 0.75 * 0, 0.25 * 0 + 0.75 * 2],
            [6 / 7 * 0 + 1 / 7 * 4, 6 / 7 * 2 + 1 / 7 * 4],
            [1 / 3 * 4 + 2 / 3 * 1, 1 / 3 * 4 + 2 / 3 * 0],
        ]
    )
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
    expected = (
        0.5 * (-math.log(0.75) - math.log(0.75)) / 2 + 0.5 * (-math.log(0.25) - math.log(0.25)) / 2
    )
    assert rul.mixup_cross_entropy(logits, y, perm).item() == pytest.approx(expected, abs=1e-6)


def test_uncertainty_head_layout_and_seeded_dropout():
    head = rul.uncertainty_head(512 * 2 * 2, 64, 0.4)
    keys = sorted(head.state_dict())
    assert keys == [
        "0.num_batches_tracked",
        "0.running_mean",
        "0.running_var",
        "3.bias",
        "3.weight",
        "4.bias",
        "4.num_batches_tracked",
        "4.running_mean",
        "4.running_var",
        "4.weight",
    ]
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
    official = F.grid_sample(
        cam, grid.expand(3, -1, -1, -1), mode="bilinear", padding_mode="border", align_corners=True
    )
    assert torch.allclose(official, cam.flip(-1), atol=1e-5)
    cam1 = torch.randn(3, 7, h, w)
    assert eac.flip_consistency(cam1, cam).item() == pytest.approx(
        F.mse_loss(cam1, official).item(), rel=1e-5
    )


# ----------------------------------------------------------------------------- the plugins
def make(name: str, *, n_rows: int = 20, num_classes: int = 8, image_size: int = 32, **params):
    method = methods.create(
        name,
        methods.make_params(name, params),
        num_classes=num_classes,
        n_rows=n_rows,
        image_size=image_size,
    )
    torch.manual_seed(0)
    return method, methods.build_model(method)


def batch(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_registry_lists_the_three_with_official_defaults():
    names = methods.names()  # the three in the paper's order, wherever later methods register
    assert names[names.index("scn") : names.index("scn") + 3] == ["scn", "rul", "eac"]
    assert methods.get("scn").optim == OptimDefaults(1e-3, 1e-3, 1e-4, 0.9, 70, 64)
    assert methods.get("rul").optim == OptimDefaults(2e-4, 2e-4, 1e-4, 0.9, 60, 64)
    assert methods.get("eac").optim == OptimDefaults(2e-4, 2e-4, 1e-4, 0.9, 60, 32)
    assert methods.get("scn").views == ("scn",) and methods.get("rul").views == ("scn",)
    assert methods.get("eac").views == ("eac1", "eac2")
    assert methods.get("scn").describe_params() == (
        "--scn-beta 0.7 --scn-margin 0.07 --scn-relabel-margin 0.2 --scn-relabel-epoch 10 --scn-relabel-group low"
    )


@pytest.mark.parametrize(
    "flags,flag,text",
    [
        ({"--scn-beta": 1.0}, "--scn-beta", "expected a value in (0, 1), got 1.0"),
        (
            {"--scn-relabel-group": "high"},
            "--scn-relabel-group",
            "expected one of low, all, got 'high'",
        ),
        ({"--scn-relabel-epoch": 0}, "--scn-relabel-epoch", "expected an epoch >= 1, got 0"),
        ({"--rul-dropout": 1.0}, "--rul-dropout", "expected a value in [0, 1), got 1.0"),
        ({"--rul-dim": 0}, "--rul-dim", "expected a dimension >= 1, got 0"),
        ({"--eac-lam": -1.0}, "--eac-lam", "expected a value in [0, inf], got -1.0"),
    ],
)
def test_bad_params_name_their_flag(flags, flag, text):
    name = flag.split("-")[2]
    with pytest.raises(FernoiseError) as e:
        methods.make_params(name, flags)
    assert e.value.flag == flag and str(e.value) == text


def test_scn_loss_is_weighted_ce_plus_rank_regularisation():
    method, model = make("scn", **{"--scn-margin": 0.9})
    x, y, idx = batch(6, 32), torch.tensor([0, 1, 2, 3, 4, 5]), torch.arange(6)
    out = model(method.loss, {"scn": x}, y, idx, epoch=1, warm=False, gen=torch.Generator())
    f = model.features(x)
    alpha = model.attention(f)
    z = alpha * model.pcc(f)
    a = alpha.flatten().sort(descending=True).values
    rr = 0.9 - (a[:4].mean() - a[4:].mean())  # int(6 * 0.7) = 4 high
    assert torch.allclose(out.logits, z) and out.relabelled is None and torch.equal(out.labels, y)
    assert out.parts["rr"].item() == pytest.approx(rr.item(), abs=1e-6)
    assert out.loss.item() == pytest.approx(F.cross_entropy(z, y).item() + rr.item(), abs=1e-5)
    out.loss.backward()
    assert model.attention[0].weight.grad.abs().sum() > 0
    model.eval()
    assert torch.allclose(
        model(method.logits, x), model.attention(model.features(x)) * model.pcc(model.features(x))
    )


def force_class_zero(model) -> None:
    """pcc predicts class 0 for everything: z = (20, 0, ..., 0); with alpha > 0.4, p0 > 0.99."""
    with torch.no_grad():
        model.pcc.weight.zero_()
        model.pcc.bias.zero_()
        model.pcc.bias[0] = 20.0


@pytest.mark.parametrize("group,expected", [("all", 5), ("low", 1)])
def test_scn_relabels_from_the_relabel_epoch_into_its_store(group, expected):
    method, model = make("scn", **{"--scn-relabel-group": group})
    force_class_zero(model)
    x, y, idx = batch(6, 32), torch.tensor([0, 1, 2, 3, 4, 5]), torch.tensor([3, 9, 4, 11, 0, 7])
    out = model(method.loss, {"scn": x}, y, idx, epoch=9, warm=False, gen=torch.Generator())
    assert out.relabelled is None  # before epoch 10
    out = model(method.loss, {"scn": x}, y, idx, epoch=10, warm=False, gen=torch.Generator())
    changed = out.relabelled >= 0
    # y = 0 never changes; "all": the other 5; "low": the 6 - int(4.2) = 2 lowest alphas, minus y = 0
    alpha = model.attention(model.features(x)).flatten()
    low = torch.zeros(6, dtype=torch.bool)
    low[alpha.argsort()[:2]] = True
    want = (y != 0) & (low if group == "low" else True)
    assert torch.equal(changed, want) and changed.sum().item() == want.sum().item()
    assert (out.relabelled[changed] == 0).all()
    assert torch.equal(out.labels, y)  # this step trained on the labels before its relabels
    method.after_step(out, y, idx, epoch=10)
    again = model(method.loss, {"scn": x}, y, idx, epoch=10, warm=False, gen=torch.Generator())
    assert torch.equal(again.labels, torch.where(changed, 0, y))
    store = torch.full((20,), -1)
    store[idx[changed]] = 0
    assert torch.equal(method.state_dict()["labels"], store)
    assert torch.equal(method.trained_labels(y, idx), torch.where(changed, 0, y))
    # the store survives a round trip, and a store of another size is refused
    other, _ = make("scn")
    assert other.load_state_dict(method.state_dict(), n_rows=20)
    assert torch.equal(other.labels, store)
    small, _ = make("scn", n_rows=5)
    assert small.load_state_dict(method.state_dict(), n_rows=5) is False
    assert changed.sum().item() == expected  # low group here: rows 3 and 0 (y = 0 stays)


def test_scn_warmup_is_weighted_ce_without_relabelling():
    method, model = make("scn")
    force_class_zero(model)
    x, y = batch(4, 32), torch.tensor([1, 2, 3, 4])
    out = model(
        method.loss, {"scn": x}, y, torch.arange(4), epoch=12, warm=True, gen=torch.Generator()
    )
    assert set(out.parts) == {"s"} and out.relabelled is None
    assert out.loss.item() == pytest.approx(F.cross_entropy(out.logits, y).item(), abs=1e-6)


@pytest.mark.parametrize("size", [32, 48, 112])
def test_rul_map_side_matches_the_backbone(size):
    method, model = make("rul", image_size=size)
    side = rul.map_side(size)
    assert model.feature_map(batch(2, size)).shape == (2, 512, side, side)
    assert model.mu[3].in_features == 512 * side * side and model.pcc.in_features == 64
    assert {32: 1, 48: 2, 112: 4, 224: 7}.get(size, rul.map_side(224)) == side and rul.map_side(
        224
    ) == 7


def test_rul_param_groups_put_the_classifier_at_ten_times():
    method, model = make("rul")
    groups = method.param_groups(model, lr_backbone=2e-4, lr_head=2e-4, weight_decay=1e-4)
    assert [g["lr"] for g in groups] == [2e-4, 2e-4, pytest.approx(2e-3)]
    assert all(g["weight_decay"] == 1e-4 for g in groups)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert [id(p) for p in groups[2]["params"]] == [id(model.pcc.weight), id(model.pcc.bias)]


def test_rul_loss_is_seeded_and_equals_the_mixup_by_hand():
    method, model = make("rul")
    x, y = batch(6, 32), torch.tensor([0, 1, 2, 3, 4, 5])
    out = model(
        method.loss,
        {"scn": x},
        y,
        torch.arange(6),
        epoch=1,
        warm=False,
        gen=torch.Generator().manual_seed(3),
    )
    again = model(
        method.loss,
        {"scn": x},
        y,
        torch.arange(6),
        epoch=1,
        warm=False,
        gen=torch.Generator().manual_seed(3),
    )
    assert torch.equal(out.loss, again.loss)
    # by hand, drawing from the generator in the same order: mu mask, logvar mask, permutation
    gen = torch.Generator().manual_seed(3)
    fmap = model.feature_map(x)
    mu = rul.run_head(model.mu, fmap, gen)
    logvar = rul.run_head(model.logvar, fmap, gen)
    perm = torch.randperm(6, generator=gen)
    u = logvar.exp().mean(1, keepdim=True)
    mixed = u / (u + u[perm]) * mu + u[perm] / (u + u[perm]) * mu[perm]
    logits = model.pcc(mixed)
    want = 0.5 * F.cross_entropy(logits, y) + 0.5 * F.cross_entropy(logits, y[perm])
    assert out.loss.item() == pytest.approx(want.item(), abs=1e-5)
    model.eval()
    assert torch.allclose(model(method.logits, x), model.pcc(model.mu(model.feature_map(x))))


def test_eac_loss_equals_the_official_cam_and_grid_flip():
    method, model = make("eac", image_size=64)
    x1, x2, y = batch(4, 64, 1), batch(4, 64, 2), torch.tensor([0, 3, 5, 7])
    with pytest.warns(UserWarning, match="attention maps are 2x2"):
        out = model(
            method.loss,
            {"eac1": x1, "eac2": x2},
            y,
            torch.arange(4),
            epoch=1,
            warm=False,
            gen=torch.Generator(),
        )
    # the official Model.forward + ACLoss, rebuilt
    f1, f2 = model.feature_map(x1), model.feature_map(x2)
    w = model.pcc.weight.data.view(1, 8, 512, 1, 1)
    hm1, hm2 = (f1.unsqueeze(1) * w).sum(2), (f2.unsqueeze(1) * w).sum(2)
    grid = torch.tensor([[[[1.0, -1.0], [-1.0, -1.0]], [[1.0, 1.0], [-1.0, 1.0]]]]).expand(
        4, -1, -1, -1
    )
    flipped = F.grid_sample(hm2, grid, mode="bilinear", padding_mode="border", align_corners=True)
    logits = model.pcc(f1.mean((2, 3)))
    want = F.cross_entropy(logits, y) + 5 * F.mse_loss(hm1, flipped)
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert out.parts["flip"].item() == pytest.approx(F.mse_loss(hm1, flipped).item(), rel=1e-5)
    # the classifier learns from CE only (its weights are detached in the CAMs)
    out.loss.backward()
    g_total = model.pcc.weight.grad.clone()
    model.zero_grad()
    F.cross_entropy(model.pcc(model.feature_map(x1).mean((2, 3))), y).backward()
    assert torch.allclose(g_total, model.pcc.weight.grad, atol=1e-6)


def test_eac_warns_once_and_warmup_uses_x1_only(recwarn):
    method, model = make("eac", image_size=32)
    x1, y = batch(4, 32), torch.tensor([0, 1, 2, 3])
    out = model(
        method.loss, {"eac1": x1}, y, torch.arange(4), epoch=1, warm=True, gen=torch.Generator()
    )
    assert set(out.parts) == {"s"} and len(recwarn) == 0
    views = {"eac1": x1, "eac2": batch(4, 32, 1)}
    for _ in range(2):
        model(method.loss, views, y, torch.arange(4), epoch=2, warm=False, gen=torch.Generator())
    assert [str(w.message)[:34] for w in recwarn] == ["eac: the attention maps are 1x1 at"]


@pytest.mark.parametrize("name", ["scn", "rul", "eac"])
def test_losses_run_under_bf16_autocast(name):
    # the loop runs loss() under autocast with --precision bf16; parts must stay float32
    method, model = make(name, image_size=32)
    views = {v: batch(4, 32, i) for i, v in enumerate(method.views)}
    y = torch.tensor([0, 1, 2, 3])
    with torch.autocast("cpu", dtype=torch.bfloat16), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # EAC's small-map warning
        out = model(
            method.loss,
            views,
            y,
            torch.arange(4),
            epoch=10,
            warm=False,
            gen=torch.Generator().manual_seed(0),
        )
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert all(v.dtype == torch.float32 for v in out.parts.values()) and out.logits.shape == (4, 8)
    out.loss.backward()
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)
