"""`fernoise predict`: every face classified, every bad file reported with a reason."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import WILD
from factories import CLASSES7, cli, predict_run
from PIL import Image

from fernoise.errors import FernoiseError
from fernoise.predict import classify, crops_to_array, expand_inputs, write_rows


def make_folder(root):
    """Two generated photos without faces, a text file named .jpg, an empty .png, a README."""
    rng = np.random.default_rng(0)
    (root / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (80, 120, 3), dtype=np.uint8)).save(root / "noise.png")
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(root / "sub" / "grey.JPG")
    (root / "notes.jpg").write_text("this is not an image\n")
    (root / "empty.png").write_bytes(b"")
    (root / "README.md").write_text("# not a photo\n")
    (root / ".hidden.jpg").write_text("skipped")
    return root


def test_expand_inputs_finds_images_recursively_and_keeps_named_files(tmp_path):
    folder = make_folder(tmp_path / "photos")
    names = [p.relative_to(folder).as_posix() for p in expand_inputs([folder])]
    assert names == ["empty.png", "noise.png", "notes.jpg", "sub/grey.JPG"]
    assert expand_inputs([folder / "README.md"]) == [folder / "README.md"]  # named: always tried
    with pytest.raises(FernoiseError, match="does not exist"):
        expand_inputs([tmp_path / "nope"])
    (tmp_path / "none").mkdir()
    with pytest.raises(FernoiseError, match="no image files"):
        expand_inputs([tmp_path / "none"])


def test_classify_gives_sorted_top3_per_face(tmp_path):
    from fernoise.evaluate.stage import load_model, load_run

    model = load_model(load_run(predict_run(tmp_path / "run")))
    rng = np.random.default_rng(1)
    crops = [Image.fromarray(rng.integers(0, 255, (s, s, 3), dtype=np.uint8)) for s in (40, 32, 64)]
    arr = crops_to_array(crops, 32)
    assert arr.shape == (3, 32, 32, 3) and arr.dtype == np.uint8
    np.testing.assert_array_equal(arr[1], np.asarray(crops[1]))  # right size: untouched
    grey = crops_to_array(crops, 32, greyscale=True)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    preds = classify(model, arr, CLASSES7, top=3)
    assert len(preds) == 3
    for p in preds:
        probs = [t["prob"] for t in p["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True)
        assert p["label"] == p["top"][0]["label"] and p["prob"] == probs[0]
        assert 0 < sum(probs) <= 1 + 1e-6 and p["label"] in CLASSES7


def test_write_rows_csv_and_json(tmp_path):
    rows = [
        {
            "file": "a.jpg",
            "face": 0,
            "status": "ok",
            "label": "happy",
            "prob": 0.7,
            "top": [{"label": "happy", "prob": 0.7}, {"label": "neutral", "prob": 0.2}],
            "det_prob": 0.99,
            "bbox": [1.0, 2.0, 30.0, 40.0],
            "reason": None,
        },
        {
            "file": "b.jpg",
            "face": None,
            "status": "no_face",
            "label": None,
            "prob": None,
            "top": [],
            "det_prob": None,
            "bbox": None,
            "reason": "the detector found no face",
        },
    ]
    with open(write_rows(rows, tmp_path / "o.csv"), newline="") as fh:
        got = list(csv.DictReader(fh))
    assert (
        got[0]["top"] == "happy:0.7000;neutral:0.2000"
        and got[0]["bbox"] == "[1.0, 2.0, 30.0, 40.0]"
    )
    assert (
        got[1]["status"] == "no_face"
        and got[1]["face"] == ""
        and got[1]["reason"].startswith("the detector")
    )
    assert json.loads(write_rows(rows, tmp_path / "o.json").read_text()) == rows
    with pytest.raises(FernoiseError, match="expected a .csv or .json file") as e:
        write_rows(rows, tmp_path / "o.txt")
    assert e.value.flag == "--out"


@pytest.mark.slow
def test_predict_folder_gives_a_row_per_file_with_reasons(tmp_path):
    pytest.importorskip("fernoise.align.faces", reason="fernoise.align.faces not there yet")
    run = predict_run(tmp_path / "run")
    folder = make_folder(tmp_path / "photos")
    out = tmp_path / "pred.csv"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "fernoise.cli.app",
            "predict",
            str(folder),
            "--run",
            str(run),
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    with open(out, newline="") as fh:
        rows = {row["file"].split("photos/")[1]: row for row in csv.DictReader(fh)}
    assert sorted(rows) == ["empty.png", "noise.png", "notes.jpg", "sub/grey.JPG"]
    assert rows["notes.jpg"]["status"] not in ("ok", "no_face") and rows["notes.jpg"]["reason"]
    assert rows["empty.png"]["status"] not in ("ok", "no_face") and rows["empty.png"]["reason"]
    assert rows["sub/grey.JPG"]["status"] == "no_face"
    assert rows["noise.png"]["status"] == "no_face"
    assert "notes.jpg" in r.stdout


def test_predict_folder_in_process_gives_a_row_per_file_with_reasons(tmp_path):
    """The fast tier's cover of the test above: the same folder through the CLI in this
    process (no interpreter start), the same rows and reasons."""
    pytest.importorskip("fernoise.align.faces", reason="fernoise.align.faces not there yet")
    run = predict_run(tmp_path / "run")
    folder = make_folder(tmp_path / "photos")
    out = tmp_path / "pred.csv"
    res = cli("predict", folder, "--run", run, "--out", out, "--device", "cpu")
    assert res.exit_code == 0, res.output
    with open(out, newline="") as fh:
        rows = {row["file"].split("photos/")[1]: row for row in csv.DictReader(fh)}
    assert sorted(rows) == ["empty.png", "noise.png", "notes.jpg", "sub/grey.JPG"]
    for bad in ("notes.jpg", "empty.png"):
        assert rows[bad]["status"] not in ("ok", "no_face") and rows[bad]["reason"]
    assert rows["sub/grey.JPG"]["status"] == "no_face" and rows["noise.png"]["status"] == "no_face"
    assert "notes.jpg" in res.output


WILD_SUBSET = (
    "dogs.jpg",
    "eagle.jpg",
    "horses.jpg",
    "obama.jpg",
    "biden.jpg",
    "two_people.jpg",
    "32bit.png",
    "obama_partial_face.jpg",
    "2008_001322.jpg",
)


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.skipif(not WILD.exists(), reason=f"real data not present: {WILD}")
def test_predict_wild_photos(tmp_path):
    """A row per face for face photos, a no_face row for the animals (a subset, for time;
    the whole folder is an acceptance command: `fernoise predict ../shared/data/wild`)."""
    pytest.importorskip("fernoise.align.faces", reason="fernoise.align.faces not there yet")
    from fernoise.predict import PredictParams, predict

    run = predict_run(tmp_path / "run", size=48)
    rows = predict([WILD / n for n in WILD_SUBSET], run, PredictParams(device="cpu"))
    by_file: dict[str, list] = {}
    for r in rows:
        by_file.setdefault(r["file"].split("/")[-1], []).append(r)
    assert list(by_file) == list(WILD_SUBSET)  # input order kept
    for name in ("dogs.jpg", "eagle.jpg", "horses.jpg"):
        assert [r["status"] for r in by_file[name]] == ["no_face"], name
        assert by_file[name][0]["reason"] and by_file[name][0]["label"] is None
    with open(WILD / "manifest.csv", newline="") as fh:
        expected = {row["file"]: int(row["faces_approx"]) for row in csv.DictReader(fh)}
    for name in WILD_SUBSET[3:]:
        faces = [r for r in by_file[name] if r["status"] == "ok"]
        assert len(faces) >= min(expected[name], 1), f"{name}: no face found"
        assert [r["face"] for r in faces] == list(range(len(faces)))
        assert all(
            r["label"] in CLASSES7 and 0 < r["prob"] <= 1 and len(r["top"]) == 3 for r in faces
        )
        assert all(len(r["bbox"]) == 4 and r["det_prob"] >= 0.9 for r in faces)
    assert sum(r["status"] == "ok" for r in by_file["2008_001322.jpg"]) == 3


def test_greyscale_training_crops_are_detected(tmp_path):
    import pandas as pd

    from fernoise.manifest import write_manifest
    from fernoise.predict import training_is_greyscale

    for mode, expected in (("L", True), ("RGB", False)):
        root = tmp_path / mode
        root.mkdir()
        Image.new(mode, (48, 48)).save(root / "c.png")
        df = pd.DataFrame(
            [
                {
                    "id": "c",
                    "src_path": "c.png",
                    "path": "c.png",
                    "split": "train",
                    "label": 0,
                    "status": "ok",
                    "n_faces": 1,
                }
            ]
        )
        write_manifest(
            df, root / "m.parquet", {"classes": CLASSES7, "label_space": "basic7", "key": mode}
        )
        assert training_is_greyscale({"manifest": str(root / "m.parquet")}) is expected
    assert training_is_greyscale({"manifest": str(tmp_path / "gone.parquet")}) is False


def test_align_params_follow_the_run():
    pytest.importorskip("fernoise.align.faces", reason="fernoise.align.faces not there yet")
    from fernoise.align.faces import AlignParams
    from fernoise.predict import align_params_for

    assert align_params_for({"align": None}) == AlignParams()
    p = align_params_for(
        {
            "align": {
                "size": 112,
                "margin": 0.3,
                "mode": "align",
                "thresholds": [0.5, 0.6, 0.7],
                "workers": 4,
            }
        }
    )  # a key AlignParams lacks is ignored
    assert (p.size, p.margin, p.mode, p.thresholds) == (112, 0.3, "align", (0.5, 0.6, 0.7))
    assert (
        align_params_for({"align": {"mode": "whole", "size": 48}}).mode == "box"
    )  # photos need a detector
