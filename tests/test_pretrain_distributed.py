"""`fernoise pretrain` under torch.distributed (issue 11), on two gloo CPU processes: NT-Xent over
the gathered global batch has exactly the gradient of the single-process global loss, and a
two-process run writes its files once, records its world size and is then a cache hit."""

from __future__ import annotations

import json

import pytest
import torch
from factories import make_manifest, tiny_pretrain

from fernoise import distributed
from fernoise.pretrain.ssl import nt_xent
from fernoise.pretrain.stage import _epoch_order, _rank_share, plan, pretrain

N, D = 6, 5  # images per rank, projection width


def _grad_on_rank(x1, x2, weight, out):
    """One rank: its share of both views through a DDP-wrapped linear 'projector', NT-Xent over
    the gathered projections, backward; rank 0 saves the averaged gradient and the loss."""
    env = distributed.from_env()
    distributed.init(env, "cpu")
    try:
        lin = torch.nn.Linear(D, D, bias=False)
        with torch.no_grad():
            lin.weight.copy_(weight)
        net = torch.nn.parallel.DistributedDataParallel(lin)
        mine = slice(env.rank * N, (env.rank + 1) * N)
        z = net(torch.cat([x1[mine], x2[mine]]))
        loss = nt_xent(distributed.all_gather_cat(z[:N]), distributed.all_gather_cat(z[N:]), 0.5)
        loss.backward()
        if env.is_main:
            torch.save({"grad": lin.weight.grad, "loss": loss.detach()}, out)
    finally:
        distributed.shutdown()


@pytest.mark.slow
def test_gathered_nt_xent_gradient_equals_the_single_process_global_loss(tmp_path):
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(2 * N, D, generator=g), torch.randn(2 * N, D, generator=g)
    weight = torch.randn(D, D, generator=g)
    distributed.spawn(2, _grad_on_rank, x1, x2, weight, tmp_path / "grad.pt")
    got = torch.load(tmp_path / "grad.pt", weights_only=True)

    lin = torch.nn.Linear(D, D, bias=False)
    with torch.no_grad():
        lin.weight.copy_(weight)
    z = lin(torch.cat([x1, x2]))
    loss = nt_xent(z[: 2 * N], z[2 * N :], 0.5)  # one process, the whole global batch of 2N images
    loss.backward()
    assert got["loss"].item() == pytest.approx(loss.item(), rel=1e-6)
    assert torch.allclose(got["grad"], lin.weight.grad, rtol=1e-5, atol=1e-7)
    # A per-rank loss (local negatives only) would give another gradient: the gather matters.
    local = lin.weight.grad.clone().zero_()
    for r in range(2):
        lin.weight.grad = None
        zr = lin(torch.cat([x1[r * N : (r + 1) * N], x2[r * N : (r + 1) * N]]))
        nt_xent(zr[:N], zr[N:], 0.5).backward()
        local += lin.weight.grad / 2
    assert not torch.allclose(got["grad"], local, rtol=1e-3)


def test_global_batches_split_into_equal_rank_shares():
    batches = _epoch_order(
        37, 8, seed=0, epoch=1, world=2
    )  # global batches of 16: 16, 16, then 5 -> 4
    assert [len(b) for b in batches] == [16, 16, 4]
    for b in batches:
        a, c = _rank_share(b, 0, 2), _rank_share(b, 1, 2)
        assert len(a) == len(c) == len(b) // 2 and not set(a) & set(c) and set(a) | set(c) == set(b)
    assert [len(b) for b in _epoch_order(37, 8, seed=0, epoch=1)] == [
        8,
        8,
        8,
        8,
        5,
    ]  # one process: as before
    assert [len(b) for b in _epoch_order(33, 8, seed=0, epoch=1, world=2)] == [
        16,
        16,
    ]  # a last share of 0.5: dropped


@pytest.mark.parametrize("method", ["simclr", "byol"])
@pytest.mark.slow
def test_two_gloo_processes_write_the_run_once_and_hit(method, tmp_path, workspace):
    data = make_manifest(tmp_path / "d", n=60, splits=("train", "val"))
    cfg = tiny_pretrain(method=method, epochs=1, batch_size=8, devices=2)
    assert (
        plan(data, cfg).key != plan(data, tiny_pretrain(method=method, epochs=1, batch_size=8)).key
    )
    res = pretrain(data, cfg)
    out = res.output
    assert not res.hit and [p.name for p in (workspace / "pretrain").iterdir()] == [out.name]
    assert not [p for p in out.rglob("*.tmp")] and not (out / "checkpoint.pt").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2
    [m] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    expected = sum(len(b) for b in _epoch_order(config["n_train"], 8, seed=0, epoch=1, world=2))
    assert (
        m["samples"] == expected and m["knn_acc"] is not None
    )  # both ranks counted, rank 0 probed
    from torchvision.models import resnet18

    ref = resnet18(weights=None)
    ref.fc = torch.nn.Identity()
    ref.load_state_dict(torch.load(out / "backbone.pt", weights_only=True))
    lock = json.loads((workspace / "fernoise.lock").read_text())
    assert lock["stages"]["pretrain"]["output"] == f"pretrain/{out.name}"
    again = pretrain(data, cfg)
    assert again.hit and again.output == out
