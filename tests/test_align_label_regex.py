"""`fernoise align RAW OUT --label-regex PATTERN --label-map CODE=CLASS,...`: labels read from
JAFFE-style file names (``KA.AN1.39.tiff``); rows the pattern does not match, or whose code
nothing maps, get a status and no label, and are counted in the summary."""

from __future__ import annotations

import pytest
from factories import align_cli, make_image

from fernoise.align.faces import AlignParams
from fernoise.align.presets import PRESETTABLE
from fernoise.align.stage import LabelSpec, align_folder
from fernoise.errors import FernoiseError
from fernoise.formats.filenames import parse_label_map
from fernoise.manifest import read_manifest

JAFFE_MAP = "AN=anger,DI=disgust,FE=fear,HA=happy,NE=neutral,SA=sad,SU=surprise"
NAMES = ["KA.AN1.39.tiff", "KA.HA2.30.tiff", "KM.SU1.14.tiff", "NA.NE1.2.tiff", "YM.SA3.57.tiff"]


def jaffe(root):
    for i, name in enumerate(NAMES):
        make_image(root / name, colour=(40 * i, 60, 90))
    make_image(root / "thumbnail.png")  # no code in its name
    make_image(root / "KA.XX1.1.tiff")  # a code the map does not know
    return root


def test_cli_labels_from_file_names_with_a_map(tmp_path, workspace):
    raw = jaffe(tmp_path / "jaffe")
    out = tmp_path / "out"
    r = align_cli(
        str(raw), str(out), "--mode", "whole", "--size", "32",
        "--label-regex", r"\.([A-Z]{2})\d", "--label-map", JAFFE_MAP,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    df = read_manifest(out / "manifest.parquet").df.set_index("src_path")
    assert len(df) == 7
    want = {
        "KA.AN1.39.tiff": "anger",
        "KA.HA2.30.tiff": "happy",
        "KM.SU1.14.tiff": "surprise",
        "NA.NE1.2.tiff": "neutral",
        "YM.SA3.57.tiff": "sad",
    }
    for name, cls in want.items():
        assert df.loc[name, "label_name"] == cls
        assert (df.loc[name, "label_code"], df.loc[name, "label_status"]) == (name[3:5], "ok")
    assert df.loc["thumbnail.png", "label_status"] == "no_match"
    assert df["label"].isna()["thumbnail.png"] and df["label_code"].isna()["thumbnail.png"]
    assert (df.loc["KA.XX1.1.tiff", "label_status"], df.loc["KA.XX1.1.tiff", "label_code"]) == (
        "unknown_code",
        "XX",
    )
    assert df["label"].isna()["KA.XX1.1.tiff"]
    meta = read_manifest(out / "manifest.parquet").meta
    assert meta["classes"] == ["neutral", "happy", "sad", "surprise", "anger"]
    assert "5 of 7 images labelled" in r.output
    assert "1 image does not match" in r.output and "thumbnail.png" in r.output
    assert "XX 1" in r.output


def test_named_group_and_class_names_without_a_map(tmp_path, workspace):
    raw = tmp_path / "raw"
    for name in ("s01_happy_1.png", "s01_sad_2.png", "s02_Angry_1.png", "s02_bored_1.png"):
        make_image(raw / name)
    spec = LabelSpec(label_regex=r"s\d+_(?P<label>[A-Za-z]+)_")
    res = align_folder(raw, tmp_path / "out", AlignParams(mode="whole", size=32), spec)
    df = read_manifest(res.manifest).df.set_index("src_path")
    assert df["label_name"].dropna().to_dict() == {
        "s01_happy_1.png": "happy",
        "s01_sad_2.png": "sad",
        "s02_Angry_1.png": "anger",
    }
    assert df.loc["s02_bored_1.png", "label_status"] == "unknown_code"
    assert res.info["labels"]["unknown_codes"] == {"bored": 1}
    assert res.info["labels"]["labelled"] == 3


def test_bad_patterns_and_maps_are_refused(tmp_path):
    with pytest.raises(FernoiseError) as e:
        LabelSpec(label_regex=r"\.[A-Z]{2}")
    assert e.value.flag == "--label-regex" and "no group" in str(e.value)
    with pytest.raises(FernoiseError) as e:
        LabelSpec(label_map=(("AN", "anger"),))
    assert e.value.flag == "--label-map"
    with pytest.raises(FernoiseError) as e:
        parse_label_map("AN=anger,HA")
    assert e.value.flag == "--label-map"
    with pytest.raises(FernoiseError) as e:
        parse_label_map("AN=furious")
    assert e.value.flag == "--label-map"
    assert parse_label_map({"AN": "Angry", "HA": "happiness"}) == {"AN": "anger", "HA": "happy"}
    assert {"label_regex", "label_map"} <= set(PRESETTABLE)


def test_a_pattern_labelling_nothing_is_an_error(tmp_path, workspace):
    raw = jaffe(tmp_path / "jaffe")
    r = align_cli(
        str(raw), str(tmp_path / "out"), "--mode", "whole", "--size", "32",
        "--label-regex", r"_(\d+)_",
    )  # fmt: skip
    assert r.exit_code != 0 and "labels none of the 7 images" in r.output
    assert not (tmp_path / "out" / "manifest.parquet").exists()


def test_label_regex_from_a_preset(tmp_path, workspace):
    raw = jaffe(tmp_path / "jaffe")
    preset = tmp_path / "jaffe.toml"
    preset.write_text(
        "mode = \"whole\"\nsize = 32\nlabel_regex = '\\.([A-Z]{2})\\d'\n"
        '[label_map]\nAN = "anger"\nHA = "happy"\nSU = "surprise"\nNE = "neutral"\nSA = "sad"\n'
    )
    r = align_cli(str(raw), str(tmp_path / "out"), "--preset", str(preset))
    assert r.exit_code == 0, r.output
    df = read_manifest(tmp_path / "out" / "manifest.parquet").df
    assert int(df["label"].notna().sum()) == 5
