"""Manifest I/O: types, metadata, lineage, label checks."""

from __future__ import annotations

import pandas as pd
import pytest

from fernoise.errors import FernoiseError
from fernoise.manifest import (
    check_labels,
    find_stage,
    read_manifest,
    read_meta,
    stage_meta,
    write_manifest,
)


def _df():
    return pd.DataFrame(
        {
            "id": ["a.jpg", "b.jpg", "c.jpg"],
            "src_path": ["a.jpg", "b.jpg", "c.jpg"],
            "path": ["faces/a.jpg.jpg", None, "faces/c.jpg.jpg"],
            "split": ["train", "val", "test"],
            "label": pd.array([1, None, 6], dtype="Int64"),
            "status": ["ok", "no_face", "ok"],
            "bbox": [[1.0, 2.0, 30.0, 40.0], None, [0.0, 0.0, 5.0, 5.0]],
            "n_faces": [1, 0, 1],
            "neutral": [3, 4, 0],  # a label-file column, kept as is
        }
    )


def test_round_trip_keeps_types_values_and_metadata(tmp_path):
    path = write_manifest(_df(), tmp_path / "m.parquet", {"classes": ["neutral", "happy"], "stage": "align", "key": "k1"})
    m = read_manifest(path)
    assert list(m.df.columns) == list(_df().columns)
    assert str(m.df["label"].dtype) == "Int64"
    assert m.df["label"].isna().tolist() == [False, True, False]
    assert list(m.df["bbox"].iloc[0]) == [1.0, 2.0, 30.0, 40.0] and m.df["bbox"].iloc[1] is None
    assert m.df["neutral"].tolist() == [3, 4, 0]
    assert m.meta["classes"] == ["neutral", "happy"] and m.key == "k1"
    assert m.meta["schema_version"] == 1 and "fernoise_version" in m.meta
    assert read_meta(path)["stage"] == "align"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_unreadable_and_foreign_files_are_clear_errors(tmp_path):
    bad = tmp_path / "x.parquet"
    bad.write_text("not parquet")
    with pytest.raises(FernoiseError, match="not a readable Parquet manifest"):
        read_manifest(bad)
    with pytest.raises(FernoiseError, match="does not exist"):
        read_manifest(tmp_path / "missing.parquet")
    _df().to_parquet(tmp_path / "plain.parquet")
    with pytest.raises(FernoiseError, match="no fernoise metadata"):
        read_manifest(tmp_path / "plain.parquet")


def test_lineage_chains_and_label_check():
    align = stage_meta(None, stage="align", params={"size": 224}, key="a1")
    align["classes"], align["label_space"] = ["neutral", "happy"], "basic7"
    corrupt = stage_meta(align, stage="corrupt", params={"kind": "sym"}, key="c1")
    assert corrupt["classes"] == ["neutral", "happy"]
    assert [e["stage"] for e in corrupt["lineage"]] == ["align", "corrupt"]
    assert find_stage(corrupt, "align")["params"] == {"size": 224}
    assert find_stage(corrupt, "train") is None
    check_labels(_df(), ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"])
    with pytest.raises(FernoiseError, match="outside 0..1"):
        check_labels(_df(), ["neutral", "happy"])
