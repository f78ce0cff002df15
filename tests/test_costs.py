"""Costs said before they are paid: `fernoise train` prints, from a few measured steps, what an
epoch and the rest of the run will take, then `epoch k/N` with an ETA on every epoch's line
(also when the output is not a terminal, as here)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from factories import cli, make_manifest

from fernoise.cli.train import duration


def test_duration_words():
    assert [duration(s) for s in (42, 150, 7500)] == ["42 s", "2.5 min", "2 h 05 min"]


@pytest.mark.slow
def test_train_prints_an_estimate_and_an_eta(workspace):
    src = make_manifest(workspace / "d", 105)
    res = cli(
        "train", src, "--method", "ce", "--epochs", "3", "--warmup", "1", "--batch-size", "8",
        "--image-size", "32", "--workers", "0", "--precision", "fp32", "--device", "cpu",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    warm = re.search(
        r"estimate from (\d+) steps of warm-up: about .+? per epoch of training, .+? for the 3 epoch\(s\) to go",
        out,
    )
    after = re.search(
        r"estimate from (\d+) steps: about .+? per epoch of training, .+? for the 2 epoch\(s\) to go",
        out,
    )
    assert warm and after and int(warm.group(1)) == 5, out
    assert (
        out.index(warm.group(0))
        < out.index("epoch 1/3")
        < out.index(after.group(0))
        < out.index("epoch 2/3")
    )
    assert re.search(r"epoch 1/3 w .* ETA \d+ s", out) and "epoch 3/3" in out
    assert len(re.findall("estimate from", out)) == 2


def test_pretrain_max_rows_keeps_a_stratified_share(workspace):
    from factories import tiny_pretrain

    from fernoise.pretrain.stage import plan

    src = make_manifest(workspace / "d", 105)
    full = plan(src, tiny_pretrain(probe_split=None))
    part = plan(src, tiny_pretrain(probe_split=None, max_rows=42))
    assert len(full.train_pos) == 84 and len(part.train_pos) == 42
    assert part.key != full.key and "max_rows" not in full.key_params
    from fernoise.manifest import read_manifest

    label = read_manifest(src).df.set_index("id")["label"]
    whole = np.bincount(label.loc[np.asarray(full.ids)[full.train_pos]], minlength=7)
    half = np.bincount(label.loc[np.asarray(part.ids)[part.train_pos]], minlength=7)
    assert half.sum() == 42 and (np.abs(half - whole / 2) <= 1).all()  # each class keeps its share
