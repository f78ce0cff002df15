"""``fernoise predict``: classify every face in photos with a trained run.

Each photo is decoded and aligned with the same settings as the run's training data
(``config["align"]``, the align parameters of the training manifest's lineage); a run whose
manifest did not come from ``fernoise align`` (``config["align"]`` null) uses
``AlignParams()``'s defaults; one trained on ``--mode whole`` crops uses ``mode="box"``
(see :func:`align_params_for`). Every face crop is resized to the run's ``image_size`` exactly as
training crops were (bilinear, RGB; see :func:`fernoise.images.load_rgb`) and classified by
the ``pcc`` head. When the run's training crops are greyscale (FER2013/FERPlus: mode ``L``,
checked on the first crop of the training manifest), each face is turned to greyscale first,
as training saw it.

Photos are decoded as align decodes them (:func:`fernoise.align.faces.decode_image` reduced by
:func:`fernoise.align.stage.working_factor`: the detector's size, JPEG draft scaling, one big
decode at a time), so memory stays bounded on large photos; a face that needs more detail is
cropped from a finer decode of its photo, as align does.

One output row per face, and one row for a photo with no face or a file that is not an
image (``status`` and ``reason`` say why); nothing raises for a bad input file. Row keys:
``file``, ``face`` (index in the photo, 0 = most confident detection; None without a face),
``status`` (``ok``, ``no_face``, or the decoder's status such as ``unreadable``), ``label``,
``prob``, ``top`` (list of ``{"label", "prob"}``, best first), ``det_prob``, ``bbox``,
``reason``. ``file`` is the path as given, with ``\\xNN`` escapes for bytes of a name that
are not UTF-8 (:func:`fernoise.safefiles.printable`).

Folders are searched recursively for entries with an image extension (``IMAGE_EXTENSIONS``,
any case, hidden files skipped); a file named explicitly is always tried, whatever its name.
A FIFO, a device or a broken link among them is not read: it gets an ``unreadable`` row
saying what it is, as in align's manifest. CSV output escapes cells a spreadsheet would run
(:mod:`fernoise.csvsafe`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from fernoise import csvsafe
from fernoise.align.stage import IMAGE_EXTENSIONS, working_factor  # predict sees, decodes as align
from fernoise.errors import FernoiseError
from fernoise.safefiles import MAX_CROP_BYTES, open_regular, printable

CHUNK = 8  # photos decoded and aligned at a time (bounds memory for large photos)


@dataclass(frozen=True)
class PredictParams:
    """Parameters of ``fernoise predict``."""

    top: int = 3
    """How many classes each row lists, best first."""
    batch_size: int = 64
    """Faces per forward pass."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N, for the detector and the classifier."""

    def __post_init__(self):
        if self.top < 1:
            raise FernoiseError(f"expected at least 1, got {self.top}", flag="--top")
        if self.batch_size < 1:
            raise FernoiseError(
                f"expected a positive batch size, got {self.batch_size}", flag="--batch-size"
            )


def expand_inputs(items: Sequence[str | os.PathLike]) -> list[Path]:
    """Files named by ``items``: files as given, folders searched recursively for images."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            # as align's scan: every entry with an image name that is not a folder, FIFOs,
            # devices and broken links included (they get a status row, never a silent skip)
            out.extend(
                sorted(
                    f
                    for f in p.rglob("*")
                    if not f.is_dir()
                    and f.suffix.lower() in IMAGE_EXTENSIONS
                    and not any(part.startswith(".") for part in f.relative_to(p).parts)
                )
            )
        elif p.exists() or p.is_symlink():
            out.append(p)
        else:
            raise FernoiseError(f"{p} does not exist; pass photos or folders of photos")
    if not out:
        raise FernoiseError(
            f"no image files found in {' '.join(map(str, items))} (looked for {', '.join(IMAGE_EXTENSIONS)})"
        )
    return out


def align_params_for(config: dict[str, Any]):
    """The run's ``AlignParams``: from ``config["align"]`` (unknown keys ignored), else defaults.

    A run trained on ``--mode whole`` crops (a pre-cropped dataset, no detector) still needs
    a detector on photos: it gets ``mode="box"`` (the detector's box, same margin and size),
    the closest thing to a dataset's own face crops.
    """
    from fernoise.align.faces import AlignParams

    raw = config.get("align") or {}
    names = {f.name for f in fields(AlignParams)}
    params = AlignParams(**{k: v for k, v in raw.items() if k in names})
    if params.mode == "whole":
        params = replace(params, mode="box")
    return params


def training_is_greyscale(config: dict[str, Any]) -> bool:
    """True when the first crop of the run's training manifest is a greyscale image.

    False when the manifest or its crops are no longer there (nothing to match).
    """
    from PIL import Image

    try:
        from fernoise.manifest import read_manifest

        m = read_manifest(config["manifest"])
        paths = m.df.loc[m.df["path"].notna(), "path"]
        if paths.empty:
            return False
        with open_regular(m.root / paths.iloc[0], MAX_CROP_BYTES) as fh, Image.open(fh) as im:
            return im.mode in ("L", "LA", "I;16", "1")
    except (FernoiseError, OSError, KeyError, TypeError, ValueError):
        return False


def crops_to_array(crops: Sequence[Any], size: int, *, greyscale: bool = False) -> np.ndarray:
    """PIL face crops -> ``(N, size, size, 3)`` uint8, resized as training crops were.

    ``greyscale``: convert to ``L`` first (then back to 3 equal channels).
    """
    from PIL import Image

    out = np.empty((len(crops), size, size, 3), dtype=np.uint8)
    for i, im in enumerate(crops):
        im = im.convert("L").convert("RGB") if greyscale else im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BILINEAR)
        out[i] = np.asarray(im, dtype=np.uint8)
    return out


def classify(
    model,
    images: np.ndarray,
    classes: Sequence[str],
    *,
    top: int = 3,
    batch_size: int = 64,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """Label, probability and top-``top`` classes of each uint8 ``(N, H, W, 3)`` face."""
    from fernoise.evaluate.stage import predict_probs

    probs = predict_probs(model, images, batch_size=batch_size, device=device)
    out = []
    for p in probs:
        order = np.argsort(-p, kind="stable")[:top]
        out.append(
            {
                "label": classes[int(order[0])],
                "prob": float(p[order[0]]),
                "top": [{"label": classes[int(c)], "prob": float(p[c])} for c in order],
            }
        )
    return out


def _row(file: Path, **kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "file": printable(file),
        "face": None,
        "status": "ok",
        "label": None,
        "prob": None,
        "top": [],
        "det_prob": None,
        "bbox": None,
        "reason": None,
    }
    row.update(kw)
    return row


def predict(
    items: Sequence[str | os.PathLike],
    run_path: str | os.PathLike,
    params: PredictParams = PredictParams(),
    *,
    detector=None,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per face in the photos named by ``items`` (see the module docstring)."""
    from fernoise.align import faces as align
    from fernoise.devices import resolve_device
    from fernoise.evaluate.stage import load_model, load_run

    files = expand_inputs(items)
    run = load_run(run_path)
    device = resolve_device(params.device)
    model = load_model(run, device)
    aparams = align_params_for(run.config)
    detector = detector if detector is not None else align.make_detector(device)
    size = int(run.config["image_size"])
    grey = training_is_greyscale(run.config)
    classes = run.classes
    rows: list[dict[str, Any]] = []
    for start in range(0, len(files), CHUNK):
        chunk = files[start : start + CHUNK]
        opened, decoded = [], []
        for f in chunk:
            try:
                d = align.decode_image(f, lambda w, h: working_factor(aparams, w, h))
                img, status, reason = d.image, d.status, d.reason
            except Exception as e:  # noqa: BLE001 - a bad file gets its row, never a crash
                img, status, reason = None, "error", f"{e.__class__.__name__}: {e}"
            if img is None:
                rows.append(
                    _row(f, status=status or "unreadable", reason=reason or "could not be decoded")
                )
            else:
                opened.append(f)
                decoded.append(d)
        faces_per = _faces(opened, decoded, aparams, detector)
        del decoded
        crops, where = [], []
        for f, faces in zip(opened, faces_per, strict=True):
            if not faces:
                rows.append(_row(f, status="no_face", reason="the detector found no face"))
                continue
            for k, face in enumerate(faces):
                rows.append(
                    _row(f, face=k, det_prob=_float(face.det_prob), bbox=_floats(face.bbox))
                )
                crops.append(face.crop)
                where.append(len(rows) - 1)
        if crops:
            preds = classify(
                model,
                crops_to_array(crops, size, greyscale=grey),
                classes,
                top=params.top,
                batch_size=params.batch_size,
                device=device,
            )
            for i, pred in zip(where, preds, strict=True):
                rows[i].update(pred)
        if progress:
            progress(min(start + CHUNK, len(files)), len(files))
    order = {printable(f): i for i, f in enumerate(files)}
    rows.sort(key=lambda r: (order[r["file"]], -1 if r["face"] is None else r["face"]))
    return rows


def _faces(files: Sequence[Path], decoded: Sequence[Any], aparams, detector) -> list[list[Any]]:
    """The faces of each decoded photo, as align finds them: the detector sees the reduced
    decode (boxes mapped back to source pixels), and a face that needs more detail than it
    holds is cropped from a finer decode of that one photo (:func:`fernoise.align.faces.faces_from`)."""
    from fernoise.align import faces as align
    from fernoise.align.stage import _finer

    if not decoded:
        return []
    arrays = []
    for d in decoded:
        arr, back = align.detector_input(d.image, aparams)
        arrays.append((arr, back * d.factor))
    dets = align.detect_images([d.image for d in decoded], aparams, detector, arrays=arrays)
    del arrays
    return [
        align.faces_from(d.image, det, aparams, factor=d.factor, finer=_finer(f))
        for f, d, det in zip(files, decoded, dets, strict=True)
    ]


def _float(v: Any) -> float | None:
    return None if v is None else float(v)


def _floats(v: Any) -> list[float] | None:
    return None if v is None else [float(x) for x in np.asarray(v, dtype=float).ravel()]


def write_rows(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write rows as CSV (``top`` as ``label:prob;...``) or JSON, by the file's extension."""
    from fernoise.cache import atomic_path, atomic_write_json

    path = Path(path)
    ext = path.suffix.lower()
    if ext == ".json":
        atomic_write_json(path, list(rows))
        return path
    if ext != ".csv":
        raise FernoiseError(f"expected a .csv or .json file, got {path.name}", flag="--out")
    cols = ["file", "face", "status", "label", "prob", "top", "det_prob", "bbox", "reason"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csvsafe.writer(fh)
        w.writerow(cols)
        for r in rows:
            cells = dict(r)
            cells["top"] = ";".join(f"{t['label']}:{t['prob']:.4f}" for t in r["top"])
            cells["bbox"] = json.dumps(r["bbox"]) if r["bbox"] is not None else ""
            cells["prob"] = "" if r["prob"] is None else f"{r['prob']:.4f}"
            cells["det_prob"] = "" if r["det_prob"] is None else f"{r['det_prob']:.4f}"
            w.writerow(["" if cells[c] is None else cells[c] for c in cols])
    return path
