"""The method API's hooks, used by test methods registered for one test: a view of their own
on both view paths, two draws of one view kind, several streams of rows, a pass before the
epoch, their own optimiser and schedule, and warnings in the run's output."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from factories import SIZE, make_manifest, read_metrics

from fernoise.methods import LossOut, Method, OptimDefaults, views
from fernoise.methods._registry import _FLAGS, _REGISTRY, register
from fernoise.train.augment import DeviceViews
from fernoise.train.config import TrainConfig
from fernoise.train.stage import train


@contextlib.contextmanager
def registered(cls, *view_names):
    """``cls`` in the method registry (and ``view_names`` left in the view registry) only for
    the ``with`` block, so no other test sees them."""
    register(cls)
    try:
        yield cls
    finally:
        _REGISTRY.pop(cls.name, None)
        for flag in [f for f, owners in _FLAGS.items() if cls.name in owners]:
            _FLAGS[flag].pop(cls.name)
            if not _FLAGS[flag]:
                del _FLAGS[flag]
        for name in view_names:
            views._VIEWS.pop(name, None)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return make_manifest(tmp_path_factory.mktemp("data"), n=40)


def cfg(method: str, **kw) -> TrainConfig:
    base = dict(
        method=method,
        epochs=2,
        warmup=0,
        batch_size=8,
        image_size=SIZE,
        workers=0,
        precision="fp32",
        device="cpu",
    )
    return TrainConfig(**{**base, **kw})


# ----------------------------------------------------------------------------- a view of its own
def _shift_sample(img, rng, env):
    k = int(rng.integers(0, 5))
    return torch.from_numpy(np.ascontiguousarray(np.roll(img, k, axis=1).transpose(2, 0, 1)))


def _shift_draw(rng, env):
    return (int(rng.integers(0, 5)),)


def _shift_batch(raw, draws, env):
    out = torch.stack([torch.roll(raw[i], d[0], dims=1) for i, d in enumerate(draws)])
    return out.permute(0, 3, 1, 2).contiguous()


class ShiftProbe(Method):
    """CE on a registered view ``shift`` (a horizontal roll by 0-4 px); records what it saw."""

    name = "shiftprobe"
    summary = "test: a view of its own"
    source = repo = "-"
    face_pretrained = False
    views = ("weak", "shift")
    optim = OptimDefaults(lr_backbone=1e-3, lr_head=1e-3, epochs=2, batch_size=8)
    warmup = 0
    seen: dict = {}

    def loss(self, model, views, y, idx, *, epoch, warm, gen) -> LossOut:
        for i, row in enumerate(idx.tolist()):
            ShiftProbe.seen[(epoch, row)] = views["shift"][i].double().sum().item()
        logits = self.logits(model, views["shift"])
        ce = F.cross_entropy(logits, y)
        return LossOut(ce, {"s": ce}, logits)


def test_a_view_registered_by_a_method_works_on_both_augment_paths(manifest, tmp_path):
    views.register_view("shift", sample=_shift_sample, draw=_shift_draw, batch=_shift_batch)
    got = {}
    with registered(ShiftProbe, "shift"):
        for path in ("device", "workers"):
            ShiftProbe.seen = {}
            run = train(manifest, cfg("shiftprobe", augment=path), runs_dir=tmp_path).output
            got[path] = (dict(ShiftProbe.seen), [r["loss"] for r in read_metrics(run)])
    seen_d, loss_d = got["device"]
    seen_w, loss_w = got["workers"]
    assert len(seen_d) == len(seen_w) > 60  # every training row, both epochs
    assert seen_d.keys() == seen_w.keys()
    assert max(abs(seen_d[k] - seen_w[k]) for k in seen_d) < 1e-3  # the same pixels
    assert loss_d == pytest.approx(loss_w, rel=1e-5)
    with pytest.raises(Exception, match="unknown view 'shift'"):
        views.get("shift")  # gone with the test method


def test_two_draws_of_one_kind_are_independent_and_equal_on_both_paths():
    rng0 = np.random.default_rng(0)
    images = rng0.integers(0, 256, (6, 24, 24, 3)).astype(np.uint8)
    seeds = rng0.integers(0, 2**63 - 1, size=60)
    positions = np.arange(60) % 6
    names = ("weak", "weak#2", "strong#2")
    dev = DeviceViews(images, 24, 10, torch.device("cpu"))(positions, seeds, names)
    env = dev_env = views.ViewEnv(24, views.RandAugment(24, 10))
    differ = 0
    for i, (pos, seed) in enumerate(zip(positions, seeds, strict=True)):
        ref = views.sample_views(images[pos], np.random.default_rng(int(seed)), names, env)
        for n in names:
            assert torch.equal(dev[n][i], ref[n]), (n, i)
        differ += not torch.equal(ref["weak"], ref["weak#2"])
        # strong#2 is RandAugment on weak#2: the generator after weak and weak#2 draws its ops.
        rng = np.random.default_rng(int(seed))
        views.sample_views(images[pos], rng, ("weak", "weak#2"), env)
        assert torch.equal(ref["strong#2"], dev_env.randaug(ref["weak#2"], rng))
    assert differ > 45  # 81 crops x 2 flips: two draws rarely coincide


# ----------------------------------------------------------------------------- streams, epoch pass
class StreamProbe(Method):
    """Two streams (even rows labelled, odd rows unlabelled with two weak draws), a pass over
    every training row before each epoch, SGD with a step schedule, a warning per epoch."""

    name = "streamprobe"
    summary = "test: streams and an epoch pass"
    source = repo = "-"
    face_pretrained = False
    views = ("weak",)
    optim = OptimDefaults(lr_backbone=1e-3, lr_head=1e-3, epochs=2, batch_size=8)
    parts = ("s", "u")
    warmup = 0
    record: dict = {}

    def epoch_rows(self, epoch, rows):
        return {"lab": rows[rows % 2 == 0], "unl": rows[rows % 2 == 1]}

    def views_for(self, *, warm, stream="train"):
        return ("weak",) if stream == "lab" else ("weak", "weak#2")

    def configure_optimizers(self, model, cfg):
        groups = self.param_groups(model, lr_backbone=cfg.lr_backbone, lr_head=cfg.lr_head)
        opt = torch.optim.SGD(groups, momentum=0.9)
        return opt, torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)

    def start_epoch(self, model, ctx):
        def fn(m, x, idx):
            return torch.stack([idx.float(), self.logits(m, x).float().logsumexp(1)], 1)

        got = ctx.predict(fn)
        StreamProbe.record.setdefault("pass", []).append((ctx.rows.copy(), got))
        self.warn(f"streamprobe: epoch {ctx.epoch} starts with {len(ctx.rows)} rows")

    def loss(self, model, views, y, idx, *, epoch, warm, gen) -> LossOut:
        assert set(views) == {"lab", "unl"} and set(views["unl"]) == {"weak", "weak#2"}
        for s in ("lab", "unl"):
            StreamProbe.record.setdefault((epoch, s), []).extend(idx[s].tolist())
            StreamProbe.record[(epoch, s, "batches")] = (
                StreamProbe.record.get((epoch, s, "batches"), 0) + 1
            )
        logits = self.logits(model, views["lab"]["weak"])
        ce = F.cross_entropy(logits, y["lab"])
        p1 = self.logits(model, views["unl"]["weak"]).softmax(1)
        p2 = self.logits(model, views["unl"]["weak#2"]).softmax(1)
        u = (p1 - p2).pow(2).mean()
        return LossOut(ce + u, {"s": ce.detach(), "u": u.detach()}, logits.detach())


def test_streams_an_epoch_pass_an_own_optimiser_and_warnings(manifest, tmp_path):
    StreamProbe.record = {}
    events = []
    with registered(StreamProbe):
        run = train(
            manifest, cfg("streamprobe", batch_size=6), runs_dir=tmp_path, progress=events.append
        ).output
    rec = StreamProbe.record
    rows_pass, got = rec["pass"][0]
    assert got.shape == (len(rows_pass), 2) and got.dtype == torch.float32
    assert torch.equal(got[:, 0], torch.from_numpy(rows_pass).float())  # in the rows' order
    assert torch.isfinite(got[:, 1]).all()
    even = sorted(r for r in rows_pass.tolist() if r % 2 == 0)
    odd = {r for r in rows_pass.tolist() if r % 2 == 1}
    for epoch in (1, 2):
        lab, unl = rec[(epoch, "lab")], rec[(epoch, "unl")]
        assert sorted(lab) == even  # the lead stream: each of its rows once
        assert set(unl) <= odd  # cycled to the lead's number of batches
        assert rec[(epoch, "unl", "batches")] == rec[(epoch, "lab", "batches")] == 3
    assert rec[(1, "lab")] != rec[(2, "lab")]  # reshuffled per epoch
    metrics = read_metrics(run)
    assert [m["lr_backbone"] for m in metrics] == [1e-3, 5e-4]  # its StepLR, not Adam's decay
    assert all(m["loss_u"] is not None and m["samples"] == len(even) for m in metrics)
    warned = [e["message"] for e in events if e["event"] == "warning"]
    assert f"streamprobe: epoch 1 starts with {len(rows_pass)} rows" in warned
    assert sum("streamprobe: epoch" in w for w in warned) == 2
