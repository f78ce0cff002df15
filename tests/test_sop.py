"""SOP+ against the official code (shengliu66/SOP ``model/loss.py``): the loss, its gradients
and the u/v SGD step on fixed tensors; the balance and consistency terms by hand; a 2-epoch run
that logs its selection; resume after kill -9."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from factories import SIZE, TIMING, make_manifest, read_metrics, run_of
from killing import kill_after_epochs, resume
from typer.testing import CliRunner

from fernoise import methods
from fernoise.cli.app import app
from fernoise.methods import sop
from fernoise.train.stage import TrainConfig, train

C = 4
N_ROWS = 10


class OfficialOverparametrizationLoss(torch.nn.Module):
    """``overparametrization_loss`` of model/loss.py, transcribed: ``num_classes`` for
    ``config['num_classes']``, no ``.cuda()``, ``u``/``v`` set by the test instead of
    ``init_param``."""

    def __init__(self, num_examp, num_classes=10, ratio_consistency=0, ratio_balance=0):
        super().__init__()
        self.num_classes = num_classes
        self.num_examp = num_examp
        self.ratio_consistency = ratio_consistency
        self.ratio_balance = ratio_balance
        self.u = torch.nn.Parameter(torch.empty(num_examp, 1, dtype=torch.float32))
        self.v = torch.nn.Parameter(torch.empty(num_examp, num_classes, dtype=torch.float32))

    def forward(self, index, outputs, label):
        if len(outputs) > len(index):
            output, output2 = torch.chunk(outputs, 2)
        else:
            output = outputs
        eps = 1e-4
        U_square = self.u[index] ** 2 * label
        V_square = self.v[index] ** 2 * (1 - label)
        U_square = torch.clamp(U_square, 0, 1)
        V_square = torch.clamp(V_square, 0, 1)
        original_prediction = F.softmax(output, dim=1)
        prediction = torch.clamp(original_prediction + U_square - V_square.detach(), min=eps)
        prediction = F.normalize(prediction, p=1, eps=eps)
        prediction = torch.clamp(prediction, min=eps, max=1.0)
        label_one_hot = self.soft_to_hard(output.detach())
        MSE_loss = F.mse_loss((label_one_hot + U_square - V_square), label, reduction="sum") / len(
            label
        )
        loss = torch.mean(-torch.sum((label) * torch.log(prediction), dim=-1))
        loss += MSE_loss
        if self.ratio_balance > 0:
            avg_prediction = torch.mean(prediction, dim=0)
            prior_distr = 1.0 / self.num_classes * torch.ones_like(avg_prediction)
            avg_prediction = torch.clamp(avg_prediction, min=eps, max=1.0)
            balance_kl = torch.mean(-(prior_distr * torch.log(avg_prediction)).sum(dim=0))
            loss += self.ratio_balance * balance_kl
        if (len(outputs) > len(index)) and (self.ratio_consistency > 0):
            consistency_loss = self.consistency_loss(index, output, output2)
            loss += self.ratio_consistency * torch.mean(consistency_loss)
        return loss

    def consistency_loss(self, index, output1, output2):
        preds1 = F.softmax(output1, dim=1).detach()
        preds2 = F.log_softmax(output2, dim=1)
        loss_kldiv = F.kl_div(preds2, preds1, reduction="none")
        loss_kldiv = torch.sum(loss_kldiv, dim=1)
        return loss_kldiv

    def soft_to_hard(self, x):
        with torch.no_grad():
            return (torch.zeros(len(x), self.num_classes)).scatter_(
                1, (x.argmax(dim=1)).view(-1, 1), 1
            )


class _Identity(torch.nn.Module):
    """Stands in for the network: the views are the logits."""

    def __init__(self):
        super().__init__()
        self.pcc = torch.nn.Identity()

    def features(self, x):
        return x


def _fixed(seed: int, batch: int):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(N_ROWS, 1, generator=g) * 0.8  # some u^2 above 1: the clamp is exercised
    v = torch.randn(N_ROWS, C, generator=g) * 0.8
    weak = torch.randn(batch, C, generator=g) * 2
    strong = torch.randn(batch, C, generator=g) * 2
    y = torch.randint(0, C, (batch,), generator=g)
    return u, v, weak, strong, y


def _method(**kw) -> sop.SOP:
    return methods.create("sop", sop.SOPParams(**kw), num_classes=C, n_rows=N_ROWS)


def _run_method(method, u, v, weak, strong, y, idx):
    """The method's loss and step on the given logits; returns (LossOut, weak, strong leaves)."""
    method.u.copy_(u)
    method.v.copy_(v)
    zw = weak.clone().requires_grad_(True)
    zs = strong.clone().requires_grad_(True)
    views = {"weak": zw, "strong": zs}
    views = {k: views[k] for k in method.views_for(warm=False)}
    out = method.loss(
        _Identity(), views, y, idx, epoch=1, warm=False, gen=torch.Generator().manual_seed(0)
    )
    out.loss.backward()
    return out, zw, zs


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "balance,consistency,idx",
    [
        (0.0, 0.0, [7, 2, 5, 0, 9, 3]),
        (0.1, 0.9, [7, 2, 5, 0, 9, 3]),
        (0.3, 0.5, [1, 8, 4, 6, 2]),
        (0.1, 0.9, [4, 1, 4, 7]),  # a row twice in one batch: its gradients add up
    ],
)
def test_loss_gradients_and_step_equal_the_official_code(balance, consistency, idx):
    idx_t = torch.tensor(idx)
    u, v, weak, strong, y = _fixed(len(idx) + int(10 * consistency), len(idx))
    lr_u, lr_v = 1.0, 10.0
    official = OfficialOverparametrizationLoss(N_ROWS, C, consistency, balance)
    with torch.no_grad():
        official.u.copy_(u)
        official.v.copy_(v)
    outputs = (torch.cat([weak, strong]) if consistency > 0 else weak.clone()).requires_grad_(True)
    ref = official(idx_t, outputs, F.one_hot(y, C).float())
    ref.backward()
    # train.py's optimizer_overparametrization: SGD, lr 1, momentum 0, wd 0; groups lr_u, lr_v
    torch.optim.SGD(
        [
            {"params": official.u, "lr": lr_u, "weight_decay": 0},
            {"params": official.v, "lr": lr_v, "weight_decay": 0},
        ],
        lr=1,
        momentum=0,
        weight_decay=0,
    ).step()

    method = _method(balance=balance, consistency=consistency, lr_u=lr_u, lr_v=lr_v)
    out, zw, zs = _run_method(method, u, v, weak, strong, y, idx_t)
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-6)
    _close(zw.grad, outputs.grad[: len(idx)])
    if consistency > 0:
        _close(zs.grad, outputs.grad[len(idx) :])
    rows, u_leaf, v_leaf = method._pending
    _close(u_leaf.grad, official.u.grad[rows])
    _close(v_leaf.grad, official.v.grad[rows])
    method.after_step(out, y, idx_t, epoch=1)
    _close(method.u, official.u.detach())
    _close(method.v, official.v.detach())
    untouched = torch.ones(N_ROWS, dtype=torch.bool)
    untouched[idx_t] = False
    assert torch.equal(method.u[untouched], u[untouched])
    assert torch.equal(method.v[untouched], v[untouched])
    assert torch.equal(out.selected, (u[idx_t, 0] ** 2).clamp(max=1) < 0.5)


def test_one_step_of_u_and_v_by_hand():
    """CE and MSE only, no clamp active: with ``q = softmax + U - V``, ``s = sum q``,
    ``dL/du = (-2u/q_y + 2u/s + 4u (h_y + u^2 - 1)) / B``,
    ``dL/dv_k = -4 v_k (h_k - v_k^2) / B`` (k != y; ``V`` is detached inside ``p~``)."""
    z = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.3, 1.2]])
    y = torch.tensor([0, 0])  # row 0 predicted as labelled, row 1 not
    u = torch.tensor([[0.3], [0.5]])
    v = torch.tensor([[0.0, 0.2, 0.1], [0.0, 0.15, 0.4]])
    method = methods.create(
        "sop", sop.SOPParams(balance=0, consistency=0, lr_u=1.0, lr_v=10.0), num_classes=3, n_rows=2
    )
    method.u.copy_(u)
    method.v.copy_(v)
    out = method.loss(
        _Identity(), {"weak": z}, y, torch.tensor([0, 1]), epoch=1, warm=False, gen=None
    )
    out.loss.backward()
    method.after_step(out, y, torch.tensor([0, 1]), epoch=1)
    sm = z.softmax(dim=1)
    for i in range(2):
        h = F.one_hot(z[i].argmax(), 3).float()
        vv = v[i] ** 2 * torch.tensor([0.0, 1.0, 1.0])
        q_y = sm[i, 0] + u[i, 0] ** 2
        s = 1 + u[i, 0] ** 2 - vv.sum()
        du = (-2 * u[i, 0] / q_y + 2 * u[i, 0] / s + 4 * u[i, 0] * (h[0] + u[i, 0] ** 2 - 1)) / 2
        dv = -4 * v[i] * (h - vv) / 2
        dv[0] = 0.0
        assert method.u[i, 0].item() == pytest.approx((u[i, 0] - 1.0 * du).item(), rel=1e-6)
        _close(method.v[i], v[i] - 10.0 * dv)
    ce = -(torch.log((sm[:, 0] + u[:, 0] ** 2) / (1 + u[:, 0] ** 2 - (v[:, 1:] ** 2).sum(1))))
    assert out.parts["ce"].item() == pytest.approx(ce.mean().item(), rel=1e-6)


def test_balance_and_consistency_terms_by_hand():
    """With u = v = 0, p~ = softmax(z): balance = w_b * -sum(prior log mean softmax); consistency
    = w_c * mean KL(softmax(z_weak) || softmax(z_strong)), whose gradient reaches only the strong
    logits: w_c (softmax(z_s) - softmax(z_w)) / B."""
    _, _, weak, strong, y = _fixed(3, 6)
    zero = torch.zeros(N_ROWS, 1), torch.zeros(N_ROWS, C)
    idx = torch.tensor([0, 1, 2, 3, 4, 5])
    out, zw, zs = _run_method(_method(balance=0.1, consistency=0.9), *zero, weak, strong, y, idx)
    pw, ps = weak.softmax(1), strong.softmax(1)
    balance = 0.1 * -(torch.log(pw.mean(0)) / C).sum()
    kl = (pw * (pw.log() - ps.log())).sum(1).mean()
    assert out.parts["balance"].item() == pytest.approx(balance.item(), rel=1e-6)
    assert out.parts["consistency"].item() == pytest.approx(0.9 * kl.item(), rel=1e-6)
    _close(zs.grad, 0.9 * (ps - pw) / 6)
    # the weak logits' gradient is the one without the consistency term
    _, zw0, _ = _run_method(_method(balance=0.1, consistency=0.0), *zero, weak, strong, y, idx)
    _close(zw.grad, zw0.grad)

    # --sop-prior marginal: the training rows' label frequencies
    method = _method(balance=0.1, consistency=0.9, prior="marginal")
    labels = torch.tensor([0, 0, 0, 1, 2, 2, -1, 3, 0, 1])
    method.start_epoch(None, SimpleNamespace(labels=labels, rows=[0, 1, 2, 3, 4, 5, 6, 8]))
    prior = torch.tensor([4.0, 1.0, 2.0, 0.0]) / 7
    assert torch.equal(method.prior, prior)
    out, _, _ = _run_method(method, *zero, weak, strong, y, idx)
    want = 0.1 * -(prior * torch.log(pw.mean(0))).sum()
    assert out.parts["balance"].item() == pytest.approx(want.item(), rel=1e-6)


def test_the_schedule_is_the_official_sgd_and_cosine():
    method = methods.create("sop", num_classes=C, n_rows=N_ROWS)
    model = methods.build_model(method)
    cfg = SimpleNamespace(lr_backbone=0.02, lr_head=0.02, weight_decay=1e-3, epochs=300)
    cfg.lr_decay = None
    opt, sched = method.configure_optimizers(model, cfg)
    assert isinstance(opt, torch.optim.SGD)
    assert all(g["momentum"] == 0.9 and g["weight_decay"] == 1e-3 for g in opt.param_groups)
    ref_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.02)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=300, eta_min=0.0002)
    for _ in range(300):
        assert opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"]
        opt.step()
        ref_opt.step()
        sched.step()
        ref.step()
    assert opt.param_groups[1]["lr"] == pytest.approx(0.0002)


@pytest.mark.parametrize(
    "flag,value,words",
    [
        ("--sop-prior", "flat", "expected one of uniform, marginal"),
        ("--sop-lr-u", "-1", "expected a value in [0, inf]"),
        ("--sop-consistency", "nan", "expected a value in [0, inf]"),
    ],
)
def test_bad_flags_are_one_line(flag, value, words, tmp_path):
    man = make_manifest(tmp_path / "d", n=10)
    res = CliRunner().invoke(app, ["train", str(man), "--method", "sop", flag, value])
    assert res.exit_code == 2 and words in res.output and flag in res.output, res.output


def _args(runs: Path) -> list[str]:
    return [
        "--method",
        "sop",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--image-size",
        str(SIZE),
        "--workers",
        "0",
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--keep-checkpoint",
        "--runs-dir",
        str(runs),
    ]


def test_two_epochs_log_the_selection_and_step_only_training_rows(tmp_path, workspace):
    man = make_manifest(tmp_path / "d", n=60, noise=0.5)
    run = run_of(CliRunner().invoke(app, ["train", str(man), *_args(tmp_path / "runs")]))
    rows = read_metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2] and not any(r["warmup"] for r in rows)
    # cosine over 2 epochs from 0.02 to 0.0002
    assert rows[0]["lr_backbone"] == pytest.approx(0.02)
    assert rows[1]["lr_backbone"] == pytest.approx(
        0.0002 + 0.0198 * (1 + math.cos(math.pi / 2)) / 2
    )
    for r in rows:
        for k in ("loss_ce", "loss_mse", "loss_balance", "loss_consistency"):
            assert r[k] is not None and r[k] >= 0, k
        assert 0 <= r["confident_frac"] <= 1
        assert r["confident_precision"] is not None and r["confident_recall"] is not None
    # u, v: every trained row moved from its N(0, 1e-8) draw, every other row kept it
    state = torch.load(run / "checkpoint.pt", weights_only=True)["method_state"]
    fresh = methods.create("sop", num_classes=7, n_rows=len(state["u"]))
    torch.manual_seed(0)
    methods.build_model(fresh)
    assert 0 < fresh.u.abs().max().item() < 1e-6
    moved = (state["u"] != fresh.u).any(1) | (state["v"] != fresh.v).any(1)
    assert moved.sum().item() == rows[0]["samples"]
    assert torch.equal(state["u"][~moved], fresh.u[~moved])


@pytest.mark.slow
def test_kill_9_then_resume_gives_identical_metrics_and_tables(tmp_path, workspace):
    data = make_manifest(tmp_path / "data", n=60, noise=0.4)
    env = {**os.environ, "FERNOISE_WORKSPACE": str(workspace)}
    args = _args(tmp_path / "a")
    args[args.index("--workers") + 1] = "1"
    killed = [sys.executable, "-m", "fernoise.cli.app", "train", str(data), *args]
    a = kill_after_epochs(killed, env, tmp_path / "a", timeout=180)  # mid-epoch 2
    assert not (a / "model.pt").exists()
    resume(killed, env)
    cfg = TrainConfig(
        method="sop",
        epochs=2,
        batch_size=16,
        image_size=SIZE,
        workers=1,
        precision="fp32",
        device="cpu",
        keep_checkpoint=True,
    )
    full = train(data, cfg, runs_dir=tmp_path / "b").output
    assert full.name == a.name

    def strip(run: Path) -> list[dict]:
        return [{k: v for k, v in m.items() if k not in TIMING} for m in read_metrics(run)]

    assert len(strip(a)) == 2 and strip(a) == strip(full)
    ma = torch.load(a / "model.pt", weights_only=True)
    mb = torch.load(full / "model.pt", weights_only=True)
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    sa = torch.load(a / "checkpoint.pt", weights_only=True)["method_state"]
    sb = torch.load(full / "checkpoint.pt", weights_only=True)["method_state"]
    assert torch.equal(sa["u"], sb["u"]) and torch.equal(sa["v"], sb["v"])
