"""A manifest's class list is the dataset's own classes, and noise never leaves it (issue 9.1).

Real stages on generated images: ``fernoise align --mode whole`` over class folders (or a CSV),
then ``fernoise corrupt`` of every kind; the manifests and printed tables are asserted.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from fernoise.align.faces import AlignParams
from fernoise.align.stage import LabelSpec, align_folder, dataset_classes
from fernoise.cli.app import app
from fernoise.corrupt.kinds import CorruptParams, column_indices, corrupt, exact_count
from fernoise.errors import FernoiseError
from fernoise.labels import CLASSES, class_list, label_space_of
from fernoise.manifest import read_manifest

WHOLE = AlignParams(mode="whole", size=32)
THREE = ["happy", "sad", "anger"]
NO_NEUTRAL = ["happy", "sad", "surprise", "fear", "disgust", "anger", "contempt"]


def folder_set(root, classes, n_train=10, n_test=2, folder_names=None):
    """``root/<split>/<class>/img<k>.png``: n_train + n_test small images per class."""
    names = folder_names or {}
    k = 0
    for c in classes:
        for split, n in (("train", n_train), ("test", n_test)):
            for _ in range(n):
                p = root / split / names.get(c, c) / f"img{k:03d}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (36, 36), (k % 250, 40, 200)).save(p)
                k += 1
    return root


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(res, flag):
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("using ")]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag}"), res.stderr
    return lines[0]


# ----------------------------------------------------------------------------- helpers
def test_class_list_and_label_space_by_hand():
    assert class_list("Angry,happiness,sad") == THREE
    assert class_list(["anger", "happy", "happy"]) == ["happy", "anger"]
    assert class_list("basic7") == list(CLASSES[:7]) and class_list("basic8") == list(CLASSES)
    assert label_space_of(CLASSES[:7]) == "basic7" and label_space_of(CLASSES) == "basic8"
    assert label_space_of(THREE) == "custom" and label_space_of(NO_NEUTRAL) == "custom"
    with pytest.raises(FernoiseError) as e:
        class_list("happy,grumpy", flag="--classes")
    assert e.value.flag == "--classes" and "grumpy" in str(e.value)
    # canonical labels -> the list of the classes that occur, and indices into it
    classes, space, local = dataset_classes([1, 6, None, 2, 6], declared=None, fixed=None)
    assert (classes, space, local) == (THREE, "custom", [0, 2, None, 1, 2])
    classes, space, local = dataset_classes([1, 6], declared=None, fixed="basic7")
    assert (classes, space, local) == (list(CLASSES[:7]), "basic7", [1, 6])
    classes, _, local = dataset_classes([1, 6], declared=["happy", "fear", "anger"], fixed=None)
    assert classes == ["happy", "fear", "anger"] and local == [0, 2]


# ----------------------------------------------------------------------------- the 3-class folder set
def test_three_class_folders_align_and_sym_stays_inside_the_three(tmp_path, workspace):
    raw = folder_set(tmp_path / "raw", THREE, folder_names={"sad": "Sadness", "anger": "angry"})
    res = cli("align", raw, tmp_path / "out", "--mode", "whole", "--size", "32")
    assert res.exit_code == 0, res.output
    assert "classes (custom): happy, sad, anger" in res.output
    m = read_manifest(tmp_path / "out" / "manifest.parquet")
    assert m.classes == THREE and m.meta["label_space"] == "custom"
    df = m.df
    assert sorted(df["label"].unique().tolist()) == [0, 1, 2]
    folder = df["src_path"].str.split("/").str[1]
    assert (
        folder.map({"happy": "happy", "Sadness": "sad", "angry": "anger"}) == df["label_name"]
    ).all()
    assert ([THREE[i] for i in df["label"]] == df["label_name"]).all()

    res = cli("corrupt", "--kind", "sym", "--rate", "0.5", "--seed", "3")
    assert res.exit_code == 0, res.output
    out = read_manifest(tmp_path / "out" / "manifest.sym-r0.50-s3.parquet")
    assert out.classes == THREE and out.meta["label_space"] == "custom"
    d = out.df
    assert d["label"].between(0, 2).all() and set(d["label_name"]) <= set(THREE)
    train = d["split"] == "train"
    assert int(d.loc[train, "is_noisy"].sum()) == 3 * exact_count(0.5, 10) == 15
    assert not d.loc[~train, "is_noisy"].any()
    noise = out.meta["noise"]
    t = np.array(noise["transition"])
    assert noise["classes"] == THREE and t.shape == (3, 3)
    assert t.sum(axis=1).tolist() == [10, 10, 10] and np.diag(t).tolist() == [5, 5, 5]
    # the printed matrix has the three columns, and no neutral
    header = next(ln for ln in res.output.splitlines() if ln.strip().startswith("clean"))
    assert header.split() == ["clean", "happ", "sad", "ange", "n", "flip", "rate"]


def test_a_seven_class_set_without_neutral(tmp_path, workspace):
    raw = folder_set(tmp_path / "raw", NO_NEUTRAL, n_train=6, n_test=1)
    assert cli("align", raw, tmp_path / "out", "--mode", "whole", "--size", "32").exit_code == 0
    m = read_manifest(tmp_path / "out" / "manifest.parquet")
    assert m.classes == NO_NEUTRAL and m.meta["label_space"] == "custom"
    res = cli("corrupt", "--kind", "sym", "--rate", "0.5")
    assert res.exit_code == 0, res.output
    d = read_manifest(tmp_path / "out" / "manifest.sym-r0.50-s0.parquet").df
    assert d["label"].between(0, 6).all() and "neutral" not in set(d["label_name"])
    assert int(d["is_noisy"].sum()) == 7 * exact_count(0.5, 6)

    # the paper's asym pairs send happy and sad to neutral, which this set lacks: one line
    line = one_line_error(cli("corrupt", "--kind", "asym", "--rate", "0.3"), "--pairs")
    assert "'happy'" in line and "'neutral'" in line and "--pairs FILE" in line
    assert not list((tmp_path / "out").glob("manifest.asym*"))
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(
        "happy,surprise\nsad,fear\nsurprise,anger\nfear,surprise\ndisgust,anger\nanger,happy\ncontempt,disgust\n"
    )
    res = cli("corrupt", "--kind", "asym", "--rate", "0.5", "--pairs", pairs)
    assert res.exit_code == 0, res.output
    out = read_manifest(tmp_path / "out" / "manifest.asym-r0.50-s0.parquet")
    flipped = out.df[out.df["is_noisy"]]
    want = {"happy": "surprise", "sad": "fear", "contempt": "disgust"}
    for clean, name in zip(flipped["label_clean"], flipped["label_name"], strict=True):
        assert want.get(NO_NEUTRAL[clean], name) == name
    assert out.meta["noise"]["partners"]["happy"] == "surprise"

    # a matrix is C x C of the manifest's own classes
    bad = tmp_path / "eight.npy"
    np.save(bad, np.eye(8))
    line = one_line_error(cli("corrupt", "--kind", "matrix", "--matrix", bad), "--matrix")
    assert "7x7" in line and "contempt" in line
    good = tmp_path / "seven.npy"
    np.save(good, np.roll(np.eye(7), 1, axis=1))  # every class to the next one in the list
    assert cli("corrupt", "--kind", "matrix", "--matrix", good).exit_code == 0
    out = next((tmp_path / "out").glob("manifest.matrix-*.parquet"))
    d = read_manifest(out).df
    train = d["split"] == "train"
    assert ((d.loc[train, "label"] - d.loc[train, "label_clean"]) % 7 == 1).all()


def test_declared_classes_and_classes_left_out(tmp_path, workspace):
    raw = folder_set(tmp_path / "raw", THREE, n_train=2, n_test=0)
    res = cli(
        "align",
        raw,
        tmp_path / "out",
        "--mode",
        "whole",
        "--size",
        "32",
        "--classes",
        "anger,Happy,fear,sad",
    )
    assert res.exit_code == 0, res.output
    m = read_manifest(tmp_path / "out" / "manifest.parquet")
    assert m.classes == ["happy", "sad", "fear", "anger"] and m.meta["label_space"] == "custom"
    assert m.df.groupby("label_name")["label"].first().to_dict() == {
        "happy": 0,
        "sad": 1,
        "anger": 3,
    }
    res = cli(
        "align", raw, tmp_path / "out", "--mode", "whole", "--size", "32", "--classes", "basic7"
    )
    assert res.exit_code == 0 and read_manifest(
        tmp_path / "out" / "manifest.parquet"
    ).classes == list(CLASSES[:7])
    line = one_line_error(
        cli("align", raw, tmp_path / "out2", "--mode", "whole", "--classes", "happy,sad"),
        "--classes",
    )
    assert "2 images are labelled anger" in line
    line = one_line_error(
        cli("align", raw, tmp_path / "out2", "--mode", "whole", "--classes", "happy,bored"),
        "--classes",
    )
    assert "bored" in line
    # the class list is in the key: a different list misses the cache
    r1 = align_folder(raw, tmp_path / "o3", WHOLE, LabelSpec(classes=("happy", "sad", "anger")))
    r2 = align_folder(
        raw, tmp_path / "o3", WHOLE, LabelSpec(classes=("happy", "sad", "fear", "anger"))
    )
    assert not r2.hit and r1.key != r2.key


def test_csv_labels_give_the_classes_that_occur(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    rows = ["path,label"]
    for i, name in enumerate(["happy", "Angry", "6", "happiness", ""]):
        Image.new("RGB", (36, 36), (i, 2, 3)).save(raw / f"{i}.png")
        rows.append(f"{i}.png,{name}")
    (tmp_path / "l.csv").write_text("\n".join(rows) + "\n")
    r = align_folder(
        raw, tmp_path / "out", WHOLE, LabelSpec(files=(str(tmp_path / "l.csv"),), format="csv")
    )
    m = read_manifest(r.manifest)
    assert m.classes == ["happy", "anger"] and m.meta["label_space"] == "custom"
    assert m.df["label"].tolist()[:4] == [0, 1, 1, 0] and pd.isna(m.df["label"].iloc[4])


# ----------------------------------------------------------------------------- column noise by name
def test_column_values_map_by_name_into_the_list_and_outside_ones_are_counted():
    classes = THREE
    vals = pd.Series(["angry", "Happiness", None, "neutral", "sad", "neutral", "contempt", "6"])
    idx, outside = column_indices(vals, classes, column="second")
    assert idx.tolist() == [2, 0, -1, -2, 1, -2, -2, 2]
    assert outside == {"neutral": 2, "contempt": 1}
    ints = pd.Series(
        [6, 1, None, 0], dtype="Int64"
    )  # canonical indices: 6 anger, 1 happy, 0 neutral
    idx, outside = column_indices(ints, classes, column="second")
    assert idx.tolist() == [2, 0, -1, -2] and outside == {"neutral": 1}
    for bad in (pd.Series(["bored"]), pd.Series([9]), pd.Series(["8"])):
        with pytest.raises(FernoiseError) as e:
            column_indices(bad, classes, column="second")
        assert e.value.flag == "--column"

    df = pd.DataFrame(
        {
            "id": [f"i{k}" for k in range(6)],
            "split": ["train"] * 5 + ["test"],
            "label": pd.array([0, 1, 2, 2, 0, 1], dtype="Int64"),
            "second": ["happy", "anger", "neutral", "anger", None, "fear"],
        }
    )
    out, info = corrupt(df, classes=classes, params=CorruptParams("column", column="second"))
    assert out["label"].isna().tolist() == [False, False, True, False, True, False]
    assert out["label"].iloc[[0, 1, 3, 5]].tolist() == [0, 2, 2, 1]  # the test row keeps its label
    assert out["is_noisy"].tolist() == [False, True, False, False, False, False]
    assert info["missing"] == 1 and info["outside"] == {"neutral": 1}
    assert info["transition"] == [[1, 0, 0], [0, 0, 1], [0, 0, 1]]
    assert json.loads(json.dumps(info))["outside"] == {"neutral": 1}


def test_column_outside_rows_are_printed(tmp_path, workspace):
    raw = folder_set(tmp_path / "raw", THREE, n_train=2, n_test=0)
    r = align_folder(raw, tmp_path / "out", WHOLE)
    m = read_manifest(r.manifest)
    df = m.df.copy()
    df["second"] = ["neutral", "happy", "sad", "sad", "anger", "contempt"]
    from fernoise.manifest import write_manifest

    p = write_manifest(df, tmp_path / "out" / "m2.parquet", m.meta)
    res = cli("corrupt", p, "--kind", "column", "--column", "second")
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "2 have a class this manifest does not have (neutral 1, contempt 1)" in text


def test_a_preset_declares_the_classes_and_the_option_wins(tmp_path, workspace):
    raw = folder_set(tmp_path / "raw", THREE, n_train=1, n_test=0)
    preset = tmp_path / "posed.toml"
    preset.write_text(
        'mode = "whole"\nsize = 32\nclasses = ["anger", "happy", "sad", "surprise"]\n'
    )
    assert cli("align", raw, tmp_path / "out", "--preset", preset).exit_code == 0
    assert read_manifest(tmp_path / "out" / "manifest.parquet").classes == [
        "happy",
        "sad",
        "surprise",
        "anger",
    ]
    assert (
        cli("align", raw, tmp_path / "out", "--preset", preset, "--classes", "basic8").exit_code
        == 0
    )
    assert read_manifest(tmp_path / "out" / "manifest.parquet").classes == list(CLASSES)
