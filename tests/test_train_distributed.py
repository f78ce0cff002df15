"""Two CPU processes (gloo) train one short epoch with DistributedDataParallel; rank 0 writes."""

from __future__ import annotations

import json

import pytest
import torch
from factories import SIZE, make_manifest

from fernoise import methods
from fernoise.train.stage import TrainConfig, train


@pytest.mark.slow
def test_two_gloo_processes_write_the_run_once(tmp_path, workspace):
    data = make_manifest(tmp_path / "d", n=70)
    cfg = TrainConfig(
        method="ncctfer",
        method_params=methods.make_params("ncctfer", {"--k": 3}),
        epochs=1,
        warmup=0,
        batch_size=16,
        image_size=SIZE,
        workers=0,
        precision="fp32",
        devices=2,
    )
    res = train(data, cfg, runs_dir=workspace / "runs")
    run = res.output
    assert sorted(p.name for p in (workspace / "runs").iterdir() if not p.name.startswith(".")) == [
        run.name
    ]
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == 2
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    m = json.loads(lines[0])
    # Both ranks' samples are counted: every train row once, padded to a multiple of 2.
    assert (
        m["samples"] == config["n_train"] + config["n_train"] % 2
        and m["confident_frac"] is not None
        and m["test_acc"] is not None
    )
    methods.build_model(methods.create("ncctfer", num_classes=7)).load_state_dict(
        torch.load(run / "model.pt", weights_only=True)
    )
    assert (run / ".fernoise" / "model.pt.stamp.json").is_file()
    again = train(data, cfg, runs_dir=workspace / "runs")
    assert again.hit and again.output == run
