"""Issue 19 item 9: checks that say something: repeated manifest ids, splits no stage reads,
a grid file with a byte-order mark, a grid of a million cells, and upper bounds of
``devices`` / ``image_size``."""

from __future__ import annotations

import pandas as pd
import pytest
from factories import make_aligned

from fernoise.cache import Workspace
from fernoise.corrupt.stage import run_corrupt
from fernoise.errors import FernoiseError
from fernoise.manifest import read_manifest, write_manifest
from fernoise.sweep import runner as sweep
from fernoise.train.config import TrainConfig
from fernoise.train.plan import plan


def tiny(**kw):
    return TrainConfig(
        **{
            "method": "ce",
            "epochs": 1,
            "warmup": 0,
            "batch_size": 16,
            "image_size": 32,
            "precision": "fp32",
            "workers": 0,
            "device": "cpu",
            **kw,
        }
    )


def rewrite(manifest, change):
    """The manifest with its rows changed by ``change(df) -> df``, metadata kept."""
    m = read_manifest(manifest)
    return write_manifest(change(m.df.copy()), manifest, m.meta)


@pytest.fixture
def data(tmp_path):
    return make_aligned(tmp_path / "data")  # 56 rows: ids faces/0000.png..., every 5th row test


def test_repeated_ids_are_refused_by_train_and_corrupt_naming_them(data, tmp_path):
    def repeat(df):
        return pd.concat(
            [df, df.iloc[[1, 1, 2]]], ignore_index=True
        )  # 0001 three times, 0002 twice

    rewrite(data, repeat)
    expected = (
        f"MANIFEST: {data}: 2 ids occur more than once (3 extra rows), first: 'faces/0001.png' x3, "
        "'faces/0002.png' x2; ids must be unique"
    )
    with pytest.raises(FernoiseError) as e:
        plan(data, tiny(), runs_dir=tmp_path / "runs")
    assert e.value.one_line().startswith(expected)
    with pytest.raises(FernoiseError) as e:
        run_corrupt(data, kind="sym", rate=0.2, workspace=Workspace(tmp_path / "ws"))
    assert e.value.one_line().startswith(expected)


def test_rows_of_a_split_no_stage_reads_are_named(data, tmp_path):
    def holdout(df):
        df.loc[df["split"] == "test", "split"] = "holdout"  # all 12 test rows
        return df

    rewrite(data, holdout)
    p = plan(data, tiny(), runs_dir=tmp_path / "runs")
    named = [w for w in p.warnings if "split no stage reads" in w]
    assert named == [
        "manifest.parquet: 12 rows have a split no stage reads: 'holdout' (12 rows); they are left "
        "out of training, validation and test (expected one of train, val, test: rename the split "
        "to use them)"
    ]
    clean = plan(make_aligned(tmp_path / "clean"), tiny(), runs_dir=tmp_path / "runs")
    assert not [w for w in clean.warnings if "split" in w]


def test_a_grid_file_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + b'methods = ["ce", "nl"]\nseeds = [0, 1]\n')
    g = sweep.load_grid(path)
    assert g.methods == ("ce", "nl") and g.seeds == (0, 1)


def test_a_grid_of_a_million_cells_is_refused_with_its_count(tmp_path):
    path = tmp_path / "huge.toml"
    seeds = ", ".join(str(i) for i in range(1000))
    rates = ", ".join(f"{i / 1000:.3f}" for i in range(1, 101))
    lrs = ", ".join(f"{(i + 1) * 1e-5:.6g}" for i in range(10))
    path.write_text(
        f'methods = ["ce"]\nseeds = [{seeds}]\nnoise = [{{kind = "sym", rates = [{rates}]}}]\n'
        f"[train]\nlr_head = [{lrs}]\n"
    )
    with pytest.raises(FernoiseError) as e:
        sweep.load_grid(path)
    assert e.value.one_line() == (
        f"GRID: {path}: top level: 1,000,000 cells (1,000 seeds x 100 noise x 10 train.lr_head); at most 10,000 "
        "are allowed: split the grid into several files (e.g. one per seed or method list)"
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("image_size", 4096, "--image-size: expected 16..1024 px, got 4096"),
        ("image_size", 8, "--image-size: expected 16..1024 px, got 8"),
        ("devices", 100_000, "--devices: expected at most 1024 devices, got 100000"),
    ],
)
def test_image_size_and_devices_have_upper_bounds(field, value, message, tmp_path):
    with pytest.raises(FernoiseError) as e:
        tiny(**{field: value})
    assert e.value.one_line() == message
    assert tiny(**{field: 1024}).__getattribute__(field) == 1024  # the bound itself is allowed
    grid = tmp_path / "g.toml"
    grid.write_text(f'methods = ["ce"]\n[train]\n{field} = {value}\n')
    with pytest.raises(FernoiseError) as e:
        sweep.expand(sweep.load_grid(grid), root=tmp_path)
    assert e.value.one_line().startswith(
        f"GRID: {grid}: train.{field}: {message.split(': ', 1)[1]} (cell ce, clean"
    )
