"""The audit's pictures and its one-file HTML page.

:func:`write_gallery` reads nothing but the crops named in the frame's ``path`` column and
writes, inside the audit folder (each file atomically):

- ``joint.png``: the estimated joint of given (rows) and true (columns) labels, each cell
  annotated with its estimated row count (``joint * rows``);
- ``gallery/<class>.png``: one contact sheet per class with issue rows, the issue rows whose
  GIVEN label is that class, lowest label quality first, at most :data:`MAX_TILES`; each tile
  captioned ``given -> suggested (0.12)`` (the label quality). A crop that is missing or not a
  readable image is a grey tile saying so;
- ``pr_curve.png``, only when a truth is known: precision and recall of ``1 - quality`` as the
  score for ``is_wrong``, with the issue set's operating point and the base rate;
- ``index.html``: every picture above embedded as a base64 data URI, the summary tables, no
  script and no external address, every string from the data escaped.

Figures are built on matplotlib's Agg canvas (``matplotlib.figure.Figure``, no pyplot state);
sheets with PIL. Torch-free.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fernoise.cache import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    import pandas as pd
    from PIL import Image as PILImage
    from PIL import ImageFont

JOINT_PNG = "joint.png"
PR_PNG = "pr_curve.png"
INDEX_HTML = "index.html"
GALLERY_DIR = "gallery"

# Contact-sheet layout (pixels). A sheet of n tiles has min(n, COLS) columns but is never
# narrower than MIN_COLS columns, so its title fits.
MAX_TILES = 48
COLS = 8
MIN_COLS = 4
FACE = 96  # a crop is resized to FACE x FACE
LINE_H = 12  # one line of PIL's default font
CAPTION_H = 2 * LINE_H + 4  # up to two caption lines under the face
TILE_W = FACE
TILE_H = FACE + CAPTION_H
GAP = 6
PAD = 8
TITLE_H = LINE_H + 8
BACKGROUND = (255, 255, 255)
LETTERBOX = (40, 40, 40)  # around a crop that is not square
MISSING = (160, 160, 160)  # the face area of a tile whose crop cannot be shown
TEXT = (0, 0, 0)
DPI = 110


# ----------------------------------------------------------------------------- the entry
def write_gallery(audit_dir: Path, frame: pd.DataFrame, summary: Mapping[str, Any]) -> list[Path]:
    """Write the audit's pictures and ``index.html`` into ``audit_dir``; return their paths.

    ``frame``: ``audit.parquet``'s rows (``id``, ``path``, ``given``, ``suggested``,
    ``quality``, ``is_issue``, ``rank``; ``is_wrong``/``truth`` when a truth is known).
    ``summary``: ``audit.json``'s dict (``classes``, ``joint``, ``rows``, ``truth``, ...).
    Never raises for an unreadable crop; a write failure (full disk) raises ``OSError``.
    """
    audit_dir = Path(audit_dir)
    classes = [str(c) for c in summary.get("classes") or []]
    pngs: dict[str, bytes] = {}
    written: list[Path] = []
    if summary.get("joint"):
        pngs[JOINT_PNG] = joint_png(summary)
    wrong = _is_wrong(frame, summary)
    if wrong is not None:
        pngs[PR_PNG] = pr_curve_png(frame, wrong, summary)
    sheets: list[tuple[str, str, pd.DataFrame, int]] = []
    for i, name in enumerate(classes):
        rows = issue_rows(frame, i)
        if len(rows):
            rel = f"{GALLERY_DIR}/{_file_stem(name, i, classes)}.png"
            shown = rows.head(MAX_TILES)
            pngs[rel] = _png_bytes(contact_sheet(shown, name, len(rows), classes))
            sheets.append((name, rel, shown, len(rows)))
    for rel, data in pngs.items():
        atomic_write_bytes(audit_dir / rel, data)
        written.append(audit_dir / rel)
    page = index_html(frame, summary, pngs, sheets, wrong)
    atomic_write_text(audit_dir / INDEX_HTML, page)
    written.append(audit_dir / INDEX_HTML)
    return written


def issue_rows(frame: pd.DataFrame, given: int) -> pd.DataFrame:
    """The ``is_issue`` rows whose given label is ``given``, lowest quality first (ties by
    rank), index reset."""
    if not len(frame):
        return frame
    mask = frame["is_issue"].astype(bool).to_numpy() & (frame["given"].to_numpy() == given)
    sub = frame[mask]
    keys = ["quality", "rank"] if "rank" in sub.columns else ["quality"]
    return sub.sort_values(keys, kind="stable").reset_index(drop=True)


def _file_stem(name: str, index: int, classes: Sequence[str]) -> str:
    """A file-name-safe stem for class ``name``: the name itself when it is plain, else its
    safe characters prefixed with its index (so two odd names never share a file)."""
    if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name) and classes.count(name) == 1:
        return name
    return f"{index}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', name).strip('._')}"[:64]


def _png_bytes(img: PILImage.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


# ----------------------------------------------------------------------------- contact sheets
def sheet_size(n: int) -> tuple[int, int]:
    """``(width, height)`` in pixels of a sheet of ``n`` tiles."""
    cols = max(min(n, COLS), MIN_COLS)
    grid_rows = max(1, math.ceil(n / COLS))
    width = 2 * PAD + cols * TILE_W + (cols - 1) * GAP
    height = 2 * PAD + TITLE_H + grid_rows * TILE_H + (grid_rows - 1) * GAP
    return width, height


def tile_origin(i: int) -> tuple[int, int]:
    """Top-left pixel of tile ``i`` (0-based, row by row) on a sheet; its face spans
    ``FACE x FACE`` from there, its caption the ``CAPTION_H`` pixels below."""
    r, c = divmod(i, COLS)
    return PAD + c * (TILE_W + GAP), PAD + TITLE_H + r * (TILE_H + GAP)


@functools.lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    from PIL import ImageFont

    return ImageFont.load_default()


def contact_sheet(
    rows: pd.DataFrame, name: str, total: int, classes: Sequence[str]
) -> PILImage.Image:
    """An RGB sheet: the title ``<name>: N of M issues shown, lowest label quality first``, then
    one tile per row of ``rows`` (in order), each captioned ``given -> suggested (quality)``."""
    from PIL import Image, ImageDraw

    sheet = Image.new("RGB", sheet_size(len(rows)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = _font()
    title = f"{name}: {len(rows)} of {total} issues shown, lowest label quality first"
    draw.text((PAD, PAD), _fit(title, font, sheet.width - 2 * PAD), fill=TEXT, font=font)
    for i, row in enumerate(rows.itertuples(index=False)):
        x, y = tile_origin(i)
        sheet.paste(_face(getattr(row, "path", None)), (x, y))
        caption = (
            f"{_class_name(classes, row.given)} -> {_class_name(classes, row.suggested)} "
            f"({float(row.quality):.2f})"
        )
        for k, line in enumerate(_wrap(caption, font, TILE_W, lines=2)):
            draw.text((x, y + FACE + 2 + k * LINE_H), line, fill=TEXT, font=font)
    return sheet


def _class_name(classes: Sequence[str], index: Any) -> str:
    i = int(index)
    return classes[i] if 0 <= i < len(classes) else str(i)


def _face(path: Any) -> PILImage.Image:
    """The crop at ``path`` as a FACE x FACE RGB tile (aspect kept, letterboxed), or a grey
    tile saying ``missing`` (no such file) or ``unreadable`` (not a decodable image)."""
    from PIL import Image, ImageOps

    try:
        found = isinstance(path, str | Path) and bool(str(path)) and Path(path).is_file()
    except (OSError, ValueError):  # a path the OS cannot even look up (NUL byte, too long)
        found = False
    if not found:
        return _grey_tile("missing")
    try:
        with Image.open(path) as img:
            img.draft("RGB", (FACE, FACE))  # JPEG: decode at a reduced size
            img.load()
            face = ImageOps.contain(img.convert("RGB"), (FACE, FACE))
    except Exception:  # any decoder failure (truncated, bomb, bad header) is a grey tile
        return _grey_tile("unreadable")
    tile = Image.new("RGB", (FACE, FACE), LETTERBOX)
    tile.paste(face, ((FACE - face.width) // 2, (FACE - face.height) // 2))
    return tile


def _grey_tile(word: str) -> PILImage.Image:
    from PIL import Image, ImageDraw

    tile = Image.new("RGB", (FACE, FACE), MISSING)
    draw = ImageDraw.Draw(tile)
    font = _font()
    w = font.getlength(word)
    draw.text(((FACE - w) / 2, (FACE - LINE_H) / 2), word, fill=TEXT, font=font)
    return tile


def _wrap(text: str, font: Any, width: int, *, lines: int) -> list[str]:
    """``text`` split at spaces into at most ``lines`` lines of at most ``width`` pixels; a
    word too long for a line, or text left over, ends its line with an ellipsis."""
    out: list[str] = []
    words = text.split(" ")
    while words and len(out) < lines:
        line = words.pop(0)
        while words and font.getlength(f"{line} {words[0]}") <= width:
            line = f"{line} {words.pop(0)}"
        out.append(line)
    if words:
        out[-1] = f"{out[-1]} {' '.join(words)}"
    return [_fit(line, font, width) for line in out]


def _fit(text: str, font: Any, width: int) -> str:
    """``text``, or its longest head that fits ``width`` pixels with an ellipsis after it."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(f"{text}...") > width:
        text = text[:-1]
    return f"{text}..."


# ----------------------------------------------------------------------------- figures
def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def joint_png(summary: Mapping[str, Any]) -> bytes:
    """``summary["joint"]`` (rows: given label, columns: estimated true label) as a heat map
    coloured by the share of its given-label row, each cell annotated with its estimated row
    count ``round(joint * rows)``; PNG bytes."""
    joint = np.asarray(summary["joint"], dtype=float)
    classes = [str(c) for c in summary.get("classes") or range(len(joint))]
    counts = np.rint(joint * float(summary.get("rows") or 0)).astype(np.int64)
    row_sum = joint.sum(axis=1, keepdims=True)
    share = np.divide(joint, row_sum, out=np.zeros_like(joint), where=row_sum > 0)
    c = len(classes)
    side = max(5.0, 0.85 * c + 2.5)
    fig = _figure(side + 1.2, side)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the given label's rows")
    ax.set_xticks(range(c))
    ax.set_yticks(range(c))
    ax.set_xticklabels(classes, rotation=40, ha="right")
    ax.set_yticklabels(classes)
    ax.set_xlabel("estimated true label")
    ax.set_ylabel("given label")
    for i in range(c):
        for j in range(c):
            color = "white" if share[i, j] > 0.55 else "black"
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8, color=color)
    ax.set_title(
        f"{summary.get('dataset') or 'dataset'}: estimated joint of given and true labels\n"
        f"(scorer {summary.get('scorer') or '?'}, {int(summary.get('rows') or 0)} rows; "
        "cells: estimated rows)"
    )
    return _figure_png(fig)


def _is_wrong(frame: pd.DataFrame, summary: Mapping[str, Any]) -> np.ndarray | None:
    """Per row, whether the given label is wrong; None when no truth is known."""
    if not summary.get("truth") or not len(frame):
        return None
    if "is_wrong" in frame.columns:
        return frame["is_wrong"].to_numpy(dtype=bool)
    if "truth" in frame.columns:
        return frame["given"].to_numpy() != frame["truth"].to_numpy()
    return None


def precision_recall(score: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(precision, recall)`` of flagging every row whose ``score`` is at least each distinct
    score, highest threshold first (as ``sklearn.metrics.precision_recall_curve`` reversed,
    without its final ``(1, 0)`` point). Empty arrays when there are no positives."""
    score = np.asarray(score, dtype=float)
    positive = np.asarray(positive, dtype=bool)
    if not positive.any():
        return np.zeros(0), np.zeros(0)
    order = np.argsort(-score, kind="stable")
    s, y = score[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # last row of each tie block
    tp = np.cumsum(y)[last]
    flagged = last + 1
    return tp / flagged, tp / positive.sum()


def pr_curve_png(frame: pd.DataFrame, wrong: np.ndarray, summary: Mapping[str, Any]) -> bytes:
    """Precision against recall of ``1 - quality`` as the score for ``wrong``, the ``is_issue``
    set's point, the base rate (share of wrong rows) as a line; PNG bytes."""
    quality = frame["quality"].to_numpy(dtype=float)
    issue = frame["is_issue"].to_numpy(dtype=bool)
    truth = summary.get("truth") or {}
    precision, recall = precision_recall(1.0 - quality, wrong)
    fig = _figure(6.0, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    base = float(wrong.mean())
    if len(recall):
        label = (
            f"1 - quality (AP {_fmt(truth.get('average_precision'))}, "
            f"AUROC {_fmt(truth.get('auroc'))})"
        )
        ax.step(np.r_[0.0, recall], np.r_[precision[0], precision], where="post", label=label)
        hit = int((wrong & issue).sum())
        if issue.any():
            point = (hit / wrong.sum(), hit / issue.sum())
            ax.plot(*point, "o", color="C3", ms=8, label=f"issue set ({int(issue.sum())} rows)")
    else:
        ax.text(0.5, 0.5, "no wrong labels: nothing to find", ha="center", transform=ax.transAxes)
    ax.axhline(base, color="0.4", ls=":", label=f"base rate ({base:.3f} wrong)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall (share of the wrong labels flagged)")
    ax.set_ylabel("precision (share of flagged rows wrong)")
    ax.set_title(
        f"{summary.get('dataset') or 'dataset'}: finding wrong labels "
        f"(scorer {summary.get('scorer') or '?'})"
    )
    ax.legend(fontsize=8, loc="upper right")
    return _figure_png(fig)


# ----------------------------------------------------------------------------- the page
CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 72em; }
table { border-collapse: collapse; margin: 0.5em 0 1.2em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; font-size: 0.9em; }
th { background: #f2f2f2; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #ddd; }
details { margin: 0.4em 0 1.5em; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    """A number for a table: floats to 4 significant digits, None as ``-``; anything else as text."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An escaped HTML table; cells holding numbers are right-aligned."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="n">{_e(_fmt(v))}</td>'
            if isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)
            else f"<td>{_e(_fmt(v))}</td>"
            for v in row
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _img(data: bytes, alt: str) -> str:
    b64 = base64.b64encode(data).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{b64}">'


def _summary_rows(frame: pd.DataFrame, summary: Mapping[str, Any]) -> list[list[Any]]:
    rows = int(summary.get("rows") or len(frame))
    issues = int(summary.get("issues") or 0)
    share = f"{issues} ({issues / rows:.1%} of the rows)" if rows else str(issues)
    out: list[list[Any]] = [
        ["dataset", summary.get("dataset")],
        ["manifest", summary.get("manifest")],
        ["rows audited", rows],
        ["issues", share],
        ["scorer", summary.get("scorer")],
        ["filter_by", summary.get("filter_by")],
        ["folds", summary.get("folds")],
        ["group column", summary.get("group_column")],
        ["key", summary.get("key")],
    ]
    seconds = summary.get("seconds") or {}
    out += [[f"seconds ({k})", v] for k, v in seconds.items()]
    return out


def _class_rows(
    frame: pd.DataFrame, classes: Sequence[str], wrong: np.ndarray | None
) -> list[list[Any]]:
    """Per class: rows given it, its issue rows, their share, and with a truth the wrong rows
    among them and the issues that are wrong."""
    out = []
    given = frame["given"].to_numpy() if len(frame) else np.zeros(0, dtype=np.int64)
    issue = frame["is_issue"].to_numpy(dtype=bool) if len(frame) else np.zeros(0, dtype=bool)
    for i, name in enumerate(classes):
        mine = given == i
        n, k = int(mine.sum()), int((mine & issue).sum())
        row: list[Any] = [name, n, k, f"{k / n:.1%}" if n else "-"]
        if wrong is not None:
            row += [int((mine & wrong).sum()), int((mine & issue & wrong).sum())]
        out.append(row)
    return out


def _sheet_section(
    name: str, data: bytes, rows: pd.DataFrame, total: int, classes: Sequence[str], truth: bool
) -> str:
    """A class's heading, its sheet, and the list of the rows shown (in tile order)."""
    headers = ["tile", "rank", "id", "given -> suggested", "quality"]
    headers += ["true label"] if truth else []
    headers += ["path"]
    listed = []
    for i, r in enumerate(rows.itertuples(index=False)):
        pair = f"{_class_name(classes, r.given)} -> {_class_name(classes, r.suggested)}"
        row = [i + 1, getattr(r, "rank", None), r.id, pair, float(r.quality)]
        row += [_class_name(classes, r.truth)] if truth and hasattr(r, "truth") else []
        listed.append([*row, r.path])
    return (
        f"<h3>{_e(name)}</h3>"
        f"<p>{len(rows)} of {total} issue rows given {_e(name)}, lowest label quality first.</p>"
        f"{_img(data, f'contact sheet: {name}')}"
        f"<details><summary>the rows shown</summary>{_table(headers, listed)}</details>"
    )


def index_html(
    frame: pd.DataFrame,
    summary: Mapping[str, Any],
    pngs: Mapping[str, bytes],
    sheets: Sequence[tuple[str, str, pd.DataFrame, int]],
    wrong: np.ndarray | None,
) -> str:
    """The page: summary, per-class issues, top pairs, truth metrics, the joint, the PR curve,
    then every class's sheet (``sheets``: ``(class, png name, rows shown, issue rows)``)."""
    classes = [str(c) for c in summary.get("classes") or []]
    title = f"fernoise audit: {summary.get('dataset') or ''}"
    parts = [
        f"<h1>{_e(title)}</h1>",
        "<h2>Summary</h2>",
        _table(["item", "value"], _summary_rows(frame, summary)),
    ]
    train = summary.get("train") or {}
    if train:
        parts += ["<h3>Training settings</h3>", _table(["setting", "value"], list(train.items()))]
    class_headers = ["given label", "rows", "issues", "share flagged"]
    class_headers += ["wrong (truth)", "issues that are wrong"] if wrong is not None else []
    parts += [
        "<h2>Issues per class</h2>",
        _table(class_headers, _class_rows(frame, classes, wrong)),
    ]
    pairs = [
        [p.get("given"), p.get("suggested"), p.get("count")] for p in summary.get("top_pairs") or []
    ]
    parts += ["<h2>Top pairs (issue rows)</h2>", _table(["given", "suggested", "rows"], pairs)]
    truth = summary.get("truth")
    if truth:
        parts += [
            "<h2>Against the known truth</h2>",
            _table(["metric", "value"], list(truth.items())),
        ]
    if JOINT_PNG in pngs:
        parts += [
            "<h2>Estimated joint of given and true labels</h2>",
            _img(pngs[JOINT_PNG], "joint"),
        ]
    if PR_PNG in pngs:
        parts += ["<h2>Precision and recall</h2>", _img(pngs[PR_PNG], "precision-recall curve")]
    parts.append("<h2>The most likely mislabelled faces, per given label</h2>")
    has_truth = wrong is not None and "truth" in frame.columns
    for name, rel, rows, total in sheets:
        parts.append(_sheet_section(name, pngs[rel], rows, total, classes, has_truth))
    if not sheets:
        parts.append("<p>No issue rows.</p>")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
