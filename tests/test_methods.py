"""The method registry and the plugin losses: names, flags, bad input, per-sample state, and
exact equality with the loss code fernoise had before methods were plugins."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fernoise import methods
from fernoise.errors import FernoiseError
from fernoise.methods import losses

MINE = ["ce", "pc", "nl", "ncctfer", "gce", "sce", "elr"]


# ----------------------------------------------------------------------------- the registry
def test_registry_lists_every_method_with_its_declarations():
    assert methods.names()[:7] == MINE
    for name in methods.names():
        cls = methods.get(name)
        assert cls.name == name and cls.summary and cls.source and cls.repo
        assert isinstance(cls.face_pretrained, bool) and cls.views and cls.optim.lr_head > 0
        assert "s" in cls.parts or name not in MINE  # warm-up part of every method here


def test_unknown_method_lists_every_method_with_its_summary():
    with pytest.raises(FernoiseError) as e:
        methods.get("mixup")
    msg = e.value.one_line()
    assert e.value.flag == "--method" and "\n" not in msg and "'mixup'" in msg
    for name in methods.names():
        assert f"{name}: {methods.get(name).summary}" in msg


def test_flags_map_to_params_and_foreign_flags_name_both_methods():
    p = methods.make_params("ncctfer", {"--k": 3, "--threshold": "batch", "--bn-views": None})
    assert (p.k, p.threshold, p.bn_views) == (3, "batch", "joint")
    assert methods.make_params("pc", {"--threshold": "batch"}).threshold == "batch"  # shared flag
    assert methods.make_params("elr", {"--elr-lambda": 1.5}).lam == 1.5
    with pytest.raises(FernoiseError) as e:
        methods.make_params("ce", {"--gce-q": 0.5})
    assert (
        e.value.flag == "--gce-q"
        and "--method gce" in str(e.value)
        and "--method ce" in str(e.value)
    )
    with pytest.raises(FernoiseError) as e:
        methods.make_params("gce", {"--threshold": "batch"})
    assert "--method pc or --method ncctfer" in str(e.value) and "--method gce" in str(e.value)


@pytest.mark.parametrize(
    ("name", "given", "flag"),
    [
        ("ncctfer", {"--threshold": "whole"}, "--threshold"),
        ("ncctfer", {"--bn-views": "two"}, "--bn-views"),
        ("ncctfer", {"--k": 0}, "--k"),
        ("gce", {"--gce-q": 0.0}, "--gce-q"),
        ("gce", {"--gce-q": 1.5}, "--gce-q"),
        ("sce", {"--sce-log-zero": 0.0}, "--sce-log-zero"),
        ("elr", {"--elr-beta": 1.0}, "--elr-beta"),
        ("elr", {"--elr-lambda": -1.0}, "--elr-lambda"),
    ],
)
def test_bad_method_params_name_the_flag(name, given, flag):
    with pytest.raises(FernoiseError) as e:
        methods.make_params(name, given)
    assert e.value.flag == flag


def test_k_is_checked_against_the_class_count():
    with pytest.raises(FernoiseError, match=r"expected 1..6 for 7 classes, got 7") as e:
        methods.create("ncctfer", methods.make_params("ncctfer", {"--k": 7}), num_classes=7)
    assert e.value.flag == "--k"


def test_params_from_config_fill_missing_fields_with_defaults():
    p = methods.params_from_dict("ncctfer", {"k": 3})
    assert (p.k, p.threshold, p.bn_views) == (3, "labelled", "joint")
    assert methods.params_from_dict("ncctfer", None) == methods.get("ncctfer").Params()


# ----------------------------------------------------------------------------- frozen old losses
class OldFerNet(nn.Module):
    """fernoise.model.FerNet as of a0c243c (before methods were plugins)."""

    def __init__(self, num_classes, *, two_heads=True):
        super().__init__()
        from torchvision.models import resnet18

        backbone = resnet18(weights=None)
        backbone.fc = nn.Identity()
        self.backbone = backbone
        self.pcc = nn.Linear(512, num_classes)
        self.ncc = nn.Linear(512, num_classes) if two_heads else None

    def forward(self, x):
        f = self.backbone(x)
        return self.pcc(f), (self.ncc(f) if self.ncc is not None else None)


def old_method_loss(net, x_w, x_s, y, *, method, warm, k, num_classes, nl_gen):
    """fernoise.train.stage.method_loss as of a0c243c, verbatim but for ``amp`` (always off here)."""
    n = x_w.shape[0]
    if x_s is not None:
        pcc, ncc = net(torch.cat([x_w, x_s]))
        pcc_w, ncc_w, ncc_s = pcc[:n], ncc[:n], ncc[n:]
    else:
        pcc_w, ncc_w = net(x_w)
    if warm or method == "ce":
        loss_s = losses.cross_entropy(pcc_w, y)
        return loss_s, loss_s, None, None, None, pcc_w
    if method == "nl":
        ybar = losses.complementary_labels(y, num_classes, nl_gen)
        return losses.negative_learning_loss(pcc_w, ybar), None, None, None, None, pcc_w
    p_w = F.softmax(pcc_w.detach().float(), dim=1)
    thresholds = losses.class_thresholds(p_w, y, num_classes)
    conf = losses.confident_mask(p_w, y, thresholds)
    loss_s = losses.supervised_loss(pcc_w, y, conf)
    if method == "pc":
        return loss_s, loss_s, None, conf, thresholds, pcc_w
    loss_c = losses.consistency_loss(ncc_w, ncc_s, ~conf, k)
    return loss_s + loss_c, loss_s, loss_c, conf, thresholds, pcc_w


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and bool(torch.equal(torch.nan_to_num(a, nan=-9.0), torch.nan_to_num(b, nan=-9.0)))
    )


@pytest.mark.parametrize("method", ["ce", "pc", "nl", "ncctfer"])
@pytest.mark.parametrize("warm", [True, False])
def test_plugin_losses_equal_the_old_method_loss_exactly(method, warm):
    C, n, k = 7, 12, 3
    torch.manual_seed(11)
    old = OldFerNet(C, two_heads=method == "ncctfer")
    m = methods.create(
        method,
        methods.make_params(method, {"--k": k} if method == "ncctfer" else {}),
        num_classes=C,
        n_rows=50,
    )
    torch.manual_seed(11)
    new = methods.build_model(m)
    assert all(
        torch.equal(a, b)
        for a, b in zip(old.state_dict().values(), new.state_dict().values(), strict=True)
    )
    g = torch.Generator().manual_seed(5)
    x_w, x_s = torch.randn(n, 3, 32, 32, generator=g), torch.randn(n, 3, 32, 32, generator=g)
    y = torch.randint(0, C, (n,), generator=g)
    strong = method == "ncctfer" and not warm
    loss, loss_s, loss_c, conf, thr, logits = old_method_loss(
        old,
        x_w,
        x_s if strong else None,
        y,
        method=method,
        warm=warm,
        k=k,
        num_classes=C,
        nl_gen=torch.Generator().manual_seed(9),
    )
    views = {"weak": x_w, "strong": x_s} if strong else {"weak": x_w}
    assert tuple(views) == m.views_for(warm=warm)
    out = new(
        m.loss, views, y, torch.arange(n), epoch=2, warm=warm, gen=torch.Generator().manual_seed(9)
    )
    assert _same(out.loss, loss) and _same(out.logits, logits)
    assert _same(out.parts.get("s"), loss_s) and _same(out.parts.get("c"), loss_c)
    assert _same(out.selected, conf) and _same(out.thresholds, thr)
    if method == "nl" and not warm:
        assert _same(out.parts["nl"], loss)
    loss.backward()
    out.loss.backward()
    for (name, a), b in zip(old.named_parameters(), new.parameters(), strict=True):
        assert _same(a.grad, b.grad), name


# ----------------------------------------------------------------------------- the new readings
def _model(method, C=4, **flags):
    m = methods.create(method, methods.get(method).Params(**flags), num_classes=C, n_rows=10)
    torch.manual_seed(0)
    return m, methods.build_model(m)


def test_batch_threshold_falls_back_to_cross_entropy_when_nothing_is_confident():
    from fernoise.methods.pc import confident_step

    logits = torch.log(torch.tensor([[0.875, 0.125], [0.25, 0.75], [0.25, 0.75]]))
    y = torch.tensor([1, 0, 0])
    loss, conf, t = confident_step(logits, y, 2, "batch")
    assert conf.tolist() == [False, False, False] and torch.allclose(
        t, torch.tensor([0.4583333, 0.5416667])
    )
    assert math.isclose(loss.item(), losses.cross_entropy(logits, y).item(), rel_tol=1e-7)
    loss, conf, t = confident_step(
        logits, y, 2, "labelled"
    )  # the paper's reading keeps one per class
    assert conf.tolist() == [True, True, True]


def test_ncctfer_separate_bn_views_runs_two_passes():
    from fernoise.methods.pc import confident_step

    m, net = _model("ncctfer", bn_views="separate", k=2)
    g = torch.Generator().manual_seed(1)
    views = {
        "weak": torch.randn(6, 3, 32, 32, generator=g),
        "strong": torch.randn(6, 3, 32, 32, generator=g),
    }
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    out = net(m.loss, views, y, torch.arange(6), epoch=2, warm=False, gen=torch.Generator())
    f_w, f_s = net.features(views["weak"]), net.features(views["strong"])
    _, conf, _ = confident_step(net.pcc(f_w), y, 4, "labelled")
    want_c = losses.consistency_loss(net.ncc(f_w), net.ncc(f_s), ~conf, 2)
    assert torch.allclose(out.parts["c"], want_c, atol=1e-6) and torch.equal(out.selected, conf)
    joint = methods.create("ncctfer", methods.make_params("ncctfer", {"--k": 2}), num_classes=4)
    out_j = net(joint.loss, views, y, torch.arange(6), epoch=2, warm=False, gen=torch.Generator())
    assert not torch.allclose(out_j.logits, out.logits)  # BatchNorm statistics of one pass vs two


def test_gce_sce_elr_losses_and_parts():
    g = torch.Generator().manual_seed(2)
    x = {"weak": torch.randn(5, 3, 32, 32, generator=g)}
    y = torch.tensor([0, 1, 2, 3, 0])
    for name, parts in (("gce", {"gce"}), ("sce", {"ce", "rce"}), ("elr", {"ce", "elr"})):
        m, net = _model(name)
        out = net(m.loss, x, y, torch.arange(5), epoch=2, warm=False, gen=torch.Generator())
        assert set(out.parts) == parts and set(out.parts) <= set(m.parts)
        assert torch.allclose(out.loss, sum(out.parts.values()), atol=1e-6)
        warm = net(m.loss, x, y, torch.arange(5), epoch=1, warm=True, gen=torch.Generator())
        assert set(warm.parts) == {"s"}
        assert torch.allclose(
            warm.loss, losses.cross_entropy(m.logits(net, x["weak"]), y), atol=1e-6
        )
    m, net = _model("sce")
    logits = m.logits(net, x["weak"])
    out = net(m.loss, x, y, torch.arange(5), epoch=2, warm=False, gen=torch.Generator())
    assert torch.allclose(out.parts["ce"], 0.1 * losses.cross_entropy(logits, y))
    assert torch.allclose(out.parts["rce"], losses.reverse_cross_entropy(logits, y, math.log(1e-4)))


def test_elr_targets_are_per_sample_state():
    m, net = _model("elr")
    assert m.state_dict()["targets"].shape == (10, 4) and not m.state_dict()["targets"].any()
    x = {"weak": torch.randn(3, 3, 32, 32)}
    idx = torch.tensor([7, 2, 5])
    y = torch.tensor([0, 1, 2])
    with torch.no_grad():
        p = losses.elr_probs(m.logits(net, x["weak"]))
        net(
            m.loss, x, y, idx, epoch=1, warm=True, gen=torch.Generator()
        )  # warm-up updates them too
    t = m.state_dict()["targets"]
    assert torch.allclose(t[idx], 0.3 * p / p.sum(1, keepdim=True), atol=1e-7)
    assert not t[[0, 1, 3, 4, 6, 8, 9]].any()
    fresh = methods.create("elr", num_classes=4, n_rows=10)
    assert fresh.load_state_dict({"targets": t.clone()}, n_rows=10)
    assert torch.equal(fresh.state_dict()["targets"], t)
    other = methods.create("elr", num_classes=4, n_rows=11)
    assert not other.load_state_dict({"targets": t.clone()}, n_rows=11)  # size mismatch: start over
    assert not other.state_dict()["targets"].any()
