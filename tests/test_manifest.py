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
    path = write_manifest(
        _df(),
        tmp_path / "m.parquet",
        {"classes": ["neutral", "happy"], "stage": "align", "key": "k1"},
    )
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


def test_content_digests_are_written_and_find_edits_behind_the_metadata(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fernoise.manifest import column_digest

    path = write_manifest(
        _df(),
        tmp_path / "m.parquet",
        {"classes": ["neutral", "happy"], "stage": "align", "key": "k1"},
    )
    m = read_manifest(path)
    content = m.meta["content"]
    assert content["rows"] == 3 and set(content["columns"]) == set(_df().columns)
    assert m.edited(["id", "label", "bbox"]) == []
    # equal values give equal digests whatever the chunking; any value, null or type change differs
    a = pa.chunked_array([pa.array(["x", None]), pa.array(["yz"])])
    assert column_digest(a) == column_digest(pa.array(["x", None, "yz"]))
    assert column_digest(pa.array(["x", "", "yz"])) != column_digest(pa.array(["x", None, "yz"]))
    assert column_digest(pa.array(["xy", "z"])) != column_digest(pa.array(["x", "yz"]))
    assert column_digest(pa.array([1, 2], pa.int64())) != column_digest(
        pa.array([1, 3], pa.int64())
    )
    assert column_digest(pa.array([[1.0], [2.0, 3.0]])) != column_digest(
        pa.array([[1.0, 2.0], [3.0]])
    )
    key = m.content_key(["id", "split", "label"])
    # edited with pyarrow, metadata kept: a label changed
    table = pq.read_table(path)
    meta = table.schema.metadata
    table = table.set_column(
        table.column_names.index("label"), "label", pa.array([0, None, 6], pa.int64())
    )
    pq.write_table(table.replace_schema_metadata(meta), path)
    m2 = read_manifest(path)
    assert m2.key == "k1" and m2.edited(["id", "split", "label"]) == ["label"]
    assert m2.content_key(["id", "split", "label"]) != key
    assert m2.content_key(["id", "split"]) == m.content_key(
        ["id", "split"]
    )  # unused columns do not count
    pq.write_table(table.slice(0, 2).replace_schema_metadata(meta), path)
    assert read_manifest(path).edited(["id"]) == ["rows", "id"]


def test_a_folder_is_called_a_folder(tmp_path):
    write_manifest(_df(), tmp_path / "manifest.parquet", {"classes": ["neutral"], "key": "k"})
    with pytest.raises(FernoiseError, match=r"is a folder, not a file; pass .*manifest\.parquet"):
        read_manifest(tmp_path)
    with pytest.raises(FernoiseError, match="is a folder"):
        read_meta(tmp_path)
