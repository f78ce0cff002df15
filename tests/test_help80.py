"""Help that reads at 80 columns: `fernoise methods` / `backbones` piped at 80 columns split
no word, their markdown is a GitHub table and their JSON has every field; flags show no
``<bool>``; align's and train's options sit in named panels (and `audit`, which reuses
train's signature, keeps them)."""

from __future__ import annotations

import json
import re

import pytest
from factories import cli

from fernoise import backbones, methods

ENV80 = {"COLUMNS": "80"}


def words_of(text: str) -> set[str]:
    return {w for w in re.split(r"\s+", text) if w}


def test_methods_at_80_columns_split_no_word():
    r = cli("methods", env=ENV80)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    out_words = words_of(r.output)
    for name in methods.names():
        cls = methods.get(name)
        # every word of each field is printed whole (a split word would be two other words)
        for text in (cls.summary, cls.source, cls.repo):
            assert words_of(text) <= out_words, (name, words_of(text) - out_words)
        assert name in lines
    # a line is wider than 80 only where one word is
    for line in lines:
        if len(line) > 80:
            assert len(max(line.split(), key=len)) > 80 - 30, line


def test_methods_markdown_and_json():
    md = cli("methods", "--format", "markdown").output.splitlines()
    assert md[0].startswith("| method | what it does |") and md[1].startswith("|---|")
    assert len(md) == 2 + len(methods.names())
    assert all(line.count(" | ") == md[0].count(" | ") for line in md[2:])
    data = json.loads(cli("methods", "--format", "json").output)
    assert [d["method"] for d in data] == methods.names()
    ce = next(d for d in data if d["method"] == "ce")
    o = methods.get("ce").optim
    assert ce["optimiser"] == {
        "lr_backbone": o.lr_backbone,
        "lr_head": o.lr_head,
        "weight_decay": o.weight_decay,
        "lr_decay": o.lr_decay,
        "epochs": o.epochs,
        "batch_size": o.batch_size,
    }
    assert ce["views"] == list(methods.get("ce").views) and ce["face_pretrained"] is True
    with_params = [d for d in data if d["params"]]
    assert with_params and all(k.startswith("--") for d in with_params for k in d["params"])
    bad = cli("methods", "--format", "html")
    assert bad.exit_code == 2 and "table, markdown, json" in bad.output


def test_backbones_formats():
    r = cli("backbones", env=ENV80)
    assert r.exit_code == 0
    for name in backbones.names():
        assert name in r.output.splitlines()
        assert f"{backbones.get(name).parameters:,}" in r.output
    data = json.loads(cli("backbones", "--format", "json").output)
    assert [d["backbone"] for d in data] == backbones.names()
    assert data[0]["parameters"] == f"{backbones.get(data[0]['backbone']).parameters:,}"


@pytest.mark.parametrize(
    "command", ["align", "corrupt", "split", "train", "audit", "clean", "report", "sweep"]
)
def test_flags_show_no_bool_metavar(command):
    r = cli(command, "--help", env=ENV80)
    assert r.exit_code == 0
    assert "<bool>" not in r.output
    assert re.search(r"--help\s+Show this message", r.output)


@pytest.mark.parametrize(
    ("command", "panels"),
    [
        ("align", ["Labels", "Detection", "Crops", "Hardware", "Input/Output"]),
        ("train", ["Training", "Optimiser", "Start weights", "Hardware", "Input/Output"]),
        ("audit", ["Training", "Optimiser", "Audit", "Method options"]),
    ],
)
def test_options_sit_in_panels(command, panels):
    out = cli(command, "--help", env=ENV80).output
    titles = re.findall(r"╭─ (.+?) ─", out)
    for p in panels:
        assert p in titles, (p, titles)
    body = out.split("╭─ Hardware ")[1].split("╰")[0]
    assert "--device" in body


def test_positional_arguments_are_named_the_same_way_everywhere():
    import re

    from typer.testing import CliRunner

    from fernoise.cli.app import app

    usage = {}
    for cmd in ("align", "corrupt", "split", "pretrain", "train", "audit", "clean", "eval",
                "predict", "report", "sweep"):  # fmt: skip
        out = CliRunner().invoke(app, [cmd, "--help"], env={"COLUMNS": "200"}).output
        line = next(ln for ln in out.splitlines() if "Usage:" in ln)
        usage[cmd] = re.findall(r"[\[{]([^\]}]+)[\]}]", line.split("[OPTIONS]")[1])
    assert all(name == name.upper() for names in usage.values() for name in names), usage
    for cmd in ("corrupt", "split", "pretrain", "train", "audit"):
        assert usage[cmd] == ["MANIFEST"], (cmd, usage[cmd])
    assert usage["sweep"] == ["GRID", "MANIFEST"] and usage["eval"] == ["RUN"]
