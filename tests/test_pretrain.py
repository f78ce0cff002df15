"""`fernoise pretrain` (issue 11): losses on hand-computed tensors, the views, the stage contract
(backbone.pt with torchvision names, metrics, cache hit, labels never read, kill -9 resume) and
every kind of `--pretrained` source."""

from __future__ import annotations

import json
import math
import os
import sys

import pandas as pd
import pytest
import torch
from factories import SIZE, make_manifest, tiny_pretrain
from killing import kill_after_epochs, resume
from typer.testing import CliRunner

from fernoise.cli.app import app
from fernoise.errors import FernoiseError
from fernoise.pretrain.ssl import (
    ViewParams,
    byol_loss,
    byol_momentum,
    knn_accuracy,
    nt_xent,
    ssl_views,
)
from fernoise.pretrain.stage import PretrainConfig, pretrain
from fernoise.train.weights import load_backbone, match, read_state, resolve


# ----------------------------------------------------------------------------- losses
def test_nt_xent_against_a_hand_computed_case():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    t = 0.5
    # Anchor 0 (z1[0]) sims to [z1[1], z2[0], z2[1]] = [0, 1, 0]: positive z2[0].
    l0 = -math.log(math.exp(1 / t) / (math.exp(0) + math.exp(1 / t) + math.exp(0)))
    # Anchor 1 (z1[1]) sims to [z1[0], z2[0], z2[1]] = [0, 0, -1]: positive z2[1] (-1).
    l1 = -math.log(math.exp(-1 / t) / (1 + 1 + math.exp(-1 / t)))
    # Anchor 2 (z2[0]) sims to [z1[0], z1[1], z2[1]] = [1, 0, 0]: positive z1[0].
    l2 = l0
    # Anchor 3 (z2[1]) sims to [z1[0], z1[1], z2[0]] = [0, -1, 0]: positive z1[1] (-1).
    l3 = l1
    assert nt_xent(z1, z2, t).item() == pytest.approx((l0 + l1 + l2 + l3) / 4, rel=1e-6)
    # Scale-invariant (cosine similarity)
    assert nt_xent(3 * z1, 0.5 * z2, t).item() == pytest.approx(nt_xent(z1, z2, t).item(), rel=1e-6)


def test_byol_loss_and_momentum_schedule():
    p = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    t = torch.tensor([[2.0, 0.0], [-1.0, -1.0]])
    # cos(p1, t2) per row: [1, -1] -> 2-2cos = [0, 4]; cos(p2=t-as-pred, t1=p): same pairs.
    assert byol_loss(p, p, t, t).item() == pytest.approx((0 + 4) / 2 * 2, rel=1e-6)
    x = torch.randn(4, 8, requires_grad=True)
    y = torch.randn(4, 8, requires_grad=True)
    byol_loss(x, x, y, y).backward()
    assert y.grad is None  # the target carries no gradient
    assert byol_momentum(0, 100) == pytest.approx(0.996)
    assert byol_momentum(100, 100) == pytest.approx(1.0)
    assert byol_momentum(50, 100) == pytest.approx(0.998)


def test_knn_leave_one_out():
    f = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [1.0, 0.05]])
    y = torch.tensor([0, 0, 1, 1, 1])  # the last one sits in class 0's cluster
    # Nearest other sample (cosine): 0 -> 4 (label 1, wrong), 1 -> 4 (wrong), 2 -> 3 (right),
    # 3 -> 2 (right), 4 -> 0 (label 0, wrong): 2 of 5.
    assert knn_accuracy(f, y, k=1) == pytest.approx(2 / 5)
    # k=3 majority: 0 -> {4, 1, 3}: labels 1, 0, 1 -> 1 (wrong); 2 -> {3, 1, 4} -> 1 (right).
    assert knn_accuracy(f[:4], y[:4], k=1) == 1.0


def test_views_are_face_safe_and_seeded():
    img = torch.zeros(6, 40, 40, 3, dtype=torch.uint8)
    img[:, :, :20] = 255  # left half white
    p = ViewParams(jitter_p=0.0, grey_p=0.0, min_scale=0.6)
    a = ssl_views(img, 32, p, torch.Generator().manual_seed(1))
    b = ssl_views(img, 32, p, torch.Generator().manual_seed(1))
    assert a.shape == (6, 3, 32, 32) and torch.equal(a, b)
    c = ssl_views(img, 32, p, torch.Generator().manual_seed(2))
    assert not torch.equal(a, c)
    # No vertical flip, crops keep most of the face: every view keeps a bright and a dark side
    # along the width and is constant along the height.
    col = a[:, 0].mean(dim=1)  # (N, W)
    assert torch.allclose(a[:, 0], a[:, 0, :1].expand_as(a[:, 0]), atol=1e-5)
    assert (col.max(dim=1).values > 1.5).all() and (col.min(dim=1).values < -1.5).all()
    flip = ViewParams(jitter_p=0.0, grey_p=0.0, min_scale=1.0, flip=1.0)
    f = ssl_views(img, 40, flip, torch.Generator().manual_seed(0))
    assert (f[:, 0, :, -5:] > 1.5).all() and (f[:, 0, :, :5] < -1.5).all()  # mirrored


# ----------------------------------------------------------------------------- the stage
@pytest.fixture(scope="module")
def ssl_manifest(tmp_path_factory):
    return make_manifest(tmp_path_factory.mktemp("ssl"), n=60, splits=("train", "val"))


@pytest.mark.parametrize("method", ["simclr", pytest.param("byol", marks=pytest.mark.slow)])
def test_pretrain_writes_backbone_and_metrics_then_hits(method, ssl_manifest, workspace):
    res = pretrain(ssl_manifest, tiny_pretrain(method=method), workspace=None)
    out = res.output
    assert not res.hit and out.parent == workspace / "pretrain"
    state = torch.load(out / "backbone.pt", weights_only=True)
    from torchvision.models import resnet18

    ref = resnet18(weights=None)
    ref.fc = torch.nn.Identity()
    assert set(state) == set(ref.state_dict())  # torchvision key names, no fc
    ref.load_state_dict(state)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert all(math.isfinite(m["loss"]) and m["images_per_s"] > 0 for m in metrics)
    assert all(0 <= m["knn_acc"] <= 1 for m in metrics)  # val rows probed every epoch
    assert (metrics[0]["momentum"] is not None) == (method == "byol")
    assert not (out / "checkpoint.pt").exists()
    lock = json.loads((workspace / "fernoise.lock").read_text())
    assert lock["stages"]["pretrain"]["output"] == f"pretrain/{out.name}"
    again = pretrain(ssl_manifest, tiny_pretrain(method=method))
    assert again.hit and again.output == out


@pytest.mark.slow
def test_pretrain_never_reads_training_labels(tmp_path, workspace):
    a = make_manifest(tmp_path / "a", n=40)
    df = pd.read_parquet(a)
    import pyarrow.parquet as pq

    meta = pq.read_schema(a).metadata
    df["label"] = (df["label"] + 3) % 7  # every training label changed
    import pyarrow as pa

    table = pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(meta)
    (tmp_path / "b").mkdir()
    pq.write_table(table, tmp_path / "b" / "manifest.parquet")
    os.symlink(tmp_path / "a" / "faces", tmp_path / "b" / "faces")
    cfg = tiny_pretrain(epochs=1, probe_split=None)
    wa = pretrain(a, cfg, out_root=tmp_path / "ra").output
    wb = pretrain(tmp_path / "b" / "manifest.parquet", cfg, out_root=tmp_path / "rb").output
    sa = torch.load(wa / "backbone.pt", weights_only=True)
    sb = torch.load(wb / "backbone.pt", weights_only=True)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
def test_pretrain_kill_9_then_resume_gives_the_same_weights(tmp_path, workspace):
    data = make_manifest(tmp_path / "data", n=80)
    env = {**os.environ, "FERNOISE_WORKSPACE": str(workspace)}
    cmd = [
        sys.executable,
        "-m",
        "fernoise.cli.app",
        "pretrain",
        str(data),
        "--method",
        "byol",
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--image-size",
        str(SIZE),
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "a"),
    ]
    metrics_file = kill_after_epochs(cmd, env, tmp_path / "a") / "metrics.jsonl"  # mid-epoch 2
    assert not (metrics_file.parent / "backbone.pt").exists()
    resume(cmd, env)
    cfg = PretrainConfig(method="byol", epochs=3, batch_size=16, image_size=SIZE, device="cpu")
    full = pretrain(data, cfg, out_root=tmp_path / "b").output
    assert full.name == metrics_file.parent.name
    sa = torch.load(metrics_file.parent / "backbone.pt", weights_only=True)
    sb = torch.load(full / "backbone.pt", weights_only=True)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_pretrain_bad_input_is_one_line(tmp_path, workspace):
    data = make_manifest(tmp_path / "data", n=20)
    runner = CliRunner()
    r = runner.invoke(app, ["pretrain", str(data), "--method", "moco"])
    assert r.exit_code == 2 and "--method" in r.output and "simclr, byol" in r.output
    r = runner.invoke(app, ["pretrain", str(data), "--splits", "holdout"])
    assert r.exit_code == 2 and "holdout" in r.output and "Traceback" not in r.output
    with pytest.raises(FernoiseError, match="positive") as e:
        PretrainConfig(temperature=0)
    assert e.value.flag == "--temperature"


# ----------------------------------------------------------------------------- --pretrained kinds
def _backbone():
    from torchvision.models import resnet18

    torch.manual_seed(0)
    m = resnet18(weights=None)
    m.fc = torch.nn.Identity()
    return m


def test_pretrained_torchvision_layout_state_dict(tmp_path):
    src = _backbone()
    state = {**src.state_dict(), "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in state.items()}},
        tmp_path / "resnet18_msceleb.pth",
    )
    dst = _backbone()
    torch.nn.init.zeros_(dst.conv1.weight)
    source, report = load_backbone(dst, tmp_path / "resnet18_msceleb.pth")
    assert source.kind == "state_dict" and report.complete and not report.unexpected
    assert torch.equal(dst.conv1.weight, src.conv1.weight)


def test_pretrained_scn_sequential_names_are_mapped(tmp_path):
    src = _backbone()
    names = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}
    state = {}
    for k, v in src.state_dict().items():
        head, _, rest = k.partition(".")
        state[f"features.{names[head]}.{rest}"] = v
    torch.save(state, tmp_path / "scn.pth")
    assert match(read_state(resolve(tmp_path / "scn.pth")), _backbone().state_dict()).complete


@pytest.mark.slow
def test_pretrained_from_a_train_run_and_a_pretrain_folder(tmp_path, ssl_manifest, workspace):
    from fernoise.train.stage import TrainConfig, train

    run = train(
        ssl_manifest,
        TrainConfig(
            method="ce",
            epochs=1,
            warmup=0,
            batch_size=16,
            image_size=SIZE,
            workers=0,
            precision="fp32",
        ),
        runs_dir=tmp_path / "runs",
    ).output
    model = torch.load(run / "model.pt", weights_only=True)
    for spec in (run, run / "model.pt"):
        dst = _backbone()
        source, report = load_backbone(dst, spec)
        assert source.kind == "train_run" and report.complete
        assert "pcc.weight" not in report.unexpected  # heads dropped, not reported as junk
        assert torch.equal(dst.conv1.weight, model["backbone.conv1.weight"])
    folder = pretrain(ssl_manifest, tiny_pretrain(epochs=1)).output
    dst = _backbone()
    source, report = load_backbone(dst, folder)
    assert source.kind == "pretrain_run" and report.complete
    latest, _ = load_backbone(_backbone(), "latest")
    assert latest.path == folder / "backbone.pt"


def test_pretrained_other_architecture_and_partial_files_are_one_line(tmp_path):
    from torchvision.models import mobilenet_v3_small

    torch.save(mobilenet_v3_small(weights=None).state_dict(), tmp_path / "mobilenet.pth")
    with pytest.raises(FernoiseError, match=r"another architecture") as e:
        load_backbone(_backbone(), tmp_path / "mobilenet.pth")
    assert "features." in str(e.value) or "classifier" in str(e.value) or "conv" in str(e.value)
    half = {k: v for k, v in _backbone().state_dict().items() if not k.startswith("layer4")}
    torch.save(half, tmp_path / "half.pth")
    with pytest.raises(FernoiseError, match=r"--pretrained-partial"):
        load_backbone(_backbone(), tmp_path / "half.pth")
    _, report = load_backbone(_backbone(), tmp_path / "half.pth", partial=True)
    assert report.missing and all(k.startswith("layer4") for k in report.missing)
    (tmp_path / "folder").mkdir()
    with pytest.raises(FernoiseError, match="is a folder"):
        load_backbone(_backbone(), tmp_path / "folder")


@pytest.mark.slow
def test_pretrain_keys_on_the_rows_not_only_the_recorded_key(tmp_path, workspace):
    """Issue 8.4 for pretrain: a manifest edited behind its metadata (rows dropped, the
    recorded key kept) is a new input, never a stale cache hit."""
    import pyarrow.parquet as pq

    data = make_manifest(tmp_path / "data", n=40)
    cfg = tiny_pretrain(epochs=1, probe_split=None)
    first = pretrain(data, cfg)
    table = pq.read_table(data)
    pq.write_table(table.slice(0, table.num_rows - 5), data)  # metadata (and its key) kept
    again = pretrain(data, cfg)
    assert not again.hit and again.key != first.key
    assert (
        json.loads((again.output / "config.json").read_text())["n_train"]
        < json.loads((first.output / "config.json").read_text())["n_train"]
    )
