"""Co-teaching against the official code (bhanML/Co-teaching): the loss on fixed tensors, the
forget-rate ramp, the lr/beta1 plan, and a --pretrained start in both of its backbones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from factories import RUNNING, SIZE, make_manifest, read_metrics, resnet18_state, run_of
from typer.testing import CliRunner

from fernoise import methods
from fernoise.cli.app import app
from fernoise.methods import coteaching as ct

C = 4


def official_loss_coteaching(y_1, y_2, t, forget_rate, ind, noise_or_not):
    """loss.py's ``loss_coteaching``, transcribed for today's torch (``reduce=False`` ->
    ``reduction="none"``, numpy argsort of the losses, ``.cuda()`` dropped)."""
    loss_1 = F.cross_entropy(y_1, t, reduction="none")
    ind_1_sorted = torch.from_numpy(np.argsort(loss_1.data.numpy(), kind="stable"))
    loss_2 = F.cross_entropy(y_2, t, reduction="none")
    ind_2_sorted = torch.from_numpy(np.argsort(loss_2.data.numpy(), kind="stable"))
    remember_rate = 1 - forget_rate
    num_remember = int(remember_rate * len(loss_1[ind_1_sorted]))
    pure_ratio_1 = np.sum(noise_or_not[ind[ind_1_sorted[:num_remember]]]) / float(num_remember)
    ind_1_update = ind_1_sorted[:num_remember]
    ind_2_update = ind_2_sorted[:num_remember]
    loss_1_update = F.cross_entropy(y_1[ind_2_update], t[ind_2_update])
    loss_2_update = F.cross_entropy(y_2[ind_1_update], t[ind_1_update])
    return (
        torch.sum(loss_1_update) / num_remember,
        torch.sum(loss_2_update) / num_remember,
        pure_ratio_1,
        ind_1_update,
        ind_2_update,
    )


class _Fixed(torch.nn.Module):
    """Stands in for the two networks: network 1's logits are the input, network 2's a fixed
    tensor (identity heads), so the method's loss sees exactly the given logits."""

    def __init__(self, logits2: torch.Tensor):
        super().__init__()
        self.logits2 = logits2
        self.pcc = torch.nn.Identity()
        self.pcc2 = torch.nn.Identity()

    def features(self, x):
        return x

    def backbone2(self, x):
        return self.logits2


@pytest.mark.parametrize("epoch", [1, 4, 12])
def test_loss_equals_the_official_loss_coteaching(epoch):
    g = torch.Generator().manual_seed(epoch)
    n = 23
    logits1 = torch.randn(n, C, generator=g, requires_grad=True)
    logits2 = torch.randn(n, C, generator=g, requires_grad=True)
    y = torch.randint(0, C, (n,), generator=g)
    params = ct.CoteachingParams(forget_rate=0.4, num_gradual=10)
    method = methods.create("coteaching", params, num_classes=C, n_rows=n)
    out = method.loss(
        _Fixed(logits2), {"weak": logits1}, y, torch.arange(n), epoch=epoch, warm=False, gen=g
    )
    rate = 0.4 * min(epoch, 9) / 9 if epoch < 10 else 0.4
    clean = np.arange(n) % 3 != 0
    l1, l2, pure1, keep1, keep2 = official_loss_coteaching(
        logits1, logits2, y, rate, np.arange(n), clean
    )
    assert out.parts["net1"].item() == pytest.approx(l1.item(), rel=1e-6)
    assert out.parts["net2"].item() == pytest.approx(l2.item(), rel=1e-6)
    assert out.loss.item() == pytest.approx((l1 + l2).item(), rel=1e-6)
    assert set(np.flatnonzero(out.selected.numpy())) == set(keep1.tolist())
    assert out.selected.sum().item() == int((1 - rate) * n)
    assert clean[out.selected.numpy()].mean() == pytest.approx(pure1)
    # Each network's gradient comes only from the other's selection.
    out.loss.backward()
    rows1 = np.flatnonzero(logits1.grad.abs().sum(1).numpy() > 0)  # network 1 trained on
    rows2 = np.flatnonzero(logits2.grad.abs().sum(1).numpy() > 0)
    assert set(rows1) == set(keep2.tolist()) and set(rows2) == set(keep1.tolist())


def official_plans(n_epoch=200, epoch_decay_start=80, lr=0.001, forget_rate=0.2, tk=10, c=1):
    """main.py's alpha_plan, beta1_plan and rate_schedule."""
    mom1, mom2 = 0.9, 0.1
    alpha_plan = [lr] * n_epoch
    beta1_plan = [mom1] * n_epoch
    for i in range(epoch_decay_start, n_epoch):
        alpha_plan[i] = float(n_epoch - i) / (n_epoch - epoch_decay_start) * lr
        beta1_plan[i] = mom2
    rate_schedule = np.ones(n_epoch) * forget_rate
    rate_schedule[:tk] = np.linspace(0, forget_rate**c, tk)
    return alpha_plan, beta1_plan, rate_schedule


@pytest.mark.parametrize("forget,tk,c", [(0.2, 10, 1.0), (0.5, 5, 2.0), (0.35, 15, 0.5)])
def test_schedules_equal_the_official_plans(forget, tk, c):
    alpha, beta1, rate = official_plans(forget_rate=forget, tk=tk, c=c)
    params = ct.CoteachingParams(forget_rate=forget, num_gradual=tk, exponent=c)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=0.001)
    sched = ct.Schedule(opt, params, epochs=199)  # the official 200 = its epochs 1..199
    for epoch in range(1, 200):  # the official loop: for epoch in range(1, n_epoch)
        assert ct.forget_rate(params, epoch) == pytest.approx(rate[epoch], abs=1e-12)
        assert opt.param_groups[0]["lr"] == pytest.approx(alpha[epoch], rel=1e-12)
        assert opt.param_groups[0]["betas"] == (beta1[epoch], 0.999)
        sched.step()


def test_the_schedule_resumes_from_its_state():
    params = ct.CoteachingParams(epoch_decay_start=3)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=0.01)
    sched = ct.Schedule(opt, params, epochs=6)
    for _ in range(3):
        sched.step()
    state = sched.state_dict()
    opt2 = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=0.01)
    ct.Schedule(opt2, params, epochs=6).load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == pytest.approx(0.01 * 3 / 4)
    assert opt2.param_groups[0]["betas"] == opt.param_groups[0]["betas"] == (0.1, 0.999)


@pytest.mark.parametrize(
    "flag,value,words",
    [
        ("--coteaching-forget-rate", "1", "expected a value in [0, 1)"),
        ("--coteaching-tk", "0", "expected a value in [1, inf]"),
    ],
)
def test_bad_flags_are_one_line(flag, value, words, tmp_path):
    man = make_manifest(tmp_path / "d", n=10)
    res = CliRunner().invoke(app, ["train", str(man), "--method", "coteaching", flag, value])
    assert res.exit_code == 2 and words in res.output and flag in res.output, res.output


def test_pretrained_fills_both_backbones_and_the_run_selects(tmp_path, workspace):
    man = make_manifest(tmp_path / "d", n=60, noise=0.5)
    start = resnet18_state(7)
    torch.save(start, tmp_path / "start.pth")
    args = [
        "--method",
        "coteaching",
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
        "--lr-backbone",
        "1e-12",
        "--coteaching-forget-rate",
        "0.5",
        "--coteaching-tk",
        "3",
    ]
    res = CliRunner().invoke(
        app, ["train", str(man), *args, "--pretrained", str(tmp_path / "start.pth")]
    )
    run = run_of(res)
    model = torch.load(run / "model.pt", weights_only=True)
    learned = [k for k in start if not k.endswith(RUNNING) and not k.startswith("fc.")]
    for name in ("backbone", "backbone2"):
        for k in learned:
            assert torch.allclose(model[f"{name}.{k}"], start[k], rtol=0, atol=1e-9), (name, k)
    rows = read_metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2] and not any(r["warmup"] for r in rows)
    # The ramp linspace(0, 0.5, 3) at the official epochs 1 and 2: each network keeps
    # int((1 - R) * B) of every batch of B rows.
    n = rows[0]["samples"]
    sizes = [16] * (n // 16) + ([n % 16] if n % 16 >= 2 else [])
    assert sum(sizes) == n and len(sizes) >= 2
    for row, rate in zip(rows, (0.25, 0.5), strict=True):
        assert row["confident_frac"] == pytest.approx(sum(int((1 - rate) * b) for b in sizes) / n)
    assert rows[1]["confident_precision"] is not None and rows[1]["loss_net2"] is not None
