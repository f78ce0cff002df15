"""DivideMix (``fernoise/methods/dividemix.py``): its pieces against the official formulas
(LiJunnan1992/DivideMix ``Train_cifar.py``, transcribed below on fixed tensors), the Gaussian
mixture division against sklearn, a run that trains both phases and logs the division, and a
kill -9 resume that equals an uninterrupted run."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from factories import SIZE, TIMING, make_manifest, read_metrics
from killing import kill_after_epochs, resume
from sklearn.mixture import GaussianMixture

from fernoise import methods
from fernoise.errors import FernoiseError
from fernoise.methods import dividemix as dm
from fernoise.train.stage import TrainConfig, train

C = 4


def fixed(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, C, generator=g, dtype=torch.float64)


# ----------------------------------------------------------------------------- the pieces
def test_co_guess_and_co_refine_are_the_official_targets():
    T = 0.5
    u11, u12, u21, u22 = (torch.softmax(fixed(seed=s), 1) for s in range(4))
    # Train_cifar.py train(): co-guessing
    pu = (u11 + u12 + u21 + u22) / 4
    ptu = pu ** (1 / T)
    official_u = ptu / ptu.sum(dim=1, keepdim=True)
    assert torch.allclose(dm.co_guess([u11, u12, u21, u22], T), official_u, rtol=1e-12, atol=0)
    # co-refinement
    x1, x2 = torch.softmax(fixed(seed=5), 1), torch.softmax(fixed(seed=6), 1)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    onehot = torch.zeros(6, C, dtype=torch.float64).scatter_(1, labels.view(-1, 1), 1)
    w = torch.tensor([0.9, 0.1, 0.5, 0.7, 0.0, 1.0], dtype=torch.float64).view(-1, 1)
    px = (x1 + x2) / 2
    px = w * onehot + (1 - w) * px
    ptx = px ** (1 / T)
    official_x = ptx / ptx.sum(dim=1, keepdim=True)
    got = dm.co_refine(x1, x2, onehot, w, T)
    assert torch.allclose(got, official_x, rtol=1e-12, atol=0)
    assert got[5].argmax() == 1 and got[5, 1] == pytest.approx(1.0)  # w = 1: the given label
    sharp = dm.sharpen(torch.tensor([[0.6, 0.4]], dtype=torch.float64), 0.5)
    assert sharp[0].tolist() == pytest.approx([0.36 / 0.52, 0.16 / 0.52], rel=1e-12)


def test_semi_loss_and_penalty_are_the_official_ones():
    logits_x, logits_u = fixed(seed=1), fixed(seed=2)
    t_x, t_u = torch.softmax(fixed(seed=3), 1), torch.softmax(fixed(seed=4), 1)
    # SemiLoss.__call__
    official_lx = -torch.mean(torch.sum(F.log_softmax(logits_x, dim=1) * t_x, dim=1))
    official_lu = torch.mean((torch.softmax(logits_u, dim=1) - t_u) ** 2)
    lx, lu = dm.semi_loss(logits_x, t_x, logits_u, t_u)
    assert lx.item() == pytest.approx(official_lx.item(), rel=1e-6)
    assert lu.item() == pytest.approx(official_lu.item(), rel=1e-6)
    # the regulariser with the official uniform prior
    logits = torch.cat([logits_x, logits_u])
    prior = torch.ones(C, dtype=torch.float64) / C
    pred_mean = torch.softmax(logits, dim=1).mean(0)
    official = torch.sum(prior * torch.log(prior / pred_mean))
    assert dm.penalty(logits, prior).item() == pytest.approx(official.item(), rel=1e-6)
    # a marginal prior with an empty class: 0 log 0 = 0, finite
    marginal = torch.tensor([0.5, 0.3, 0.2, 0.0], dtype=torch.float64)
    expected = sum(
        p * np.log(p / m) for p, m in zip([0.5, 0.3, 0.2], pred_mean.tolist()[:3], strict=True)
    )
    assert dm.penalty(logits, marginal).item() == pytest.approx(expected, rel=1e-6)


def test_the_lambda_ramp_lr_step_and_scaled_epochs_are_the_official_ones():
    # linear_rampup(current, warm_up, rampup_length=16) with lambda_u 25
    def official(current, warm_up, rampup_length=16):
        return 25 * float(np.clip((current - warm_up) / rampup_length, 0.0, 1.0))

    for current in (0.0, 9.5, 10.0, 10.25, 17.0, 26.0, 40.0):
        assert dm.ramp(current, 10, 16, 25.0) == pytest.approx(official(current, 10), rel=1e-12)
    # official epoch = fernoise epoch - 1; lr / 10 from official epoch 150 of 300 (301 epochs)
    assert [dm.lr_factor(e, 301) for e in (1, 150, 151, 301)] == [1.0, 1.0, 0.1, 0.1]
    assert [dm.lr_factor(e, 40) for e in (20, 21)] == [1.0, 0.1]  # 20 epochs each
    assert dm.scaled(10, 301) == 10 and dm.scaled(16, 301) == 16
    assert dm.scaled(10, 40) == 2 and dm.scaled(16, 40) == 3 and dm.scaled(10, 2) == 1
    assert methods.get("dividemix").default_warmup(40) == 2


def test_the_mixture_division_equals_sklearn_global_and_per_class():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [60, 30, 1])  # class 2 has one row: the global posterior
    # class 1 (rare, hard) has large losses throughout; a few noisy rows in each class
    losses = np.concatenate([rng.gamma(1.0, 0.2, 60), 2.0 + rng.gamma(1.0, 0.2, 30), [0.1]])
    losses[:6] += 4.0
    losses[60:63] += 4.0
    seed = [3, 4, 1]
    got_global = dm.clean_probability(losses, labels, per_class=False, seed=seed)
    got_class = dm.clean_probability(losses, labels, per_class=True, seed=seed)

    x = ((losses - losses.min()) / (losses.max() - losses.min())).reshape(-1, 1)

    def official(values, c):  # eval_train(), with the seed fernoise fixes
        state = int(np.random.default_rng([*seed, c + 1]).integers(2**31))
        gmm = GaussianMixture(
            n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=state
        )
        gmm.fit(values)
        return gmm.predict_proba(values)[:, gmm.means_.argmin()]

    expected = official(x, -1)
    np.testing.assert_allclose(got_global, expected, rtol=1e-12)
    for c in (0, 1):
        rows = labels == c
        np.testing.assert_allclose(got_class[rows], official(x[rows], c), rtol=1e-12)
    assert got_class[90] == expected[90]
    # the global mixture throws the hard class out; per class keeps its small-loss rows
    assert (got_global[63:90] > 0.5).mean() < 0.1
    assert (got_class[63:90] > 0.5).mean() > 0.9 and (got_class[60:63] > 0.5).sum() == 0


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [
        ("gmm", "local", "--dividemix-gmm"),
        ("prior", "peaked", "--dividemix-prior"),
        ("p_threshold", 1.0, "--dividemix-p-threshold"),
        ("rampup", 0, "--dividemix-rampup"),
        ("temperature", 0.0, "--dividemix-t"),
        ("alpha", -1.0, "--dividemix-alpha"),
    ],
)
def test_flags_are_checked(field, value, flag):
    with pytest.raises(FernoiseError) as e:
        dm.DivideMixParams(**{field: value})
    assert e.value.flag == flag


# ----------------------------------------------------------------------------- runs
def cfg(**kw):
    base = dict(
        method="dividemix",
        epochs=3,
        warmup=1,
        batch_size=8,
        image_size=SIZE,
        workers=0,
        precision="fp32",
        device="cpu",
    )
    return TrainConfig(**{**base, **kw})


def test_a_run_warms_up_then_trains_both_phases_and_logs_the_division(tmp_path):
    data = make_manifest(tmp_path / "data", n=60, noise=0.3)
    events: list[dict] = []
    run = train(data, cfg(), runs_dir=tmp_path / "runs", progress=events.append).output
    rows = read_metrics(run)
    assert [r["warmup"] for r in rows] == [True, False, False]
    n_train = json.loads((run / "config.json").read_text())["n_train"]
    starts = [e for e in events if e["event"] == "epoch_start"]
    # warm-up: two passes over the training rows (network 1's, then network 2's)
    assert starts[0]["batches"] == 2 * -(-n_train // 8)
    assert rows[0]["samples"] == 2 * n_train and rows[0]["loss_x"] is None
    assert rows[0]["confident_frac"] is None
    for r in rows[1:]:
        assert r["loss_x"] is not None and r["loss_u"] is not None and r["loss_penalty"] >= 0
        assert 0 < r["confident_frac"] < 1
        # over the training rows once (the division), not over the batches' rows
        assert r["confident_frac"] * n_train == pytest.approx(round(r["confident_frac"] * n_train))
        assert r["confident_precision"] is not None and r["confident_recall"] is not None
    assert rows[1]["loss_s"] is None  # no warm-up loss after the warm-up
    # official num_epochs 2: lr / 10 from official epoch 1 (fernoise 2) on
    assert [r["lr_backbone"] for r in rows] == pytest.approx([0.02, 0.002, 0.002])
    model = torch.load(run / "model.pt", weights_only=True)
    assert {"backbone2.conv1.weight", "pcc2.weight", "pcc.weight"} <= set(model)


@pytest.mark.slow
def test_kill_9_after_epoch_2_then_resume_equals_an_uninterrupted_run(tmp_path, workspace):
    data = make_manifest(tmp_path / "data", n=60, noise=0.3)
    env = {**os.environ, "FERNOISE_WORKSPACE": str(workspace)}
    killed = [sys.executable, "-m", "fernoise.cli.app", "train", str(data)]
    killed += ["--method", "dividemix", "--epochs", "3", "--warmup", "1", "--batch-size", "8"]
    killed += ["--image-size", str(SIZE), "--workers", "1", "--runs-dir", str(tmp_path / "a")]
    killed += ["--dividemix-prior", "marginal"]
    a = kill_after_epochs(killed, env, tmp_path / "a", epochs=2, timeout=300)
    assert not (a / "model.pt").exists()
    resume(killed, env)
    params = methods.make_params("dividemix", {"--dividemix-prior": "marginal"})
    same = TrainConfig(
        method="dividemix", method_params=params, epochs=3, warmup=1, batch_size=8,
        image_size=SIZE, workers=1,
    )  # fmt: skip
    full = train(data, same, runs_dir=tmp_path / "b").output

    def strip(run: Path) -> list[dict]:
        return [{k: v for k, v in m.items() if k not in TIMING} for m in read_metrics(run)]

    assert full.name == a.name
    assert len(strip(a)) == 3 and strip(a) == strip(full)
    sa = torch.load(a / "model.pt", weights_only=True)
    sb = torch.load(full / "model.pt", weights_only=True)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
