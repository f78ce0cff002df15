"""Item 9 of issue 8: large images are decoded reduced (JPEG DCT scaling, box reduction for
the rest, one big decode at a time), coordinates stay in source pixels, crops stay right."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import WILD, needs
from PIL import Image, ImageOps

from fernoise.align.faces import AlignParams, _to_rgb, decode_image, reduction_for
from fernoise.align.stage import align_folder, working_factor
from fernoise.manifest import read_manifest


def gradient(w: int, h: int) -> Image.Image:
    x = np.linspace(0, 255, w)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], -1).astype(np.uint8), "RGB")


def test_decode_reduced_is_exact_for_png_and_close_for_jpeg(tmp_path):
    img = gradient(801, 603)
    img.save(tmp_path / "g.png")
    d = decode_image(tmp_path / "g.png", 3)
    assert (d.status, d.factor, d.size, d.image.size) == ("ok", 3, (801, 603), (267, 201))
    assert np.array_equal(np.asarray(d.image), np.asarray(img.reduce(3)))
    d = decode_image(
        tmp_path / "g.png", lambda w, h: max(w, h) // 400
    )  # a function of the stored size
    assert d.factor == 2 and d.image.size == (401, 302)
    img.save(tmp_path / "g.jpg", quality=95)
    # DCT scaling by 1/2, 1/4 or 1/8 never beyond the factor asked, then box reduction: at most the factor
    for want, got in ((2, 2), (3, 2), (4, 4), (8, 8), (11, 8), (16, 16), (20, 16)):
        d = decode_image(tmp_path / "g.jpg", want)
        ref = np.asarray(Image.open(tmp_path / "g.jpg").convert("RGB").reduce(got), dtype=float)
        assert d.factor == got and d.image.size == ref.shape[1::-1]
        assert np.abs(np.asarray(d.image, dtype=float) - ref).mean() < 3.0
    full = decode_image(tmp_path / "g.jpg")
    assert full.factor == 1 and full.image.size == (801, 603)


def test_decode_reduced_keeps_exif_rotation_and_odd_modes(tmp_path):
    img = gradient(800, 600)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    img.save(tmp_path / "r.jpg", quality=95, exif=exif)
    d = decode_image(tmp_path / "r.jpg", 4)
    upright = ImageOps.exif_transpose(Image.open(tmp_path / "r.jpg")).convert("RGB")
    assert d.size == (600, 800) and d.image.size == (150, 200) and d.factor == 4
    assert np.abs(np.asarray(d.image, float) - np.asarray(upright.reduce(4), float)).mean() < 3.0
    pal = img.convert("P", palette=Image.Palette.ADAPTIVE)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png", transparency=0)
    d = decode_image(tmp_path / "p.png", 2)
    ref = _to_rgb(Image.open(tmp_path / "p.png")).reduce(2)
    assert d.factor == 2 and np.array_equal(np.asarray(d.image), np.asarray(ref))
    Image.fromarray((np.arange(600 * 800).reshape(600, 800) % 65536).astype(np.uint16)).save(
        tmp_path / "i16.png"
    )
    d = decode_image(tmp_path / "i16.png", 2)
    assert d.status == "ok" and d.image.mode == "RGB" and d.image.size == (400, 300)


def test_working_factor():
    p = AlignParams()
    assert working_factor(p, 12000, 12000) == 11 and working_factor(p, 2047, 1000) == 1
    assert working_factor(AlignParams(detect_size=0), 12000, 12000) == 1
    whole = AlignParams(mode="whole", size=224)
    assert working_factor(whole, 12000, 9000) == reduction_for(224 / 9000) == 26
    assert working_factor(whole, 48, 48) == 1


@pytest.mark.slow
@pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="reads the peak from /proc (Linux)"
)
def test_three_big_pngs_peak_memory_stays_near_one_image(tmp_path):
    """Three 8000x8000 PNGs (256 MB each decoded) with 3 workers: one big decode at a time,
    each reduced before conversion, so the peak stays well under three decoded images
    (today's main: each worker held a full decode and its RGB copy)."""
    raw = tmp_path / "raw"
    raw.mkdir()
    Image.new("RGB", (8000, 8000), (120, 90, 60)).save(raw / "a.png", compress_level=1)
    for n in ("b", "c"):
        shutil.copy(raw / "a.png", raw / f"{n}.png")
    # VmHWM, the peak of this process image: ru_maxrss would also count the pytest parent's
    # resident memory at fork (Linux keeps the larger of the two across exec), so a big parent
    # (the whole suite, torch loaded) made the child look big.
    code = (
        "import sys\nfrom fernoise.cli.app import main\nsys.argv = ['fernoise', 'align', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "hwm = [x for x in open('/proc/self/status') if x.startswith('VmHWM:')][0].split()[1]\n"
        "print('PEAK_MB', int(hwm) // 1024)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(raw),
            str(tmp_path / "out"),
            "--mode",
            "whole",
            "--size",
            "32",
            "--workers",
            "3",
            "--workspace",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    peak = int(res.stdout.rsplit("PEAK_MB", 1)[1])
    assert peak < 650, f"peak resident memory {peak} MB"
    df = read_manifest(tmp_path / "out" / "manifest.parquet").df
    assert df["status"].tolist() == ["whole"] * 3
    crop = np.asarray(Image.open(tmp_path / "out" / df["path"].iloc[0]))
    assert crop.shape == (32, 32, 3) and np.abs(crop.astype(int) - [120, 90, 60]).max() <= 3


def _marks(path):
    def deco(fn):
        for m in needs(path):
            fn = m(fn)
        return fn

    return deco


@_marks(WILD)
def test_face_in_a_big_canvas_keeps_source_coordinates_and_its_crop(tmp_path):
    """obama.jpg pasted at (1500, 2000) into a 3640x4548 canvas: decoded at 1/4 for the
    detector, the face (too small in that copy for a 224 crop) is cropped from a full decode.
    bbox/landmarks are in canvas pixels (= the photo's + the offset) and the crop matches."""
    from fernoise.align.detect import make_detector

    photo = Image.open(WILD / "obama.jpg")
    photo = ImageOps.exif_transpose(photo).convert("RGB")
    alone, big = tmp_path / "alone", tmp_path / "big"
    alone.mkdir()
    big.mkdir()
    photo.save(alone / "p.png")
    canvas = Image.new("RGB", (3640, 4548), (200, 200, 200))
    canvas.paste(photo, (1500, 2000))
    canvas.save(big / "p.png", compress_level=1)
    params = AlignParams()
    assert working_factor(params, 3640, 4548) == 4
    det = make_detector("cpu")
    a = read_manifest(align_folder(alone, tmp_path / "oa", params, detector=det).manifest).df.iloc[
        0
    ]
    b = read_manifest(align_folder(big, tmp_path / "ob", params, detector=det).manifest).df.iloc[0]
    assert a["status"] == b["status"] == "ok"
    off = np.array([1500.0, 2000.0])
    side = a["bbox"][2] - a["bbox"][0]
    assert (
        np.abs(
            np.asarray(b["landmarks"]).reshape(5, 2)
            - off
            - np.asarray(a["landmarks"]).reshape(5, 2)
        ).max()
        < 0.03 * side
    )
    assert (
        np.abs(
            np.asarray(b["bbox"]).reshape(2, 2) - off - np.asarray(a["bbox"]).reshape(2, 2)
        ).max()
        < 0.06 * side
    )
    # the crop is the full-resolution warp at those landmarks (up to JPEG rounding) ...
    import io

    from fernoise.align.faces import warp_align
    from fernoise.cache import bytes_sha256

    fine = warp_align(canvas, np.asarray(b["landmarks"]).reshape(5, 2), params)
    buf = io.BytesIO()
    fine.save(buf, format="JPEG", quality=95)
    assert b["crop_sha256"] == bytes_sha256(buf.getvalue())
    cb = np.asarray(Image.open(tmp_path / "ob" / b["path"]), float)
    # ... and the same crop made from the detector's 1/4 copy is visibly blurrier
    coarse = np.asarray(
        warp_align(canvas.reduce(4), np.asarray(b["landmarks"]).reshape(5, 2) / 4, params), float
    )
    assert np.abs(np.diff(cb, axis=1)).mean() > 1.3 * np.abs(np.diff(coarse, axis=1)).mean()
