"""``fernoise train --record-margins`` (margins.npy, margins_ids.json) and the area under the
margin of :mod:`fernoise.audit.aum`: margins on hand-computed logits, a real tiny run with and
without the flag, resume, and the AUM scores of a hand-made margins file."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from factories import SIZE, make_manifest
from killing import kill_after_epochs, resume

from fernoise.audit.aum import aum_issues, aum_quality, aum_scores
from fernoise.cache import outputs_intact, read_json, stamp_path
from fernoise.distributed import Dist
from fernoise.errors import FernoiseError
from fernoise.methods.base import LossOut
from fernoise.train.loop import EpochTally, _Truth
from fernoise.train.margins import MarginLog, batch_margins
from fernoise.train.plan import plan
from fernoise.train.stage import TrainConfig, train


# ----------------------------------------------------------------------------- the tally
def test_margins_of_hand_computed_logits_and_a_row_seen_twice_is_averaged():
    labels = torch.tensor([0, 1, 2, 0, 1])
    tally = EpochTally(["s"], 5, 3, _Truth(labels, None, None), margins=True)

    def step(logits, rows):
        rows = torch.tensor(rows)
        out = LossOut(torch.tensor(0.5), {"s": torch.tensor(0.5)}, torch.tensor(logits))
        tally.add(out, 0.5, labels[rows], rows, len(rows))

    step([[3.0, 1.0, 2.0], [0.0, 0.5, 4.0]], [0, 2])  # row 0: 3-2 = 1; row 2: 4-0.5 = 3.5
    step([[1.0, 2.0, -1.0], [0.0, -2.0, 5.0]], [2, 1])  # row 2: -1-2 = -3; row 1: -2-5 = -7
    tally.reduce(Dist())
    assert tally.m_cnt.tolist() == [1, 1, 2, 0, 0]
    log = MarginLog(np.array([0, 1, 2, 3]), ["a", "b", "c", "d"])
    log.end_epoch(tally.m_sum, tally.m_cnt)
    got = log.epochs
    assert got.dtype == np.float32 and got.shape == (1, 4)
    assert got[0, :3].tolist() == [1.0, -7.0, 0.25]  # row 2: (3.5 - 3) / 2
    assert math.isnan(got[0, 3])  # row 3 not trained on this epoch


def test_margins_take_the_given_label_not_a_relabel():
    """A method that trains on other labels (``LossOut.labels``) changes train_acc, never the
    margin: it is measured against the given label."""
    labels = torch.tensor([0, 1])
    tally = EpochTally(["s"], 2, 2, _Truth(labels, None, None), margins=True)
    out = LossOut(
        torch.tensor(0.0),
        {"s": torch.tensor(0.0)},
        torch.tensor([[1.0, 3.0], [2.0, 0.0]]),
        labels=torch.tensor([1, 0]),
    )
    tally.add(out, 0.0, labels, torch.tensor([0, 1]), 2)
    assert tally.m_sum.tolist() == [-2.0, -2.0]
    assert tally.sums["correct"] == 2  # against the relabels


def test_batch_margins_with_ties_and_two_classes():
    got = batch_margins(torch.tensor([[2.0, 2.0], [1.0, -1.0]]), torch.tensor([0, 1]))
    assert got.dtype == torch.float64 and got.tolist() == [0.0, -2.0]


def test_without_the_flag_the_tally_keeps_no_margins():
    tally = EpochTally(["s"], 3, 2, _Truth(torch.tensor([0, 1, 0]), None, None))
    out = LossOut(torch.tensor(0.0), {"s": torch.tensor(0.0)}, torch.zeros(2, 2))
    tally.add(out, 0.0, torch.tensor([0, 1]), torch.tensor([0, 1]), 2)
    assert tally.m_sum is None and tally.m_cnt is None


# ----------------------------------------------------------------------------- real runs
def _cfg(**kw) -> TrainConfig:
    base = dict(
        method="ce",
        epochs=2,
        warmup=0,
        batch_size=8,
        image_size=SIZE,
        workers=0,
        precision="fp32",
        device="cpu",
        val_fraction=0.25,
    )
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_manifest(tmp_path_factory.mktemp("data"), n=40)


def test_a_run_with_record_margins_writes_every_trained_rows_margins(data, tmp_path, workspace):
    run = train(data, _cfg(record_margins=True), runs_dir=tmp_path / "runs").output
    config = json.loads((run / "config.json").read_text())
    margins = np.load(run / "margins.npy")
    ids = json.loads((run / "margins_ids.json").read_text())
    assert margins.dtype == np.float32 and margins.shape == (2, config["n_train"])
    assert np.isfinite(margins).all()  # ce trains on every training row every epoch
    val = set(json.loads((run / "val_ids.json").read_text()))
    assert len(ids) == config["n_train"] and len(set(ids)) == len(ids) and not (set(ids) & val)
    assert config["record_margins"] is True
    # the stamp covers the margins: an edited file is no cache hit
    stamp = read_json(stamp_path(run / "model.pt"))
    assert {"margins.npy", "margins_ids.json"} <= set(stamp["outputs"])
    assert outputs_intact(stamp, stamp["key"], run)
    edited = margins.copy()
    edited[0, 0] += 1
    np.save(run / "margins.npy", edited)
    assert not outputs_intact(stamp, stamp["key"], run)
    # scored by the audit's reader: the mean over the two epochs
    got_ids, aum, epochs = aum_scores(run)
    assert got_ids == ids and epochs == 2
    np.testing.assert_allclose(aum, edited.astype(np.float64).mean(axis=0))


def test_without_the_flag_no_margins_and_the_key_is_unchanged(data, tmp_path, workspace):
    off, on = plan(data, _cfg()), plan(data, _cfg(record_margins=True))
    assert "record_margins" not in off.key_params
    assert on.key_params == {**off.key_params, "record_margins": True}
    assert on.key != off.key
    run = train(data, _cfg(epochs=1), runs_dir=tmp_path / "runs").output
    assert not (run / "margins.npy").exists() and not (run / "margins_ids.json").exists()
    ckpt_free = read_json(stamp_path(run / "model.pt"))
    assert not any(k.startswith("margins") for k in ckpt_free["outputs"])


class _Stop(Exception):
    pass


def _stop_after_epoch_1(event: dict) -> None:
    if event.get("event") == "epoch_end" and event["metrics"]["epoch"] == 1:
        raise _Stop


def test_a_run_resumed_from_epoch_1_has_the_margins_of_an_uninterrupted_run(
    data, tmp_path, workspace
):
    cfg = _cfg(record_margins=True)
    full = train(data, cfg, runs_dir=tmp_path / "b").output
    with pytest.raises(_Stop):
        train(data, cfg, runs_dir=tmp_path / "a", progress=_stop_after_epoch_1)
    stopped = tmp_path / "a" / full.name
    assert (stopped / "checkpoint.pt").is_file() and not (stopped / "model.pt").exists()
    assert np.load(stopped / "margins.npy").shape[0] == 1
    np.save(stopped / "margins.npy", np.zeros((5, 3), np.float32))  # a stale file is rewritten
    events: list[dict] = []
    again = train(data, cfg, runs_dir=tmp_path / "a", progress=events.append).output
    assert any(e["event"] == "resume" for e in events)
    assert np.array_equal(np.load(again / "margins.npy"), np.load(full / "margins.npy"))


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_margins_of_an_uninterrupted_run(data, tmp_path, workspace):
    env = {**os.environ, "FERNOISE_WORKSPACE": str(workspace)}
    cmd = [sys.executable, "-m", "fernoise.cli.app", "train", str(data), "--record-margins"]
    cmd += ["--method", "ce", "--epochs", "3", "--warmup", "0", "--batch-size", "8"]
    cmd += ["--image-size", str(SIZE), "--workers", "0", "--precision", "fp32"]
    cmd += ["--device", "cpu", "--val-fraction", "0.25", "--runs-dir", str(tmp_path / "a")]
    run = kill_after_epochs(cmd, env, tmp_path / "a", epochs=1, timeout=120)
    assert not (run / "model.pt").exists()
    resume(cmd, env)
    full = train(data, _cfg(epochs=3, record_margins=True), runs_dir=tmp_path / "b").output
    assert full.name == run.name
    assert np.array_equal(np.load(run / "margins.npy"), np.load(full / "margins.npy"))


# ----------------------------------------------------------------------------- the scorer
def _margins_run(folder: Path, margins, ids) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "margins.npy", np.asarray(margins, dtype=np.float32))
    (folder / "margins_ids.json").write_text(json.dumps(ids))
    return folder


def test_aum_is_the_mean_over_the_epochs_a_row_was_trained_in(tmp_path):
    nan = float("nan")
    run = _margins_run(
        tmp_path / "run",
        [[1.0, -2.0, nan, nan], [3.0, 0.5, -1.0, nan], [2.0, -0.5, nan, nan]],
        ["r1", "r2", "r3", "r4"],
    )
    ids, aum, epochs = aum_scores(run)
    assert ids == ["r1", "r2", "r3", "r4"] and epochs == 3
    assert aum.dtype == np.float64
    assert aum[:3].tolist() == [2.0, -2.0 / 3, -1.0] and math.isnan(aum[3])
    assert aum_issues(aum).tolist() == [False, True, True, False]
    assert aum_issues(aum, threshold=-0.8).tolist() == [False, False, True, False]
    q = aum_quality(aum)
    assert q[0] == pytest.approx(1 / (1 + math.exp(-2.0)))
    assert q[2] == pytest.approx(1 / (1 + math.e))
    assert math.isnan(q[3])
    assert aum_quality(np.array([0.0]))[0] == 0.5


def test_aum_quality_is_monotone_and_in_the_unit_interval():
    a = np.array([-1e6, -50.0, -1.0, 0.0, 0.3, 7.0, 1e6])
    q = aum_quality(a)
    assert ((q >= 0) & (q <= 1)).all()
    assert (np.diff(q) >= 0).all() and q[0] == 0.0 and q[-1] == 1.0


def test_aum_scores_refuses_a_run_without_margins_or_with_mismatched_ids(tmp_path):
    with pytest.raises(FernoiseError, match="--record-margins"):
        aum_scores(tmp_path)
    run = _margins_run(tmp_path / "bad", [[1.0, 2.0]], ["only-one"])
    with pytest.raises(FernoiseError, match="does not match"):
        aum_scores(run)
    (run / "margins.npy").write_bytes(b"not numpy")
    with pytest.raises(FernoiseError, match="unreadable"):
        aum_scores(run)
