"""`fernoise corrupt --kind list --from FILE`: a peer's noisy-label list (EAC / RUL's
``train_00001.jpg 5`` with RAF-DB's 1-7, SCN's full ``*_aligned.jpg`` paths with 0-6) becomes
the training labels; unnamed rows and unknown names are counted and named. And ``--out`` in
another folder re-bases the crop paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from factories import C7, cli, corrupt_manifest

from fernoise.corrupt.kinds import image_key
from fernoise.corrupt.stage import load_noise_list, run_corrupt
from fernoise.errors import FernoiseError
from fernoise.manifest import read_manifest, read_meta

# RAF-DB's numbering 1-7 -> canonical class index in C7 (neutral happy sad surprise fear disgust anger)
RAF = {1: 3, 2: 4, 3: 5, 4: 1, 5: 2, 6: 6, 7: 0}


def raf_manifest(path: Path) -> Path:
    """14 training rows (2 per class of C7), 2 test rows; RAF-DB's aligned file names."""
    rows = []
    for i in range(1, 15):
        rows.append(("train", f"train_{i:05d}", (i - 1) % 7))
    rows += [("test", "test_0001", 1), ("test", "test_0002", 2)]
    df = pd.DataFrame(
        {
            "id": [f"Image/aligned/{n}_aligned.jpg" for _, n, _ in rows],
            "src_path": [f"Image/aligned/{n}_aligned.jpg" for _, n, _ in rows],
            "path": [f"faces/Image/aligned/{n}_aligned.jpg.jpg" for _, n, _ in rows],
            "split": [s for s, _, _ in rows],
            "label": pd.array([lab for _, _, lab in rows], dtype="Int64"),
            "status": "ok",
            "n_faces": 1,
        }
    )
    df["label_name"] = [C7[v] for v in df["label"]]
    return corrupt_manifest(path, C7, df=df)


def test_image_key_matches_the_peers_names():
    assert image_key("train_00001.jpg") == "train_00001"
    assert image_key("/home/x/RAFDB_DATA/aligned/train_00001_aligned.jpg") == "train_00001"
    assert image_key("Image/aligned/train_00001_aligned.jpg") == "train_00001"
    assert image_key("KA.AN1.39.tiff") == "KA.AN1.39"


def test_eac_list_relabels_named_rows_and_counts_the_rest(workspace):
    m = raf_manifest(workspace / "manifest.parquet")
    # rows 1..12 named (row 13, 14 not), a name of no row, a test row's name; RAF numbering
    lines = [f"train_{i:05d}.jpg {5 if i <= 3 else 7 - ((i - 1) % 7)}" for i in range(1, 13)]
    lines += ["train_09999.jpg 4", "test_0001.jpg 1", ""]
    noise = workspace / "noise01.txt"
    noise.write_text("\n".join(lines))
    res = run_corrupt(m, kind="list", list_file=noise)
    assert res.output.name == "manifest.list-" + res.noise["list_sha256"][:8] + ".parquet"
    df = read_manifest(res.output).df.set_index("id")
    want = {}
    for i in range(1, 13):
        raf = 5 if i <= 3 else 7 - ((i - 1) % 7)
        want[f"Image/aligned/train_{i:05d}_aligned.jpg"] = RAF[raf]
    for rid, lab in want.items():
        assert df.loc[rid, "label"] == lab
        assert df.loc[rid, "label_name"] == C7[lab]
    # unnamed training rows and test rows keep their label, and are not noisy
    assert df.loc["Image/aligned/train_00013_aligned.jpg", "label"] == 12 % 7
    assert df.loc["Image/aligned/test_0001_aligned.jpg", "label"] == 1
    assert not df.loc["Image/aligned/test_0001_aligned.jpg", "is_noisy"]
    clean = df["label_clean"]
    assert (df["is_noisy"] == (df["label"] != clean)).all()
    n_noisy = sum(1 for rid, lab in want.items() if lab != clean[rid])
    assert int(df["is_noisy"].sum()) == n_noisy
    info = read_meta(res.output)["noise"]
    lst = info["list"]
    assert lst["file"] == "noise01.txt" and lst["numbering"] == "raf"
    assert lst["names"] == 14 and lst["named_rows"] == 12
    assert lst["unlisted_rows"] == 2
    assert lst["unlisted_examples"] == [
        "Image/aligned/train_00013_aligned.jpg",
        "Image/aligned/train_00014_aligned.jpg",
    ]
    assert (lst["unmatched_names"], lst["unmatched_examples"]) == (1, ["train_09999"])
    assert (lst["non_train_names"], lst["non_train_examples"]) == (1, ["test_0001"])
    t = np.array(info["transition"])
    assert t.sum() == 14 and int(t.sum() - np.trace(t)) == n_noisy
    assert info["rate_overall"] == pytest.approx(n_noisy / 14)


def test_scn_list_needs_its_numbering_and_cli_prints_the_counts(workspace):
    m = raf_manifest(workspace / "manifest.parquet")
    scn = workspace / "0.1noise_train.txt"
    # SCN: full paths of the aligned images, labels 0-6 in RAF-DB's order
    scn.write_text(
        "\n".join(
            f"/home/u/RAFDB_DATA/aligned/train_{i:05d}_aligned.jpg {i % 7}" for i in range(1, 15)
        )
    )
    with pytest.raises(FernoiseError) as e:
        run_corrupt(m, kind="list", list_file=scn)
    assert e.value.flag == "--label-numbering" and "raf0" in str(e.value)
    r = cli("corrupt", m, "--kind", "list", "--from", scn, "--label-numbering", "raf0")
    assert r.exit_code == 0, r.output
    assert "14 training rows named" in r.output and "0 names match no row" in r.output
    out = workspace / "manifest.list-"
    path = next(workspace.glob("manifest.list-*.parquet"))
    assert str(path).startswith(str(out))
    df = read_manifest(path).df.set_index("id")
    for i in range(1, 15):
        assert df.loc[f"Image/aligned/train_{i:05d}_aligned.jpg", "label"] == RAF[i % 7 + 1]


def test_names_numbering_and_bad_lists(tmp_path):
    f = tmp_path / "names.txt"
    f.write_text("# a comment\nKA.AN1.39.tiff angry\nKA.HA2.30.tiff Happiness\n")
    assert load_noise_list(f) == ({"KA.AN1.39": "anger", "KA.HA2.30": "happy"}, "names")
    f.write_text("a.jpg 4\na.jpg 5\n")
    with pytest.raises(FernoiseError, match="two labels"):
        load_noise_list(f)
    f.write_text("a.jpg\n")
    with pytest.raises(FernoiseError, match="line 1"):
        load_noise_list(f)
    f.write_text("a.jpg 9\n")
    with pytest.raises(FernoiseError) as e:
        load_noise_list(f, "canonical")
    assert e.value.flag == "--label-numbering" and "[9]" in str(e.value)


def test_a_list_naming_no_training_row_is_refused(workspace):
    m = raf_manifest(workspace / "manifest.parquet")
    f = workspace / "other.txt"
    f.write_text("img_1.jpg 1\nimg_2.jpg 2\n")
    with pytest.raises(FernoiseError) as e:
        run_corrupt(m, kind="list", list_file=f)
    assert e.value.flag == "--from" and "none of the 14 training rows" in str(e.value)
    assert not list(workspace.glob("manifest.list-*"))


def test_out_in_another_folder_rebases_crop_paths(workspace):
    m = raf_manifest(workspace / "data" / "manifest.parquet")
    before = read_manifest(m).df.set_index("id")["path"]
    r = cli(
        "corrupt", m, "--kind", "sym", "--rate", "0.3", "--out", workspace / "other" / "x.parquet"
    )
    assert r.exit_code == 0, r.output
    after = read_manifest(workspace / "other" / "x.parquet").df.set_index("id")["path"]
    for rid, p in before.items():
        assert after[rid] == "../data/" + p
        assert (workspace / "other" / after[rid]).resolve() == (workspace / "data" / p).resolve()
    # same folder: paths as they were
    r = cli(
        "corrupt", m, "--kind", "sym", "--rate", "0.2", "--out", workspace / "data" / "y.parquet"
    )
    assert r.exit_code == 0, r.output
    same = read_manifest(workspace / "data" / "y.parquet").df.set_index("id")["path"]
    assert same.to_dict() == before.to_dict()
