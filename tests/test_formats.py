"""Label readers: FER+ majority rule, RAF-DB, AffectNet, csv, class folders, matching, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fernoise.errors import FernoiseError
from fernoise.formats import FormatOptions, match_paths, normalize_split, read_labels
from fernoise.formats.ferplus import majority
from fernoise.formats.folders import from_paths
from fernoise.labels import CLASSES

FERPLUS_HEADER = (
    "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n"
)


def test_ferplus_majority_rule_by_hand():
    votes = np.array(
        [
            [
                4,
                0,
                0,
                1,
                3,
                2,
                0,
                0,
                0,
                0,
            ],  # single sadness vote dropped -> 4 of 9 not > half -> none
            [6, 0, 1, 1, 0, 0, 0, 0, 2, 0],  # singles dropped -> 6 of 8 -> neutral
            [0, 10, 0, 0, 0, 0, 0, 0, 0, 0],  # happy
            [0, 0, 0, 0, 0, 0, 0, 0, 7, 3],  # winner unknown -> none
            [0, 0, 0, 0, 0, 0, 0, 0, 2, 8],  # winner NF -> none
            [5, 5, 0, 0, 0, 0, 0, 0, 0, 0],  # tie: 5 of 10 is not > half -> none
            [0, 0, 0, 0, 0, 0, 0, 6, 4, 0],  # contempt 6 of 10
            [1, 1, 1, 1, 1, 1, 1, 1, 1, 1],  # all singles -> nothing left -> none
        ]
    )
    assert majority(votes).tolist() == [-1, 0, 1, -1, -1, -1, 7, -1]


def test_ferplus_reader(tmp_path):
    f = tmp_path / "fer2013new.csv"
    f.write_text(
        FERPLUS_HEADER
        + "Training,fer0000000.png,4,0,0,1,3,2,0,0,0,0\n"
        + "Training,,0,0,0,0,0,0,0,0,0,10\n"
        + "PublicTest,fer0000002.png,0,0,9,0,0,0,0,0,1,0\n"
        + "PrivateTest,fer0000003.png,0,0,0,8,2,0,0,0,0,0\n"
        + "Training,fer0000004.png,0,10,0,0,0,0,0,0,0,0\n"
        + "Training,fer0000004.png,0,0,0,0,10,0,0,0,0,0\n"
    )
    t = read_labels("ferplus", [f])
    df = t.df.set_index("key")
    assert list(df.index) == [
        "fer0000000.png",
        "fer0000002.png",
        "fer0000003.png",
        "fer0000004.png",
    ]
    assert df["split"].tolist() == ["train", "val", "test", "train"]
    assert df["label"].isna().tolist() == [True, False, False, False]
    assert [CLASSES[int(x)] for x in df["label"].dropna()] == [
        "surprise",
        "sad",
        "anger",
    ]  # later duplicate wins
    assert df["surprise"].tolist() == [0, 9, 0, 0] and df["surprise"].dtype == np.int64
    assert t.label_space == "basic8"
    assert (
        t.info["non_face_rows"] == 1
        and t.info["duplicate_rows"] == 1
        and t.info["conflicting_names"] == 1
    )
    assert t.conflicts == {
        "fer0000004.png": [(CLASSES.index("happy"), "train"), (CLASSES.index("anger"), "train")]
    }


def test_duplicate_rows_merge_when_equal_and_are_listed_when_they_disagree(tmp_path):
    f = tmp_path / "l.csv"
    f.write_text(
        "path,label,split\na.png,happy,train\n./a.png,happy,train\nb.png,sad,train\nc.png,fear,train\n"
        "b.png,anger,train\nc.png,fear,test\n"
    )
    last = read_labels("csv", [f], FormatOptions("path", "label", "split"))
    assert last.df["key"].tolist() == ["./a.png", "b.png", "c.png"]
    assert [CLASSES[int(x)] for x in last.df["label"]] == ["happy", "anger", "fear"]
    assert last.df["split"].tolist() == ["train", "train", "test"]
    assert last.info["duplicate_rows"] == 3 and last.info["conflicting_names"] == 2
    assert list(last.conflicts) == ["b.png", "c.png"]
    first = read_labels("csv", [f], FormatOptions("path", "label", "split"), on_duplicate="first")
    assert [CLASSES[int(x)] for x in first.df["label"]] == ["happy", "sad", "fear"]
    assert first.df["split"].tolist() == ["train", "train", "train"]
    with pytest.raises(FernoiseError, match="expected one of: first, last"):
        read_labels("csv", [f], FormatOptions("path", "label", "split"), on_duplicate="both")


def test_rafdb_reader_matches_aligned_names(tmp_path):
    f = tmp_path / "list_patition_label.txt"
    f.write_text("train_00001.jpg 5\ntest_0001.jpg 7\n")
    t = read_labels("rafdb", [f])
    assert t.df["label"].tolist() == [CLASSES.index("sad"), CLASSES.index("neutral")]
    assert t.df["split"].tolist() == ["train", "test"]
    src = ["aligned/train_00001_aligned.jpg", "aligned/test_0001_aligned.jpg", "aligned/other.jpg"]
    where = match_paths(src, t.df["key"].tolist(), t.df["alt_key"].tolist())
    assert where == {"aligned/train_00001_aligned.jpg": 0, "aligned/test_0001_aligned.jpg": 1}
    f.write_text("train_00001.jpg 9\n")
    with pytest.raises(FernoiseError, match="1-7"):
        read_labels("rafdb", [f])
    f.write_text("train_00001.jpg,5\n")
    with pytest.raises(FernoiseError, match="RAF-DB format"):
        read_labels("rafdb", [f])


def test_affectnet_reader_drops_8_to_10(tmp_path):
    head = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal\n"
    (tmp_path / "training.csv").write_text(
        head + "1/a.jpg,0,0,10,10,,7,0.1,0.2\n1/b.jpg,0,0,10,10,,9,0,0\n"
    )
    (tmp_path / "validation.csv").write_text(head + "2/c.jpg,0,0,10,10,,3,0,0\n")
    t = read_labels("affectnet", [tmp_path / "training.csv", tmp_path / "validation.csv"])
    assert t.df["key"].tolist() == ["1/a.jpg", "1/b.jpg", "2/c.jpg"]
    assert (
        t.df["label"].tolist()[0] == 7
        and pd.isna(t.df["label"].tolist()[1])
        and t.df["label"].tolist()[2] == 3
    )
    assert t.df["split"].tolist() == ["train", "train", "val"]
    assert t.label_space == "basic8" and "valence" in t.df.columns


def test_csv_reader_names_indices_and_splits(tmp_path):
    f = tmp_path / "labels.csv"
    f.write_text(
        "file,emotion,part,extra\na.png,Angry,Training,1\nb.png,3,valid,2\nc.png,,test,3\n"
    )
    t = read_labels("csv", [f], FormatOptions("file", "emotion", "part"))
    assert t.df["label"].tolist()[:2] == [CLASSES.index("anger"), 3] and pd.isna(
        t.df["label"].tolist()[2]
    )
    assert t.df["split"].tolist() == ["train", "val", "test"]
    assert "extra" in t.df.columns and "emotion" not in t.df.columns
    f.write_text("file,emotion\na.png,grumpy\n")
    with pytest.raises(FernoiseError, match="unknown class name 'grumpy'.*anger"):
        read_labels("csv", [f], FormatOptions("file", "emotion"))
    with pytest.raises(FernoiseError, match="no column 'path'") as e:
        read_labels("csv", [f], FormatOptions())
    assert e.value.flag == "--path-column"


def test_unknown_format_lists_valid_ones(tmp_path):
    (tmp_path / "x.csv").write_text("a\n1\n")
    with pytest.raises(FernoiseError, match="expected one of: rafdb, ferplus, affectnet, csv"):
        read_labels("fer2013", [tmp_path / "x.csv"])


def test_folders_classes_splits_and_unknown_name():
    labels, splits = from_paths(
        ["Train/Happy/a.jpg", "test/angry/b.jpg", "sadness/c.jpg", "d.jpg", "val/e.jpg"]
    )
    assert labels == [
        CLASSES.index("happy"),
        CLASSES.index("anger"),
        CLASSES.index("sad"),
        None,
        None,
    ]
    assert splits == ["train", "test", None, None, "val"]
    with pytest.raises(FernoiseError, match="folder 'grumpy'.*anger"):
        from_paths(["grumpy/a.jpg"])
    assert from_paths(["batch1/a.jpg"], labelled=False) == ([None], [None])


def test_match_paths_suffix_both_ways_and_ambiguity():
    src = ["fer0000001.png", "sub/x.png"]
    assert match_paths(src, ["FER2013Valid/fer0000001.png", "x.png"]) == {
        "fer0000001.png": 0,
        "sub/x.png": 1,
    }
    with pytest.raises(FernoiseError, match="matches 2 images"):
        match_paths(["a/x.png", "b/x.png"], ["x.png"])
    with pytest.raises(FernoiseError, match="named by 2 rows"):
        match_paths(["x.png"], ["a/x.png", "b/x.png"])
    assert match_paths(["x.png"], ["x.png", "a/x.png"]) == {"x.png": 0}  # an exact match wins


def test_normalize_split():
    assert [normalize_split(s) for s in ("Training", "PublicTest", "PrivateTest", "valid", "")] == [
        "train",
        "val",
        "test",
        "val",
        None,
    ]
    with pytest.raises(FernoiseError, match="unknown split 'holdout'"):
        normalize_split("holdout")
