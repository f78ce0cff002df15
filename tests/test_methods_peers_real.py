"""SCN, RUL and EAC through `fernoise train`: 2 CPU epochs each on a few hundred real FERPlus
crops at 48 px (skips without ../shared/data)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from conftest import FERPLUS, needs
from factories import CONFIG_FIELDS, METRIC_FIELDS, read_metrics

from fernoise import methods
from fernoise.evaluate import stage as evaluate
from fernoise.images import load_many
from fernoise.manifest import read_manifest
from fernoise.train.stage import TrainConfig, train

pytestmark = needs(FERPLUS)

PARTS = {"scn": {"loss_s", "loss_rr"}, "rul": {"loss_s"}, "eac": {"loss_s", "loss_flip"}}


def model_of(run: Path):
    """The run rebuilt as `fernoise eval` / `predict` rebuild it (registry, config.json, model.pt)."""
    loaded = evaluate.load_run(run)
    return loaded.config, evaluate.load_model(loaded)


def accuracy_on_test(manifest: Path, model) -> float:
    m = read_manifest(manifest)
    test = m.df[m.df["split"] == "test"]
    probs = evaluate.predict_probs(model, load_many(test["path"].tolist(), 48), batch_size=7)
    return float((probs.argmax(1) == test["label"].to_numpy()).mean())


@pytest.mark.parametrize("name", ["scn", "rul", "eac"])
@pytest.mark.slow
def test_two_epochs_on_ferplus(name, ferplus_manifest, workspace):  # noqa: F811
    params = {"scn": {"--scn-relabel-epoch": 2, "--scn-relabel-group": "all"}}.get(name, {})
    cfg = TrainConfig(
        method=name,
        method_params=methods.make_params(name, params),
        epochs=2,
        warmup=1,
        batch_size=16,
        image_size=48,
        workers=0,
        keep_checkpoint=True,
    )
    run = train(ferplus_manifest, cfg, runs_dir=workspace / "runs").output
    config, classifier = model_of(run)
    assert CONFIG_FIELDS <= set(config) and config["num_classes"] == 8 and config["n_test"] == 40
    official = methods.get(name).optim
    assert (
        (config["weight_decay"], config["lr_decay"])
        == (official.weight_decay, official.lr_decay)
        == (1e-4, 0.9)
    )
    assert config["method_params"] == asdict(cfg.method_params)
    metrics = read_metrics(run)
    assert len(metrics) == 2 and all(METRIC_FIELDS <= set(m) for m in metrics)
    assert all(0 <= m["test_acc"] <= 1 and m["loss"] > 0 for m in metrics)
    assert (
        metrics[0]["warmup"]
        and set(k for k in PARTS[name] if metrics[1][k] is not None) == PARTS[name]
    )
    assert metrics[1]["lr_backbone"] == pytest.approx(official.lr_backbone * 0.9)
    if name == "scn":
        state = torch.load(run / "checkpoint.pt", weights_only=True)["method_state"]["labels"]
        assert metrics[1]["relabelled"] == int((state >= 0).sum()) and metrics[0]["relabelled"] in (
            0,
            None,
        )
    # eval/predict rebuild the method (RUL: heads sized for the run's 48 px) and its test-time logits
    assert accuracy_on_test(ferplus_manifest, classifier) == pytest.approx(
        metrics[1]["test_acc"], abs=1e-9
    )


@pytest.mark.slow
def test_eac_warns_about_its_2x2_map(ferplus_manifest, workspace):  # noqa: F811
    cfg = TrainConfig(method="eac", epochs=1, warmup=0, batch_size=16, image_size=48, workers=0)
    events: list[dict] = []
    train(ferplus_manifest, cfg, runs_dir=workspace / "runs", progress=events.append)
    said = [e["message"] for e in events if e.get("event") == "warning"]
    assert sum("attention maps are 2x2" in m for m in said) == 1  # fernoise's one-line warning
