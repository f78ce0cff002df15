"""align's group column (``--group-column``, ``--group-regex``) and ``--max-rows`` subset (issue 9.5, 9.9)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fernoise.align.faces import AlignParams
from fernoise.align.stage import LabelSpec, align_folder
from fernoise.cli.app import app
from fernoise.errors import FernoiseError
from fernoise.manifest import read_manifest
from fernoise.subset import stratified_subset

WHOLE = AlignParams(mode="whole", size=32)


def img(path, k=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (36, 36), (k % 250, 9, 9)).save(path)
    return path


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(res, flag):
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag}"), res.stderr
    return lines[0]


# ----------------------------------------------------------------------------- groups
def test_group_regex_over_the_file_names(tmp_path, workspace):
    raw = tmp_path / "raw"
    names = [
        "happy/S005_001_01.png",
        "happy/S005_002_01.png",
        "sad/S010_001_03.png",
        "sad/S011_004_02.png",
        "anger/x_no_subject.png",
    ]
    for k, n in enumerate(names):
        img(raw / n, k)
    res = cli(
        "align",
        raw,
        tmp_path / "out",
        "--mode",
        "whole",
        "--size",
        "32",
        "--group-regex",
        r"S(\d+)_",
    )
    assert res.exit_code == 0, res.output
    assert "groups (subject, from the file names): 3 distinct; 1 images have none" in " ".join(
        res.output.split()
    )
    m = read_manifest(tmp_path / "out" / "manifest.parquet")
    got = {
        s: (None if v is None or v != v else v)
        for s, v in zip(m.df["src_path"], m.df["subject"], strict=True)
    }
    assert got == {
        "happy/S005_001_01.png": "005",
        "happy/S005_002_01.png": "005",
        "sad/S010_001_03.png": "010",
        "sad/S011_004_02.png": "011",
        "anger/x_no_subject.png": None,
    }
    assert m.meta["groups"] == {
        "column": "subject",
        "source": "regex",
        "groups": 3,
        "images_without_group": 1,
    }
    # another column name, and the regex is in the key
    res = cli(
        "align",
        raw,
        tmp_path / "out",
        "--mode",
        "whole",
        "--size",
        "32",
        "--group-regex",
        r"_(\d+)_",
        "--group-column",
        "session",
    )
    assert res.exit_code == 0 and "cache hit" not in res.output
    m = read_manifest(tmp_path / "out" / "manifest.parquet")
    assert "subject" not in m.df.columns
    assert dict(zip(m.df["src_path"], m.df["session"], strict=True))["sad/S011_004_02.png"] == "004"

    for args, flag, text in [
        (["--group-regex", r"S\d+_"], "--group-regex", "no group"),
        (["--group-regex", "S(("], "--group-regex", "not a valid regular expression"),
        (["--group-regex", r"Q(\d+)"], "--group-regex", "matches none of the 5 image paths"),
        (["--group-column", "subject"], "--group-column", "no label file"),
        (
            ["--group-column", "label", "--group-regex", r"S(\d+)"],
            "--group-column",
            "must name a new column",
        ),
    ]:
        line = one_line_error(cli("align", raw, tmp_path / "o2", "--mode", "whole", *args), flag)
        assert text in line, line


def test_group_column_from_a_csv_is_kept_as_written(tmp_path):
    raw = tmp_path / "raw"
    rows = ["file,emotion,subject,part"]
    for k, (subj, emo) in enumerate(
        [("007", "happy"), ("007", "sad"), ("12", "happy"), ("", "sad")]
    ):
        img(raw / f"{k}.png", k)
        rows.append(f"{k}.png,{emo},{subj},train")
    (tmp_path / "l.csv").write_text("\n".join(rows) + "\n")
    spec = LabelSpec(
        files=(str(tmp_path / "l.csv"),),
        format="csv",
        path_column="file",
        label_column="emotion",
        split_column="part",
        group_column="subject",
    )
    m = read_manifest(align_folder(raw, tmp_path / "out", WHOLE, spec).manifest)
    assert (
        m.df["subject"].tolist()[:3] == ["007", "007", "12"] and m.df["subject"].isna().tolist()[3]
    )  # as written
    assert m.meta["groups"]["source"] == "labels" and m.meta["groups"]["groups"] == 2
    with pytest.raises(FernoiseError) as e:
        align_folder(
            raw,
            tmp_path / "o2",
            WHOLE,
            LabelSpec(
                files=spec.files,
                format="csv",
                path_column="file",
                label_column="emotion",
                group_column="person",
            ),
        )
    assert (
        e.value.flag == "--group-column"
        and "no column 'person'" in str(e.value)
        and "subject" in str(e.value)
    )


# ----------------------------------------------------------------------------- --max-rows
def test_stratified_subset_by_hand():
    strata = ["a"] * 6 + ["b"] * 3 + [None] * 1
    keep = stratified_subset(strata, 5, seed=0)
    got = Counter(strata[i] for i in keep)
    # shares 3, 1.5, 0.5: floors 3, 1, 0; the two .5 remainders: the first in stratum order (None) wins
    assert sorted(got.items(), key=str) == sorted({"a": 3, "b": 1, None: 1}.items(), key=str)
    assert keep.tolist() == sorted(keep.tolist()) and len(set(keep.tolist())) == 5
    assert np.array_equal(keep, stratified_subset(strata, 5, seed=0))
    assert any(not np.array_equal(stratified_subset(strata, 5, seed=s), keep) for s in range(1, 6))
    assert stratified_subset(strata, 50).tolist() == list(range(10))
    for bad in (0, -1, True, 2.5):
        with pytest.raises(FernoiseError) as e:
            stratified_subset(strata, bad)  # type: ignore[arg-type]
        assert e.value.flag == "--max-rows"


def test_align_max_rows_is_a_seeded_stratified_subset_in_the_key(tmp_path, workspace):
    raw = tmp_path / "raw"
    k = 0
    for split, cls, n in [
        ("train", "happy", 12),
        ("train", "sad", 6),
        ("test", "happy", 4),
        ("test", "sad", 2),
    ]:
        for _ in range(n):
            img(raw / split / cls / f"{k:03d}.png", k)
            k += 1
    res = cli("align", raw, tmp_path / "out", "--mode", "whole", "--size", "32", "--max-rows", "12")
    assert res.exit_code == 0, res.output
    assert "subset (--max-rows 12, seed 0): 12 of 24 images" in " ".join(res.output.split())
    m = read_manifest(tmp_path / "out" / "manifest.parquet")
    df = m.df
    assert len(df) == 12 and m.meta["images"] == 12
    assert Counter(zip(df["split"], df["label_name"], strict=True)) == {
        ("train", "happy"): 6,
        ("train", "sad"): 3,
        ("test", "happy"): 2,
        ("test", "sad"): 1,
    }
    assert m.classes == ["happy", "sad"]
    first = df["id"].tolist()
    assert (
        len(list((tmp_path / "out" / "faces").rglob("*.jpg"))) == 12
    )  # only the subset is aligned
    res = cli("align", raw, tmp_path / "out", "--mode", "whole", "--size", "32", "--max-rows", "12")
    assert "cache hit" in res.output
    res = cli(
        "align",
        raw,
        tmp_path / "out",
        "--mode",
        "whole",
        "--size",
        "32",
        "--max-rows",
        "12",
        "--seed",
        "1",
    )
    assert res.exit_code == 0 and "cache hit" not in res.output
    assert read_manifest(tmp_path / "out" / "manifest.parquet").df["id"].tolist() != first
    line = one_line_error(
        cli("align", raw, tmp_path / "o2", "--mode", "whole", "--max-rows", "0"), "--max-rows"
    )
    assert "positive" in line


def test_subset_is_the_one_train_max_rows_draws():
    """align's subset function gives train --max-rows' rows for label strata (one rule, shared)."""
    import pandas as pd

    from fernoise.train.plan import _subset

    rng = np.random.default_rng(4)
    for _ in range(30):
        n = int(rng.integers(5, 120))
        labels = rng.integers(0, 5, size=n)
        df = pd.DataFrame({"label": labels}, index=np.arange(n) * 2 + 1)
        k, seed = int(rng.integers(1, n)), int(rng.integers(0, 50))
        assert list(_subset(df, k, seed)) == list(
            df.index[stratified_subset(labels.tolist(), k, seed)]
        )
