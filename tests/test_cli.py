"""The command line as users meet it: help, version, and the lazy import of torch."""

from __future__ import annotations

import subprocess
import sys


def test_help_lists_the_four_stages():
    out = subprocess.run([sys.executable, "-m", "fernoise_cli.app", "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("align", "corrupt", "train", "eval"):
        assert cmd in out


def test_version_and_no_torch_at_startup():
    code = "import sys; from fernoise_cli.app import app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False", "importing the CLI must not import torch (cache hits stay fast)"
    out = subprocess.run([sys.executable, "-m", "fernoise_cli.app", "--version"], capture_output=True, text=True, check=True).stdout
    assert out.strip().startswith("fernoise ")
