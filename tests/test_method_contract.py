"""Every registered method against the plugin contract (timm tests every model this way), and no
method name in the library outside ``fernoise/methods/``.

Per method (``fernoise.methods.names()``, so a new method is covered the day it registers):
build it, 2 optimiser steps on a generated 32 px batch, a round trip of its per-sample state,
and a 1-epoch ``fernoise train`` run on a shared tiny manifest whose run folder holds the
contract's fields, including the noise-detection figures exactly when the method selects.
"""

from __future__ import annotations

import ast
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from factories import CLASSES, CONFIG_FIELDS, METRIC_FIELDS, SIZE, make_manifest, read_metrics

import fernoise
from fernoise import methods
from fernoise.evaluate import stage as evaluate
from fernoise.report import collect, markdown_report
from fernoise.train.stage import TrainConfig, train

C = len(CLASSES)
N_ROWS = 40  # rows of the generated batch's per-sample state
BATCH = 12


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return make_manifest(tmp_path_factory.mktemp("data"), n=40)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


def run_of(name: str, manifest: Path, runs: Path) -> Path:
    """A 1-epoch run of ``name`` without warm-up, so its own loss runs (a cache hit after the first)."""
    cfg = TrainConfig(
        method=name,
        epochs=1,
        warmup=0,
        batch_size=BATCH,
        image_size=SIZE,
        workers=0,
        precision="fp32",
        device="cpu",
    )
    return train(manifest, cfg, runs_dir=runs).output


def two_steps(name: str):
    """``name`` built as train builds it, after 2 Adam steps on a generated batch; the last LossOut."""
    torch.manual_seed(0)
    method = methods.create(name, num_classes=C, n_rows=N_ROWS, image_size=SIZE)
    model = methods.build_model(method)
    o = method.optim
    optimizer = torch.optim.Adam(
        method.param_groups(
            model, lr_backbone=o.lr_backbone, lr_head=o.lr_head, weight_decay=o.weight_decay
        )
    )
    gen = torch.Generator().manual_seed(0)
    model.train()
    for step in range(2):
        idx = torch.arange(step * BATCH, (step + 1) * BATCH)
        y = idx % C
        views = {
            v: torch.randn(BATCH, 3, SIZE, SIZE, generator=gen)
            for v in method.views_for(warm=False)
        }
        out = model(method.loss, views, y, idx, epoch=1, warm=False, gen=gen)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        method.after_step(out, y, idx, epoch=1)
    return method, model, out


@pytest.mark.parametrize("name", methods.names())
def test_each_method_keeps_the_contract(name, manifest, runs, workspace):
    cls = methods.get(name)
    method, model, out = two_steps(name)

    # one batch's LossOut
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert set(out.parts) <= set(cls.parts) and "s" in cls.parts
    assert out.logits.shape == (BATCH, C)
    if out.selected is not None:
        assert out.selected.dtype == torch.bool and out.selected.shape == (BATCH,)
    if out.thresholds is not None:
        assert out.thresholds.shape == (C,)
    assert (out.relabelled is None) or cls.relabels
    model.eval()
    with torch.no_grad():
        assert method.logits(model, torch.zeros(2, 3, SIZE, SIZE)).shape == (2, C)

    # per-sample state: a checkpoint round trip, and a store of another size is refused
    state = {k: v.clone() for k, v in method.state_dict().items()}
    assert all(t.shape[0] == N_ROWS for t in state.values())
    fresh = methods.create(name, num_classes=C, n_rows=N_ROWS, image_size=SIZE)
    assert fresh.load_state_dict(state, n_rows=N_ROWS)
    assert all(torch.equal(fresh.state_dict()[k], t) for k, t in state.items())
    if state:
        assert not fresh.load_state_dict({k: t[:-1] for k, t in state.items()}, n_rows=N_ROWS - 1)

    # the run folder
    run = run_of(name, manifest, runs)
    config = json.loads((run / "config.json").read_text())
    assert CONFIG_FIELDS <= set(config)
    assert config["method"] == name and config["num_classes"] == C and config["warmup"] == 0
    assert config["method_params"] == asdict(
        methods.params_from_dict(name, config["method_params"])
    )
    (row,) = read_metrics(run)
    assert METRIC_FIELDS <= set(row) and row["epoch"] == 1 and not row["warmup"]
    logged = {k for k in row if k.startswith("loss_")}
    assert logged == {f"loss_{q}" for q in ("s", *cls.parts)}  # its own parts, no other method's
    assert (row["relabelled"] is not None) == cls.relabels
    selects = out.selected is not None
    for k in ("confident_frac", "confident_precision", "confident_recall"):
        assert (row[k] is not None) == selects, k
    if selects:
        assert 0 <= row["confident_frac"] <= 1 and 0 <= row["confident_precision"] <= 1
    assert (row["thresholds"] is not None) == (out.thresholds is not None)
    rebuilt = methods.build_model(
        methods.create(
            name,
            methods.params_from_dict(name, config["method_params"]),
            num_classes=C,
            image_size=SIZE,
        )
    )
    rebuilt.load_state_dict(torch.load(run / "model.pt", weights_only=True))


def test_an_old_run_with_loss_c_in_every_row_still_evaluates_and_reports(manifest, runs, workspace):
    """Runs of older fernoise logged NCCTFER's ``loss_c`` (null) for every method."""
    new = run_of("ce", manifest, runs)
    old = workspace / "old" / new.name
    shutil.copytree(new, old)
    rows = read_metrics(old)
    assert "loss_c" not in rows[0]
    (old / "metrics.jsonl").write_text(
        "".join(json.dumps({**r, "loss_c": None}) + "\n" for r in rows)
    )
    _, rep_old = evaluate.evaluate_run(old)
    _, rep_new = evaluate.evaluate_run(new)
    assert rep_old["top1"] == rep_new["top1"] and rep_old["history"] == rep_new["history"]
    table = markdown_report(collect([old]))
    assert "| ce " in table and f"{100 * rows[-1]['test_acc']:.1f}" in table


def test_an_old_config_without_method_rebuilds_from_two_heads(manifest, runs, workspace):
    """Runs from before the method registry: ``two_heads`` false was the cross-entropy baseline."""
    new = run_of("ce", manifest, runs)
    config = json.loads((new / "config.json").read_text())
    old = workspace / "old" / new.name
    shutil.copytree(new, old)
    legacy = {k: v for k, v in config.items() if k not in ("method", "method_params")}
    (old / "config.json").write_text(json.dumps({**legacy, "two_heads": False}))
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        a = evaluate.load_model(evaluate.load_run(old))(x)
        b = evaluate.load_model(evaluate.load_run(new))(x)
    assert torch.equal(a, b)


def test_the_report_lists_methods_in_registry_order():
    from fernoise.report import _method_sort

    shuffled = ["zz-unregistered", *reversed(methods.names()), "aa-unregistered"]
    assert sorted(shuffled, key=_method_sort) == [
        *methods.names(),
        "aa-unregistered",
        "zz-unregistered",
    ]


# Literals equal to a method name that the library keeps outside fernoise/methods/ on purpose:
# (file, literal) -> why.
ALLOWED = {
    (
        "train/config.py",
        "ncctfer",
    ): "DEFAULT_METHOD: the method of `fernoise train` without --method",
    ("demo/stage.py", "ce"): "DemoParams.methods: the demo compares the baseline ...",
    ("demo/stage.py", "ncctfer"): "... with the paper's method",
    ("evaluate/runs.py", "ncctfer"): "legacy: a config.json without `method` and two_heads true",
    ("evaluate/runs.py", "ce"): "legacy: a config.json without `method` and two_heads false",
    (
        "cli/audit.py",
        "ce",
    ): "the audit's default method: plain cross-entropy out-of-sample probabilities",
}


def method_literals() -> list[tuple[str, int, str]]:
    """(path under fernoise/, line, literal) of every string constant equal to a method name
    in the library outside fernoise/methods/."""
    root = Path(fernoise.__file__).parent
    registered = set(methods.names())
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("methods/"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value in registered
            ):
                found.append((rel, node.lineno, node.value))
    return found


def test_no_method_name_outside_methods():
    found = method_literals()
    stray = [
        f"fernoise/{rel}:{line}: {value!r}"
        for rel, line, value in found
        if (rel, value) not in ALLOWED
    ]
    assert not stray, (
        "a method name outside fernoise/methods/ (declare it on the method instead):\n"
        + "\n".join(stray)
    )
    assert {(rel, value) for rel, _, value in found} == set(ALLOWED)  # no stale allowance
