"""The audit's pictures and page (:mod:`fernoise.audit.gallery`) on real files.

A small ``audit.parquet``-shaped frame whose crops are PNGs generated in ``tmp_path`` (grey,
colour, not square, missing, not an image, truncated), and one on real FERPlus crops
(``shared_data``): which files are written, the sheets' sizes and tile pixels, and the page's
embedded images and escaping.
"""

from __future__ import annotations

import base64
import re

import numpy as np
import pandas as pd
import pytest
from conftest import FERPLUS
from PIL import Image, ImageOps

from fernoise.audit import gallery as g

CLASSES = ["neutral", "happy", "sad"]
EVIL = "<script>alert(1)</script>"


def _frame(rows: list[dict], classes: list[str], truth: bool = True) -> pd.DataFrame:
    """``audit.parquet``'s columns for ``rows`` (dicts with id, path, given, suggested,
    quality, is_issue, optional truth), ranked by ascending quality then id."""
    df = pd.DataFrame(rows)
    df["given"] = df["given"].astype("int64")
    df["suggested"] = df["suggested"].astype("int64")
    df["given_name"] = [classes[i] for i in df["given"]]
    df["suggested_name"] = [classes[i] for i in df["suggested"]]
    df["quality"] = df["quality"].astype("float64")
    df["is_issue"] = df["is_issue"].astype(bool)
    df["fold"] = np.int64(0)
    for k, name in enumerate(classes):
        df[f"p_{name}"] = np.where(df["suggested"] == k, 0.7, 0.3 / (len(classes) - 1))
    df = df.sort_values(["quality", "id"]).reset_index(drop=True)
    df["rank"] = np.arange(1, len(df) + 1, dtype=np.int64)
    if truth:
        df["truth"] = df["truth"].astype("int64")
        df["truth_name"] = [classes[i] for i in df["truth"]]
        df["is_wrong"] = df["given"] != df["truth"]
    elif "truth" in df.columns:
        df = df.drop(columns="truth")
    return df


def _summary(frame: pd.DataFrame, classes: list[str], truth: bool = True) -> dict:
    c = len(classes)
    joint = np.full((c, c), 0.02 / (c * c - c))
    np.fill_diagonal(joint, 0.98 / c)
    issues = frame[frame["is_issue"]]
    return {
        "stage": "audit",
        "version": 1,
        "key": "ab" * 32,
        "manifest": "/data/m.parquet",
        "manifest_sha256": "cd" * 32,
        "manifest_key": None,
        "dataset": "tiny",
        "classes": classes,
        "scorer": "cleanlab",
        "filter_by": "prune_by_noise_rate",
        "folds": 2,
        "group_column": None,
        "train": {"method": "ce", "epochs": 3, "lr": 0.01},
        "runs": ["/runs/a", "/runs/b"],
        "rows": len(frame),
        "issues": len(issues),
        "issues_per_class": {n: int((issues["given"] == i).sum()) for i, n in enumerate(classes)},
        "top_pairs": [{"given": "sad", "suggested": "neutral", "count": 3}],
        "joint": joint.tolist(),
        "truth": (
            {
                "source": "is_noisy",
                "noise_rate": 0.3,
                "precision": 0.5,
                "recall": 0.6,
                "f1": 0.55,
                "auroc": 0.812,
                "average_precision": 0.734,
            }
            if truth
            else None
        ),
        "seconds": {"total": 12.5, "training": 10.0},
    }


def _png(path, mode: str, size: tuple[int, int], color) -> str:
    Image.new(mode, size, color).save(path)
    return str(path)


def _gradient(path) -> str:
    """A 48x48 grey-level ramp: a crop whose resize is not trivially one colour."""
    ramp = np.tile(np.arange(0, 240, 5, dtype=np.uint8), (48, 1))
    Image.fromarray(ramp, mode="L").save(path)
    return str(path)


@pytest.fixture
def crops(tmp_path):
    """The crops of the ``sad`` issue rows, in tile order (lowest quality first)."""
    d = tmp_path / "crops"
    d.mkdir()
    truncated = d / "truncated.png"
    Image.new("RGB", (60, 60), (0, 200, 0)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:80])
    notimage = d / "notimage.png"
    notimage.write_text("not a png")
    return [
        _png(d / "red.png", "RGB", (64, 64), (255, 0, 0)),
        str(d / f"{EVIL}.png"),  # missing, and its path must be escaped in the page
        _gradient(d / "ramp.png"),
        str(notimage),
        _png(d / "wide.png", "RGB", (80, 40), (0, 0, 255)),  # not square: letterboxed
        str(truncated),
    ]


def _rows(crops: list[str]) -> list[dict]:
    """6 sad issue rows (qualities 0.01..0.06 in crop order), 3 sad rows that are not issues,
    2 neutral issue rows (missing crops), 4 happy rows without issues."""
    rows = [
        {"id": f"sad{i}", "path": p, "given": 2, "suggested": 0, "quality": 0.01 * (i + 1)}
        | {"is_issue": True, "truth": 0 if i % 2 == 0 else 2}
        for i, p in enumerate(crops)
    ]
    rows[1]["id"] = EVIL  # a hostile id
    rows += [
        {"id": f"sadok{i}", "path": crops[0], "given": 2, "suggested": 2, "quality": 0.9}
        | {"is_issue": False, "truth": 2}
        for i in range(3)
    ]
    rows += [
        {"id": f"neu{i}", "path": f"/nowhere/neu{i}.png", "given": 0, "suggested": 1}
        | {"quality": 0.2 + i / 10, "is_issue": True, "truth": 1}
        for i in range(2)
    ]
    rows += [
        {"id": f"hap{i}", "path": crops[0], "given": 1, "suggested": 1, "quality": 0.95}
        | {"is_issue": False, "truth": 1}
        for i in range(4)
    ]
    return rows


def _expected_size(n: int) -> tuple[int, int]:
    cols = max(min(n, g.COLS), g.MIN_COLS)
    grid_rows = -(-n // g.COLS)
    return (
        2 * g.PAD + cols * g.TILE_W + (cols - 1) * g.GAP,
        2 * g.PAD + g.TITLE_H + grid_rows * g.TILE_H + (grid_rows - 1) * g.GAP,
    )


def _face_pixels(sheet: Image.Image, i: int) -> np.ndarray:
    x, y = g.tile_origin(i)
    return np.asarray(sheet.crop((x, y, x + g.FACE, y + g.FACE)))


def _embedded(page: str) -> list[bytes]:
    return [
        base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    ]


def test_layout_constants():
    """The layout the other tests measure against: 5 tiles -> one row of 5, 10 -> two rows of
    8 columns, 1 -> as wide as MIN_COLS tiles."""
    assert g.sheet_size(5) == (2 * 8 + 5 * 96 + 4 * 6, 2 * 8 + 20 + 124)
    assert g.sheet_size(10) == _expected_size(10) == (2 * 8 + 8 * 96 + 7 * 6, 16 + 20 + 2 * 124 + 6)
    assert g.sheet_size(1) == _expected_size(4)[0:1] + (_expected_size(1)[1],)
    assert g.tile_origin(9) == (g.PAD + g.TILE_W + g.GAP, g.PAD + g.TITLE_H + g.TILE_H + g.GAP)


def test_gallery_files_sheets_and_page(tmp_path, crops):
    frame = _frame(_rows(crops), CLASSES)
    summary = _summary(frame, CLASSES)
    audit = tmp_path / "audit"
    written = g.write_gallery(audit, frame, summary)

    names = {p.relative_to(audit).as_posix() for p in written}
    assert names == {
        "joint.png",
        "pr_curve.png",
        "gallery/sad.png",
        "gallery/neutral.png",
        "index.html",
    }
    assert all(p.is_file() for p in written)
    assert not (audit / "gallery" / "happy.png").exists()  # no issue rows given happy
    assert sorted(p.name for p in audit.rglob("*")) == sorted(  # no temporaries left behind
        ["gallery", "joint.png", "pr_curve.png", "sad.png", "neutral.png", "index.html"]
    )

    sad = Image.open(audit / "gallery" / "sad.png").convert("RGB")
    assert sad.size == _expected_size(6) == (2 * 8 + 6 * 96 + 5 * 6, 16 + 20 + 124)
    assert Image.open(audit / "gallery" / "neutral.png").size == _expected_size(2)

    red = _face_pixels(sad, 0)  # lowest quality first: the red crop, resized to fill the face
    assert (red == [255, 0, 0]).all()
    for i, word in ((1, "missing"), (3, "unreadable"), (5, "unreadable")):  # 5: truncated
        face = _face_pixels(sad, i)
        for yx in ((2, 2), (2, 93), (93, 2), (93, 93), (20, 48)):
            assert tuple(face[yx]) == g.MISSING, (i, yx)
        assert (face[42:54].sum(axis=2) < 200).any(), f"tile {i} says nothing"
        assert np.array_equal(face, np.asarray(g._grey_tile(word))), f"tile {i} is not {word}"
    ramp = ImageOps.contain(Image.open(crops[2]).convert("RGB"), (g.FACE, g.FACE))
    assert np.array_equal(_face_pixels(sad, 2), np.asarray(ramp))
    wide = _face_pixels(sad, 4)  # 80x40 -> 96x48 in the middle, letterbox above and below
    assert (wide[:24] == g.LETTERBOX).all() and (wide[72:] == g.LETTERBOX).all()
    assert (wide[24:72] == [0, 0, 255]).all()
    caption = np.asarray(sad)[g.tile_origin(0)[1] + g.FACE : g.tile_origin(0)[1] + g.TILE_H]
    assert (caption.sum(axis=2) < 200).any()  # the caption is drawn

    page = (audit / "index.html").read_text()
    for name in ("sad", "neutral"):
        assert f"<h3>{name}</h3>" in page
    assert "<h3>happy</h3>" not in page
    assert "6 of 6 issue rows given sad" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page.lower()
    assert "http://" not in page and "https://" not in page
    pngs = [p for p in written if p.suffix == ".png"]
    assert page.count("data:image/png;base64,") == len(pngs) == 4
    assert sorted(_embedded(page)) == sorted(p.read_bytes() for p in pngs)
    assert "Against the known truth" in page and "0.734" in page and "0.812" in page
    assert "sad -&gt; neutral" in page  # the top pair and the rows listed under the sheet


def test_no_truth_no_pr_curve(tmp_path, crops):
    frame = _frame(_rows(crops), CLASSES, truth=False)
    summary = _summary(frame, CLASSES, truth=False)
    written = g.write_gallery(tmp_path, frame, summary)
    assert not (tmp_path / "pr_curve.png").exists()
    assert sorted(p.name for p in written) == ["index.html", "joint.png", "neutral.png", "sad.png"]
    page = (tmp_path / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 3
    assert "Against the known truth" not in page and "Precision and recall" not in page


def test_sheet_caps_at_48_lowest_quality_first(tmp_path):
    rows = [
        {"id": f"r{i:02d}", "path": str(tmp_path / f"none{i}.png"), "given": 1, "suggested": 2}
        | {"quality": (50 - i) / 100, "is_issue": True, "truth": 1}
        for i in range(50)
    ]
    frame = _frame(rows, CLASSES)
    g.write_gallery(tmp_path, frame, _summary(frame, CLASSES))
    sheet = Image.open(tmp_path / "gallery" / "happy.png")
    assert sheet.size == _expected_size(48) == (2 * 8 + 8 * 96 + 7 * 6, 16 + 20 + 6 * 124 + 5 * 6)
    page = (tmp_path / "index.html").read_text()
    assert "48 of 50 issue rows given happy" in page
    listed = re.findall(r"<td>(r\d\d)</td>", page)
    assert listed == [f"r{i:02d}" for i in range(49, 1, -1)]  # r49 has the lowest quality


def test_odd_class_names_are_escaped_and_safe_file_names(tmp_path, crops):
    classes = ["neutral", "a/b", EVIL]
    rows = [
        {"id": "x1", "path": crops[0], "given": 2, "suggested": 1, "quality": 0.1}
        | {"is_issue": True, "truth": 1},
        {"id": "x2", "path": crops[0], "given": 1, "suggested": 0, "quality": 0.2}
        | {"is_issue": True, "truth": 1},
    ]
    frame = _frame(rows, classes)
    written = g.write_gallery(tmp_path, frame, _summary(frame, classes))
    sheets = sorted(
        p.relative_to(tmp_path).as_posix() for p in written if p.parent.name == "gallery"
    )
    assert sheets == ["gallery/1_a_b.png", "gallery/2_script_alert_1_script.png"]
    page = (tmp_path / "index.html").read_text()
    assert "<script" not in page.lower()
    assert f"<h3>{'&lt;script&gt;alert(1)&lt;/script&gt;'}</h3>" in page
    assert "<h3>a/b</h3>" in page


def test_precision_recall_matches_sklearn():
    from sklearn.metrics import precision_recall_curve

    rng = np.random.default_rng(0)
    score = np.round(rng.random(200), 1)  # many ties
    positive = rng.random(200) < 0.3
    precision, recall = g.precision_recall(score, positive)
    p_ref, r_ref, _ = precision_recall_curve(positive, score)
    assert np.allclose(precision, p_ref[:-1][::-1]) and np.allclose(recall, r_ref[:-1][::-1])
    assert g.precision_recall(score, np.zeros(200, bool))[0].size == 0


def test_pr_curve_without_wrong_rows_still_drawn(tmp_path, crops):
    frame = _frame(_rows(crops), CLASSES)
    frame["truth"] = frame["given"]
    frame["is_wrong"] = False
    g.write_gallery(tmp_path, frame, _summary(frame, CLASSES))
    assert Image.open(tmp_path / "pr_curve.png").size[0] > 100


@pytest.mark.shared_data
@pytest.mark.skipif(
    not (FERPLUS / "manifest.csv").exists(), reason=f"real data not present: {FERPLUS}"
)
def test_real_ferplus_crops(tmp_path):
    """Twelve real FER2013 crops (48x48 grey): every tile is the crop resized, none grey."""
    from fernoise.labels import CLASSES as BASIC8
    from fernoise.labels import canonical_name

    raw = pd.read_csv(FERPLUS / "manifest.csv")
    raw = raw[(raw["split"] == "train") & ~raw["ferplus_plurality"].isin(["tie"])]
    raw = raw.dropna(subset=["ferplus_plurality"]).nsmallest(12, "rand_rank")
    classes = list(BASIC8)
    given = [classes.index(canonical_name(x)) for x in raw["ferplus_plurality"]]
    rows = [
        {"id": p, "path": str(FERPLUS / p), "given": 0, "suggested": gv, "quality": q}
        | {"is_issue": True, "truth": gv}
        for p, gv, q in zip(raw["path"], given, np.linspace(0.01, 0.4, 12), strict=True)
    ]
    frame = _frame(rows, classes)
    written = g.write_gallery(tmp_path, frame, _summary(frame, classes))
    sheet = Image.open(tmp_path / "gallery" / "neutral.png").convert("RGB")
    assert sheet.size == _expected_size(12)
    for i, row in enumerate(frame.itertuples()):
        crop = Image.open(row.path)
        assert crop.size == (48, 48)
        want = np.asarray(ImageOps.contain(crop.convert("RGB"), (g.FACE, g.FACE)))
        assert np.array_equal(_face_pixels(sheet, i), want), row.id
    page = (tmp_path / "index.html").read_text()
    assert page.count("data:image/png;base64,") == sum(p.suffix == ".png" for p in written) == 3
    assert "FER2013Train/" in page
