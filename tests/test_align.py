"""The align stage on generated images: decoding, warping, cache, labels, join, shards, CLI errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from fernoise.align.faces import AlignParams, open_image, similarity, template_points, warp_align
from fernoise.align.stage import LabelSpec, align_folder, merge_shards
from fernoise.cache import Workspace, file_sha256
from fernoise.errors import FernoiseError
from fernoise.manifest import read_manifest

WHOLE = AlignParams(mode="whole", size=32)


def make_image(path: Path, size=(40, 40), colour=(120, 80, 40), mode="RGB", **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, **save)
    return path


def labelled_tree(root: Path) -> Path:
    for i, (split, cls) in enumerate(
        [
            ("train", "happy"),
            ("train", "Angry"),
            ("test", "sadness"),
            ("test", "neutral"),
            ("train", "happy"),
            ("val", "fear"),
        ]
    ):
        make_image(root / split / cls / f"img{i}.png", colour=(10 * i, 50, 200))
    return root


# ----------------------------------------------------------------------------- params and warping
def test_params_checks_name_the_flag():
    with pytest.raises(FernoiseError) as e:
        AlignParams(mode="crop")
    assert e.value.flag == "--mode" and "align, box, whole" in str(e.value)
    for kw, flag in [
        ({"size": 8}, "--size"),
        ({"on_no_face": "drop"}, "--on-no-face"),
        ({"image_format": "gif"}, "--image-format"),
        ({"jpeg_quality": 0}, "--jpeg-quality"),
        ({"thresholds": (0.6, 0.7)}, "--thresholds"),
        ({"margin": -1}, "--margin"),
    ]:
        with pytest.raises(FernoiseError) as e:
            AlignParams(**kw)
        assert e.value.flag == flag
    p = AlignParams(thresholds=[0.5, 0.6, 0.7])
    assert p.thresholds == (0.5, 0.6, 0.7) and AlignParams(**p.asdict()) == p


def test_similarity_levels_the_eyes_and_hits_the_template():
    params = AlignParams(size=224, margin=0.1)
    q = template_points(params)
    assert q[0, 1] == pytest.approx(q[1, 1])  # the template's eyes are level
    # a face rotated by 30 degrees, scaled 2x and shifted: the fit must undo it exactly
    ang = np.deg2rad(30)
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    src = (q @ rot.T) * 2.0 + np.array([300.0, 120.0])
    k, r, t = similarity(src, params)
    mapped = k * src @ r.T + t
    assert np.allclose(mapped, q, atol=1e-6)
    # a real warp: a white dot at each source landmark lands on the template point
    img = Image.new("RGB", (800, 700))
    px = img.load()
    for x, y in src:
        for dx in range(-3, 4):
            for dy in range(-3, 4):
                px[int(round(x)) + dx, int(round(y)) + dy] = (255, 255, 255)
    crop = np.asarray(warp_align(img, src, params))
    assert crop.shape == (224, 224, 3)
    for x, y in q:
        assert crop[int(round(y)), int(round(x))].min() > 100


# ----------------------------------------------------------------------------- decoding
def test_open_image_decodes_odd_images(tmp_path):
    cmyk = make_image(tmp_path / "cmyk.jpg", mode="CMYK", colour=(0, 255, 255, 0))
    img, status, _ = open_image(cmyk)
    assert status == "ok" and img.mode == "RGB" and img.getpixel((5, 5))[0] > 200  # red-ish

    a = np.full((20, 30), 32768, dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "deep.png")
    img, status, _ = open_image(tmp_path / "deep.png")
    assert status == "ok" and img.size == (30, 20) and abs(img.getpixel((0, 0))[0] - 128) <= 1

    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    rgba.save(tmp_path / "clear.png")
    img, _, _ = open_image(tmp_path / "clear.png")
    assert img.getpixel((3, 3)) == (255, 255, 255)  # transparent -> white, not black

    pal = Image.new("P", (10, 10), 3)
    pal.putpalette([0, 0, 0] * 3 + [0, 200, 0] + [0, 0, 0] * 252)
    pal.save(tmp_path / "pal.png")
    assert open_image(tmp_path / "pal.png")[0].getpixel((1, 1)) == (0, 200, 0)

    frames = [Image.new("RGB", (16, 16), c) for c in ((250, 0, 0), (0, 0, 250))]
    frames[0].save(
        tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0
    )
    r, g, b = open_image(tmp_path / "anim.gif")[0].getpixel((8, 8))
    assert r > 200 and b < 50

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.new("RGB", (80, 40), (1, 2, 3)).save(tmp_path / "rot.jpg", exif=exif)
    assert open_image(tmp_path / "rot.jpg")[0].size == (40, 80)

    (tmp_path / "empty.jpg").write_bytes(b"")
    assert open_image(tmp_path / "empty.jpg") == (None, "unreadable", "empty file (0 bytes)")
    (tmp_path / "text.jpg").write_text("not a jpeg at all")
    assert open_image(tmp_path / "text.jpg")[1] == "unreadable"
    os.symlink(tmp_path / "missing.jpg", tmp_path / "broken.jpg")
    assert open_image(tmp_path / "broken.jpg") == (None, "unreadable", "broken symbolic link")


def bad_corpus(root: Path) -> dict[str, set[str]]:
    """Every kind of bad input of the issue; file -> the statuses it may get."""
    root.mkdir(parents=True, exist_ok=True)
    expect: dict[str, set[str]] = {}
    (root / "zero.jpg").write_bytes(b"")
    expect["zero.jpg"] = {"unreadable"}
    good = make_image(root / "good.jpg", size=(64, 64), quality=90)
    (root / "truncated.jpg").write_bytes(good.read_bytes()[:200])
    expect["truncated.jpg"] = {"unreadable"}
    expect["good.jpg"] = {"no_face"}
    (root / "text.jpg").write_text("hello, I am a text file\n")
    expect["text.jpg"] = {"unreadable"}
    make_image(root / "cmyk.jpg", mode="CMYK", colour=(10, 200, 30, 5))
    Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).save(
        root / "deep16.png"
    )
    make_image(root / "rgba.png", mode="RGBA", colour=(10, 20, 30, 128))
    make_image(root / "palette.png", mode="P", colour=5)
    make_image(root / "grey.png", mode="L", colour=90)
    exif = Image.Exif()
    exif[0x0112] = 8
    make_image(root / "rotated.jpg", size=(90, 50), exif=exif)
    frames = [Image.new("RGB", (40, 40), c) for c in ((250, 0, 0), (0, 0, 250))]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    for f in (
        "cmyk.jpg",
        "deep16.png",
        "rgba.png",
        "palette.png",
        "grey.png",
        "rotated.jpg",
        "anim.gif",
    ):
        expect[f] = {"no_face"}
    make_image(root / "one.png", size=(1, 1))
    expect["one.png"] = {"too_small"}
    make_image(root / "huge.png", size=(10000, 10000), mode="L", colour=30)
    expect["huge.png"] = {"no_face"}
    os.symlink(root / "nowhere.jpg", root / "broken.jpg")
    expect["broken.jpg"] = {"unreadable"}
    noperm = make_image(root / "noperm.png")
    noperm.chmod(0)
    # root reads any file: then it is an ordinary image
    expect["noperm.png"] = {"unreadable"} if os.geteuid() != 0 else {"no_face", "unreadable"}
    return expect


def test_bad_input_corpus_every_file_gets_a_row(tmp_path, workspace):
    from fernoise.cli.app import app

    expect = bad_corpus(tmp_path / "raw")
    res = CliRunner().invoke(
        app, ["align", str(tmp_path / "raw"), str(tmp_path / "out"), "--workers", "2"]
    )
    assert res.exit_code == 0, res.output
    m = read_manifest(tmp_path / "out" / "manifest.parquet")
    df = m.df.set_index("src_path")
    assert sorted(df.index) == sorted(expect)
    for f, ok in expect.items():
        assert df.loc[f, "status"] in ok, (f, df.loc[f, "status"], df.loc[f, "reason"])
        assert isinstance(df.loc[f, "reason"], str) and df.loc[f, "reason"], f
        assert pd.isna(df.loc[f, "path"])
    assert "truncated" in df.loc["truncated.jpg", "reason"]
    assert "0 bytes" in df.loc["zero.jpg", "reason"] and "link" in df.loc["broken.jpg", "reason"]
    counts = df["status"].value_counts().to_dict()
    assert m.meta["counts"] == counts
    for status, n in counts.items():  # the per-status table is printed
        assert any(status in line and str(n) in line for line in res.output.splitlines()), (
            res.output
        )
    assert "manifest.parquet" in res.output


# ----------------------------------------------------------------------------- stage and cache
def test_whole_mode_labels_from_folders_and_cache(tmp_path, workspace):
    raw = labelled_tree(tmp_path / "raw")
    out = tmp_path / "out"
    os.symlink(raw, raw / "train" / "loop")  # a link cycle is followed once, not forever
    (raw / ".hidden").mkdir()
    make_image(raw / ".hidden" / "x.png")
    r1 = align_folder(raw, out, WHOLE, workspace=Workspace())
    assert not r1.hit and r1.info["realigned"] == 6 and r1.counts == {"whole": 6}
    m = read_manifest(r1.manifest)
    df = m.df
    assert df["id"].tolist() == sorted(df["id"]) == df["src_path"].tolist()
    assert df["split"].tolist() == ["test", "test", "train", "train", "train", "val"]
    # the class list is the five classes that occur, in canonical order; labels index it
    assert (
        m.classes == ["neutral", "happy", "sad", "fear", "anger"]
        and m.meta["label_space"] == "custom"
    )
    assert [m.classes[x] for x in df["label"]] == [
        "neutral",
        "sad",
        "anger",
        "happy",
        "happy",
        "fear",
    ]
    assert df["label_name"].tolist() == ["neutral", "sad", "anger", "happy", "happy", "fear"]
    assert df["path"].tolist() == [f"faces/{s}.jpg" for s in df["src_path"]]
    for p, sha, src, ssha in zip(
        df["path"], df["crop_sha256"], df["src_path"], df["src_sha256"], strict=True
    ):
        assert Image.open(out / p).size == (32, 32) and file_sha256(out / p) == sha
        assert file_sha256(raw / src) == ssha
    assert (
        (df["n_faces"] == 0).all()
        and df["face"].isna().all()
        and df["reason"].str.contains("--mode whole").all()
    )
    assert m.meta["stage"] == "align" and m.meta["params"] == WHOLE.asdict()
    assert Workspace().latest("align") == r1.manifest

    r2 = align_folder(raw, out, WHOLE)
    assert r2.hit and r2.key == r1.key and r2.counts == r1.counts

    # one changed photo: only it is re-aligned
    make_image(raw / "train" / "happy" / "img0.png", colour=(1, 2, 3))
    r3 = align_folder(raw, out, WHOLE)
    assert not r3.hit and r3.info["realigned"] == 1 and r3.info["reused"] == 5 and r3.key != r1.key

    # a crop changed behind the tool's back is detected and rebuilt
    crop = out / "faces" / "test" / "sadness" / "img2.png.jpg"
    good = crop.read_bytes()
    crop.write_bytes(b"tampered")
    r4 = align_folder(raw, out, WHOLE)
    assert not r4.hit and r4.info["realigned"] == 1 and crop.read_bytes() == good
    crop.unlink()
    r5 = align_folder(raw, out, WHOLE)
    assert not r5.hit and r5.info["realigned"] == 1 and crop.read_bytes() == good
    pd.testing.assert_frame_equal(read_manifest(r5.manifest).df, read_manifest(r3.manifest).df)

    # a parameter that changes the crops misses the cache
    r6 = align_folder(raw, out, AlignParams(mode="whole", size=40))
    assert not r6.hit and r6.info["realigned"] == 6


def test_cache_hit_imports_neither_torch_nor_pandas(tmp_path):
    raw = labelled_tree(tmp_path / "raw")
    align_folder(raw, tmp_path / "out", WHOLE)
    code = (
        "import sys\nfrom fernoise.align.faces import AlignParams\nfrom fernoise.align.stage import align_folder\n"
        f"r = align_folder({str(raw)!r}, {str(tmp_path / 'out')!r}, AlignParams(mode='whole', size=32))\n"
        "print(r.hit, 'torch' in sys.modules, 'pandas' in sys.modules, r.counts)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split()[:3] == ["True", "False", "False"]


def test_label_file_join_split_map_and_unmatched_rows(tmp_path):
    raw = tmp_path / "raw"
    for name in ("a.png", "b.png", "c.png"):
        make_image(raw / name)
    (tmp_path / "labels.csv").write_text(
        "path,emotion,split,note\na.png,happy,train,x\nb.png,Surprised,valid,y\nz.png,sad,train,gone\n"
    )
    (tmp_path / "extra.csv").write_text(
        "path,fer2013_label,score\nFER/a.png,angry,1.5\nFER/c.png,sad,2\nFER/q.png,happy,3\n"
    )
    spec = LabelSpec(
        files=(str(tmp_path / "labels.csv"),),
        format="csv",
        label_column="emotion",
        split_column="split",
        split_map=(("val", "test"),),
        join=str(tmp_path / "extra.csv"),
    )
    r = align_folder(raw, tmp_path / "out", WHOLE, spec)
    df = read_manifest(r.manifest).df.set_index("src_path")
    assert df["label_name"].tolist()[:2] == ["happy", "surprise"] and pd.isna(
        df.loc["c.png", "label"]
    )
    assert df["split"].tolist() == [
        "train",
        "test",
        "train",
    ]  # valid -> val -> test; no row -> train
    assert df["note"].tolist()[:2] == ["x", "y"] and pd.isna(df.loc["c.png", "note"])
    assert df.loc["a.png", "fer2013_label"] == "angry" and df.loc["c.png", "fer2013_label"] == "sad"
    assert pd.isna(df.loc["b.png", "fer2013_label"])
    assert df.loc["a.png", "score"] == 1.5
    lab = r.info["labels"]
    assert (
        lab["unmatched_rows"] == 1
        and lab["matched_rows"] == 2
        and lab["images_without_label_row"] == 1
    )
    assert r.info["join"]["matched_images"] == 2

    only = LabelSpec(join=str(tmp_path / "extra.csv"), join_columns=("score",))
    df2 = read_manifest(align_folder(raw, tmp_path / "out2", WHOLE, only).manifest).df
    assert "score" in df2.columns and "fer2013_label" not in df2.columns
    (tmp_path / "clash.csv").write_text("path,split\nFER/a.png,x\n")
    with pytest.raises(FernoiseError, match="already in the manifest"):
        align_folder(
            raw,
            tmp_path / "out3",
            WHOLE,
            LabelSpec(join=str(tmp_path / "clash.csv"), join_columns=("split",)),
        )
    df3 = read_manifest(
        align_folder(
            raw, tmp_path / "out4", WHOLE, LabelSpec(join=str(tmp_path / "clash.csv"))
        ).manifest
    ).df
    assert (df3["split"] == "train").all()  # all that the manifest lacks: split is not taken


def test_shards_merge_into_the_unsharded_manifest(tmp_path, workspace):
    raw = labelled_tree(tmp_path / "raw")
    full = align_folder(raw, tmp_path / "full", WHOLE)
    out = tmp_path / "sharded"
    r0 = align_folder(raw, out, WHOLE, shard=(0, 2), workspace=Workspace())
    assert (
        r0.merged is None and r0.rows == 3 and r0.manifest.name == "manifest.shard-1-of-2.parquet"
    )
    r1 = align_folder(raw, out, WHOLE, shard=(1, 2), workspace=Workspace())
    assert r1.merged == out / "manifest.parquet"
    merged = read_manifest(r1.merged)
    pd.testing.assert_frame_equal(merged.df, read_manifest(full.manifest).df)
    assert merged.meta["key"] == full.key and Workspace().latest("align") == r1.merged
    assert align_folder(raw, out, WHOLE).hit  # the unsharded command now hits the merged output
    assert merge_shards(out) == r1.merged
    again = align_folder(raw, out, WHOLE, force=True)  # both shards' per-image records survive
    assert not again.hit and again.info["realigned"] == 0 and again.info["reused"] == 6
    from fernoise.cli.app import app

    (out / "manifest.parquet").unlink()
    res = CliRunner().invoke(app, ["align", "--merge", str(out)])
    assert res.exit_code == 0 and "merged" in res.output
    pd.testing.assert_frame_equal(
        read_manifest(out / "manifest.parquet").df, read_manifest(full.manifest).df
    )
    (out / "manifest.shard-1-of-2.parquet").unlink()
    res = CliRunner().invoke(app, ["align", "--merge", str(out)])
    assert res.exit_code == 2 and "shards [1] of 2 are missing" in " ".join(res.output.split())


def test_align_and_sweep_number_shards_the_same_way(tmp_path, workspace):
    """``--shard i/n`` is 1-based in both commands (align counted from 0 before)."""
    from fernoise.cli.app import app

    raw = labelled_tree(tmp_path / "raw")
    first = align_folder(raw, tmp_path / "lib", WHOLE, shard=(0, 2), workspace=Workspace())
    res = CliRunner().invoke(
        app, ["align", str(raw), str(tmp_path / "cli"), "--mode", "whole", "--shard", "1/2"]
    )
    assert res.exit_code == 0, res.output
    shard = read_manifest(tmp_path / "cli" / "manifest.shard-1-of-2.parquet")
    assert list(shard.df["id"]) == list(
        read_manifest(first.manifest).df["id"]
    )  # 1/2 is the library's shard 0
    lines = {}
    for cmd in (
        ["align", str(raw), str(tmp_path / "cli"), "--mode", "whole"],
        ["sweep", str(tmp_path / "g.toml")],
    ):
        res = CliRunner().invoke(app, [*cmd, "--shard", "0/2"])
        assert res.exit_code == 2, res.output
        lines[cmd[0]] = " ".join(res.output.split())
    assert (
        lines["align"]
        == lines["sweep"]
        == "error: --shard: expected i/n with 1 <= i <= n (e.g. 2/4), found '0/2'"
    )


def test_cli_label_errors_are_one_line(tmp_path, workspace):
    from fernoise.cli.app import app

    raw = tmp_path / "raw"
    make_image(raw / "a.png")
    (tmp_path / "l.csv").write_text("path,label\nother.png,happy\n")
    (tmp_path / "bad.csv").write_text("path,label\na.png,grumpy\n")
    runner = CliRunner()
    cases = [
        (
            ["--labels", str(tmp_path / "l.csv"), "--format", "fer"],
            "expected one of: rafdb, ferplus, affectnet, csv",
        ),
        (["--labels", str(tmp_path / "l.csv"), "--format", "csv"], "matches none of the 1 images"),
        (["--labels", str(tmp_path / "bad.csv"), "--format", "csv"], "unknown class name 'grumpy'"),
        (["--labels", str(tmp_path / "l.csv")], "--labels needs --format"),
        (["--mode", "crop"], "--mode: unknown mode 'crop'"),
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["--shard", "3/2"], "--shard"),
    ]
    for extra, msg in cases:
        res = runner.invoke(
            app, ["align", str(raw), str(tmp_path / "out"), "--mode", "whole", *extra]
        )
        assert res.exit_code == 2, (extra, res.output)
        assert msg in " ".join(res.output.split()), (extra, res.output)
    make_image(raw / "grumpy" / "b.png")
    res = runner.invoke(app, ["align", str(raw), str(tmp_path / "out"), "--mode", "whole"])
    assert res.exit_code == 2 and "neither a class nor a split" in res.output


def test_cli_preset_and_whole_mode(tmp_path, workspace):
    from fernoise.cli.app import app

    raw = labelled_tree(tmp_path / "raw")
    (tmp_path / "p.toml").write_text(
        'mode = "whole"\nsize = 48\nimage_format = "png"\nsplit_map = ["val=test"]\n'
    )
    res = CliRunner().invoke(
        app,
        [
            "align",
            str(raw),
            str(tmp_path / "out"),
            "--preset",
            str(tmp_path / "p.toml"),
            "--size",
            "40",
        ],
    )
    assert res.exit_code == 0, res.output
    m = read_manifest(tmp_path / "out" / "manifest.parquet")
    assert (
        m.meta["params"]["size"] == 40 and m.meta["params"]["image_format"] == "png"
    )  # explicit option wins
    assert set(m.df["split"]) == {"train", "test"} and m.df["path"].str.endswith(".png.png").all()
    res = CliRunner().invoke(
        app,
        [
            "align",
            str(raw),
            str(tmp_path / "out"),
            "--preset",
            str(tmp_path / "p.toml"),
            "--size",
            "40",
        ],
    )
    assert "cache hit" in res.output


def test_shard_parsing_and_torchrun_env(monkeypatch):
    from fernoise.align.stage import shard_from_env
    from fernoise.shards import parse_shard

    assert (
        parse_shard("1/4") == (1, 4)
        and parse_shard("4/4") == (4, 4)
        and parse_shard(None) == (1, 1)
    )
    for bad in ("0/4", "5/4", "1", "a/b", "-1/2"):
        with pytest.raises(FernoiseError):
            parse_shard(bad)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert shard_from_env() == (2, 3)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert shard_from_env() is None
