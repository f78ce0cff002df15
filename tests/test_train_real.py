"""Acceptance 1: each method, 2 CPU epochs on a few hundred real FERPlus crops at 48x48,
writes every file and field of the run folder contract, plus its own loss parts (skips
without ../shared/data)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FERPLUS, needs
from factories import CONFIG_FIELDS, METRIC_FIELDS, read_metrics

from fernoise import methods
from fernoise.train.stage import TrainConfig, train

# slow: test_train and test_method_contract train every method on generated crops in the fast tier
pytestmark = [*needs(FERPLUS), pytest.mark.slow]


# scn, rul, eac: tests/test_methods_peers_real.py
PARTS = {
    "ce": set(),
    "pc": set(),
    "nl": {"nl"},
    "ncctfer": {"c"},
    "gce": {"gce"},
    "sce": {"ce", "rce"},
    "elr": {"ce", "elr"},
}


@pytest.mark.parametrize("method", ["ce", "pc", "nl", "ncctfer", "gce", "sce", "elr"])
def test_two_epochs_on_ferplus(method, ferplus_manifest, workspace):
    cfg = TrainConfig(
        method=method,
        epochs=2,
        warmup=1,
        batch_size=64,
        image_size=48,
        workers=0,
        keep_checkpoint=True,
    )  # to read the per-sample state below
    run = train(ferplus_manifest, cfg, runs_dir=workspace / "runs").output
    config = json.loads((run / "config.json").read_text())
    assert CONFIG_FIELDS <= set(config) and config["noise"] is None and config["num_classes"] == 8
    resolved = methods.create(
        method, num_classes=8
    ).params  # defaults, with ncctfer's k = min(4, C-1) = 4
    assert config["method_params"] == resolved.__dict__ and config["k"] == getattr(
        resolved, "k", None
    )
    assert config["views"] == list(methods.get(method).views)
    assert config["n_test"] == 40 and config["n_train"] + config["n_val"] == 160
    metrics = read_metrics(run)
    assert len(metrics) == 2 and all(METRIC_FIELDS <= set(m) for m in metrics)
    assert all(0 <= m["test_acc"] <= 1 and m["loss"] > 0 for m in metrics)
    warm, last = metrics
    assert warm["warmup"] and warm["loss_s"] == warm["loss"]  # warm-up: plain cross-entropy
    own = {f"loss_{q}" for q in PARTS[method]}
    assert own <= set(last) and all(last[k] is not None for k in own)
    parts = [last[k] for k in last if k.startswith("loss_") and last[k] is not None]
    assert sum(parts) == pytest.approx(
        last["loss"], rel=1e-6, abs=1e-9
    )  # the parts add up to the loss
    assert last["confident_precision"] is None  # no is_noisy column
    selecting = method in ("pc", "ncctfer")
    assert (last["confident_frac"] is not None) == selecting and (
        last["thresholds"] is not None
    ) == selecting
    m = methods.create(method, num_classes=8, image_size=48)
    methods.build_model(m).load_state_dict(torch.load(run / "model.pt", weights_only=True))
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert set(ckpt["method_state"]) == ({"targets"} if method == "elr" else set())
    assert (run / "val_ids.json").is_file()
