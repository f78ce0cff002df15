"""The command line as users meet it: help, version, and the lazy import of torch."""

from __future__ import annotations

import subprocess
import sys


def test_help_lists_the_four_stages():
    out = subprocess.run(
        [sys.executable, "-m", "fernoise.cli.app", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for cmd in ("align", "corrupt", "train", "eval"):
        assert cmd in out


def test_version_and_no_torch_at_startup():
    code = "import sys; from fernoise.cli.app import app; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False", "importing the CLI must not import torch (cache hits stay fast)"
    out = subprocess.run(
        [sys.executable, "-m", "fernoise.cli.app", "--version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip().startswith("fernoise ")


def test_dependencies_are_ranges_and_ci_installs_the_constraints():
    """Issue 8 item 16: no exact pins in pyproject.toml; the exact versions live in
    constraints.txt (each inside its declared range), which README's set-up command and
    .ci/run both use (CI runs exactly README's commands)."""
    import re
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    reqs = {Requirement(r).name: Requirement(r) for r in project["dependencies"]}
    assert not [
        str(r) for r in reqs.values() if any(s.operator in ("==", "===") for s in r.specifier)
    ]
    for name in ("torch", "torchvision", "facenet-pytorch"):
        ops = {s.operator for s in reqs[name].specifier}
        assert ops == {">=", "<"}, (name, str(reqs[name].specifier))  # a tested floor and a ceiling
    assert not reqs["facenet-pytorch"].specifier.contains("2.6.0")  # 2.6 pins an old torch
    pins = {}
    for line in (root / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.strip().lower()] = version.strip()
    for name, req in reqs.items():
        assert name in pins, f"{name} has no exact version in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            name,
            pins[name],
            str(req.specifier),
        )
    setup = 'python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e ".[dev]"'
    assert setup in (root / "README.md").read_text()
    ci = (root / ".ci" / "run").read_text()
    assert setup in ci and re.search(r"^\.venv/bin/python -m pytest -q$", ci, re.M)
