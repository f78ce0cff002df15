"""Item 15 of issue 8: the presets ship inside the wheel and a non-editable install finds them."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_presets_are_package_data_loaded_with_importlib_resources():
    import tomllib
    from importlib.resources import files

    from fernoise.align.presets import load_preset, preset_names

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "presets/*.toml" in pyproject["tool"]["setuptools"]["package-data"]["fernoise"]
    assert preset_names() == ["affectnet", "ferplus", "ferplus-whole", "rafdb", "wild"]
    assert not (ROOT / "manifests" / "presets").exists()
    res = files("fernoise").joinpath("presets", "ferplus-whole.toml")
    assert res.is_file() and load_preset("ferplus-whole") == {
        "format": "ferplus",
        "mode": "whole",
        "on_duplicate": "last",
    }


def test_every_subpackage_is_declared():
    """A sub-package missing from pyproject's explicit list is missing from the wheel (the
    editable install hides it): fernoise.methods once was."""
    import tomllib

    declared = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "fernoise").rglob("__init__.py")
    }
    assert found - declared == set()
    assert "fernoise.cli" in declared


@pytest.mark.slow
def test_wheel_ships_the_presets_and_a_wheel_install_runs_a_preset(tmp_path):
    """Build the wheel from a copy of the tree (nothing written into the repository), check
    the presets are inside, install it (no deps: they come from this environment through a
    .pth) into a fresh venv and run `fernoise align ... --preset ferplus-whole` there."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "fernoise", src / "fernoise", ignore=shutil.ignore_patterns("__pycache__")
    )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [
            *pip,
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("fernoise-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert sorted(n for n in names if n.startswith("fernoise/presets/")) == [
        f"fernoise/presets/{p}.toml"
        for p in ("affectnet", "ferplus-whole", "ferplus", "rafdb", "wild")
    ]
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    subprocess.run(
        [*pip, "--python", str(py), "install", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
    )
    site = next((env_dir / "lib").glob("python3*/site-packages"))
    deps = Path(importlib.util.find_spec("pandas").origin).parents[1]
    (site / "zz_deps.pth").write_text(f"{deps}\n")
    raw = tmp_path / "raw"
    raw.mkdir()
    Image.new("L", (48, 48), 128).save(raw / "fer0000000.png")
    (tmp_path / "fer2013new.csv").write_text(
        "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n"
        "Training,fer0000000.png,0,10,0,0,0,0,0,0,0,0\n"
    )
    run = subprocess.run(
        [
            str(env_dir / "bin" / "fernoise"),
            "align",
            str(raw),
            str(tmp_path / "out"),
            "--preset",
            "ferplus-whole",
            "--labels",
            str(tmp_path / "fer2013new.csv"),
            "--size",
            "32",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "FERNOISE_WORKSPACE": str(tmp_path)},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    where = subprocess.run(
        [str(py), "-c", "import fernoise; print(fernoise.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout.strip()
    assert where.startswith(str(site))  # the wheel's copy ran, not the source tree
    out = subprocess.run(
        [
            str(py),
            "-c",
            "import pandas as pd; df = pd.read_parquet('out/manifest.parquet'); "
            "print(df['status'].tolist(), df['label_name'].tolist())",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == "['whole'] ['happy']"
