"""The public Python API: every name resolves to the function its command calls, `import
fernoise` stays torch-free, the docs page lists every name, and the example script runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import fernoise

REPO = Path(__file__).resolve().parents[1]


def test_every_public_name_is_the_stage_function():
    from fernoise.audit.stage import run_audit
    from fernoise.corrupt.stage import run_corrupt
    from fernoise.evaluate.stage import evaluate_run
    from fernoise.train.stage import train

    assert fernoise.run_train is train and fernoise.run_eval is evaluate_run
    assert fernoise.run_corrupt is run_corrupt and fernoise.run_audit is run_audit
    for name in fernoise.__all__[1:]:
        assert callable(getattr(fernoise, name)), name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        fernoise.nope  # noqa: B018


def test_import_fernoise_loads_no_torch():
    code = "import sys, fernoise; fernoise.TrainConfig; fernoise.run_report; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_docs_page_lists_every_public_function():
    page = (REPO / "docs" / "api.md").read_text()
    for name in fernoise.__all__[1:]:
        assert f"{name}" in page, name


@pytest.mark.slow
def test_example_script_runs_every_stage(tmp_path):
    res = subprocess.run(
        [sys.executable, str(REPO / "examples" / "api.py"), str(tmp_path / "out")]
        + ["--epochs", "1", "--size", "32", "--per-class", "4"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    for step in ("align:", "corrupt:", "ce:", "ncctfer:", "audit:", "clean:", "predict:"):
        assert step in res.stdout, step
