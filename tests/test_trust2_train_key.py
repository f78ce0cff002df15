"""Issue 19, item 4 (a, b): no stale train result. A run that skipped rows whose crop was
unusable is keyed on those rows, so a re-run after `fernoise align` repaired them trains again;
a label edit that keeps the manifest's size and mtime is never a cache hit."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from factories import SIZE, make_manifest, one_epoch_args
from typer.testing import CliRunner

from fernoise.cli.app import app
from fernoise.train.config import TrainConfig
from fernoise.train.plan import plan

ARGS = one_epoch_args()


def _train(manifest: Path):
    res = CliRunner().invoke(app, ["train", str(manifest), *ARGS])
    assert res.exit_code == 0, res.output
    tag, _, path = res.output.strip().splitlines()[-1].partition(": ")
    return tag, Path(path)


def _cfg() -> TrainConfig:
    return TrainConfig(
        method="ce",
        epochs=1,
        warmup=0,
        batch_size=8,
        image_size=SIZE,
        workers=0,
        precision="fp32",
        device="cpu",
    )


@pytest.mark.slow
def test_a_run_after_align_repaired_its_skipped_crops_trains_again(tmp_path, workspace):
    data = make_manifest(tmp_path / "d", n=30)
    full_key = plan(data, _cfg()).key  # the key of a fully usable run, as it always was
    crops = [data.parent / "faces" / f"{i:04d}.png" for i in (1, 2, 3)]  # train rows
    saved = tmp_path / "saved"
    saved.mkdir()
    for c in crops:
        shutil.move(c, saved / c.name)
    tag, skipped_run = _train(data)
    assert tag == "wrote"
    cfg = json.loads((skipped_run / "config.json").read_text())
    assert cfg["skipped_crops"] == 3 and cfg["n_train"] == 21
    assert cfg["key"] != full_key and not skipped_run.name == full_key[:16]
    assert _train(data) == ("cache hit", skipped_run)  # nothing changed: its own key answers
    # `fernoise align` puts the crops back (same bytes): the same command trains on every row.
    for c in crops:
        shutil.copy2(saved / c.name, c)
    tag, full_run = _train(data)
    assert tag == "wrote", "a cache hit on weights trained without the repaired rows"
    cfg = json.loads((full_run / "config.json").read_text())
    assert full_run != skipped_run and cfg["key"] == full_key
    assert "skipped_crops" not in cfg and cfg["n_train"] == 24
    assert _train(data) == ("cache hit", full_run)


@pytest.mark.slow
def test_a_run_of_an_older_fernoise_that_skipped_rows_under_the_full_key_is_not_a_hit(
    tmp_path, workspace
):
    data = make_manifest(tmp_path / "d", n=30)
    tag, run = _train(data)
    # What fernoise before issue 19 left: the full key's folder, trained while 3 rows were skipped.
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "skipped_crops": 3}))
    from fernoise.cache import stamp_path, write_stamp

    stamp = json.loads(stamp_path(run / "model.pt").read_text())
    write_stamp(
        run / "model.pt",
        stamp["key"],
        [run / name for name in stamp["outputs"]],
        stage="train",
        params=stamp["params"],
    )
    for entry in (workspace / "runs" / ".fernoise" / "index").glob("*.json"):
        entry.unlink()
    tag, again = _train(data)
    assert tag == "wrote" and again == run
    assert "skipped_crops" not in json.loads((run / "config.json").read_text())


def _rewrite_plain(path: Path, table) -> None:
    """Rewrite the manifest uncompressed with plain encoding, so a label swap keeps its size."""
    pq.write_table(table, path, compression="none", use_dictionary=False)


def test_a_label_edit_keeping_size_and_mtime_is_not_a_cache_hit(tmp_path, workspace):
    data = make_manifest(tmp_path / "d", n=30)
    table = pq.read_table(data)
    _rewrite_plain(data, table)  # metadata (recorded key and content digests) kept as written
    tag, first = _train(data)
    assert tag == "wrote"
    st = data.stat()
    df = table.to_pandas()
    train = df.index[(df["split"] == "train")]
    a = next(i for i in train if df.at[i, "label"] != df.at[train[0], "label"])
    labels = df["label"].to_numpy().copy()
    labels[[train[0], a]] = labels[[a, train[0]]]
    edited = table.set_column(
        table.schema.get_field_index("label"),
        "label",
        [labels.astype(table.schema.field("label").type.to_pandas_dtype())],
    )
    _rewrite_plain(data, edited.replace_schema_metadata(table.schema.metadata))
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert data.stat().st_size == st.st_size and data.stat().st_mtime_ns == st.st_mtime_ns
    tag, second = _train(data)
    assert tag == "wrote", "the edited labels hit the run trained on the old ones"
    assert second != first
    assert (
        json.loads((second / "config.json").read_text())["key"]
        != json.loads((first / "config.json").read_text())["key"]
    )
