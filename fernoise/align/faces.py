"""Face alignment: robust decoding, MTCNN detection, similarity warp to a square crop.

The public API (also used by ``fernoise predict``):

- :class:`AlignParams`: every parameter that changes a crop; ``dataclasses.asdict`` of it is
  the ``params`` of an align manifest's metadata, so it can be rebuilt later.
- :func:`open_image` ``(path) -> (PIL RGB image | None, status, reason)``: never raises for a
  bad file (EXIF rotation applied; CMYK, 16-bit, RGBA/LA/palette, greyscale, GIF first frame).
- :func:`align_images` ``(images, params, detector=None) -> list[list[Face]]``: the faces of
  each image, most confident first, each a ``params.size`` square RGB crop.
- :func:`make_detector` ``(device="auto")``: the MTCNN nets, to reuse across calls.

The folder-level stage (labels, manifest, per-image cache, shards) is in
:mod:`fernoise.align.stage`.

Alignment (``mode="align"``): the rotation puts the two eyes on one horizontal line; scale
and translation are the least-squares fit of the five MTCNN landmarks to a fixed template
(the ArcFace 112x112 template with its eye and mouth heights averaged, so level), shrunk
towards the centre by ``1 / (1 + 2 * margin)`` so that ``margin`` adds that fraction of the
template on each side. ``mode="box"`` crops a square around the detector's box, enlarged by
``margin`` on each side, without rotation. ``mode="whole"`` runs no detector and resizes the
whole image.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from fernoise.align.detect import Detection, Detector, make_detector
from fernoise.errors import FernoiseError
from fernoise.safefiles import MAX_SOURCE_BYTES, UnsafeFile, open_regular, regular_problem

if TYPE_CHECKING:  # pragma: no cover
    pass

__all__ = [
    "AlignParams",
    "Face",
    "Decoded",
    "open_image",
    "decode_image",
    "align_images",
    "make_detector",
    "Detector",
    "MODES",
    "ON_NO_FACE",
    "IMAGE_FORMATS",
]

MODES = ("align", "box", "whole")
ON_NO_FACE = ("skip", "whole")
IMAGE_FORMATS = ("jpg", "png")

# ArcFace's 112x112 five-point template (eyes, nose, mouth corners), made level.
_TEMPLATE = (
    np.array(
        [
            [38.2946, 51.5988],
            [73.5318, 51.5988],
            [56.0252, 71.7366],
            [41.5493, 92.2848],
            [70.7299, 92.2848],
        ]
    )
    / 112.0
)

# Pillow refuses images over 2 x Image.MAX_IMAGE_PIXELS (~179 M pixels) as decompression bombs;
# bigger ones get status unreadable. Between 89 M and 179 M it only warns: silenced here.


@dataclass(frozen=True)
class AlignParams:
    """Everything that changes an aligned crop (the align stage key hashes all of it)."""

    size: int = 224
    """Side of the square crop in pixels (``--size``)."""
    margin: float = 0.1
    """Border added around the face, as a fraction of the template (align) or of the
    detector's box (box) on each side (``--margin``)."""
    mode: str = "align"
    """``align`` (five-point similarity), ``box`` (square box crop) or ``whole`` (no
    detection: the whole image resized; for pre-cropped datasets) (``--mode``)."""
    on_no_face: str = "skip"
    """``skip`` (row with status no_face, no crop) or ``whole`` (the whole image resized,
    status whole) when the detector finds no face (``--on-no-face``)."""
    all_faces: bool = False
    """One row per detected face instead of the most confident one (``--all-faces``)."""
    image_format: str = "jpg"
    """Crop file format, ``jpg`` or ``png`` (``--image-format``)."""
    jpeg_quality: int = 95
    """JPEG quality 1-100 (``--jpeg-quality``)."""
    min_face_size: int = 20
    """MTCNN's smallest face, in pixels of the image the detector sees (``--min-face-size``)."""
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    """MTCNN's P-, R- and O-net thresholds (``--thresholds``)."""
    min_prob: float = 0.9
    """Faces below this detector probability are dropped (``--min-prob``)."""
    detect_size: int = 1024
    """The detector sees a copy whose longer side is at most this many pixels (boxes and
    landmarks are mapped back to source pixels); 0 = full size (``--detect-size``)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        if not (16 <= int(self.size) <= 2048):
            raise FernoiseError(
                f"expected a crop size between 16 and 2048 pixels, got {self.size}", flag="--size"
            )
        if not (0.0 <= float(self.margin) <= 2.0):
            raise FernoiseError(
                f"expected a margin between 0 and 2, got {self.margin}", flag="--margin"
            )
        if self.mode not in MODES:
            raise FernoiseError(
                f"unknown mode {self.mode!r}; expected one of: {', '.join(MODES)}", flag="--mode"
            )
        if self.on_no_face not in ON_NO_FACE:
            raise FernoiseError(
                f"unknown value {self.on_no_face!r}; expected one of: {', '.join(ON_NO_FACE)}",
                flag="--on-no-face",
            )
        if self.image_format not in IMAGE_FORMATS:
            raise FernoiseError(
                f"unknown image format {self.image_format!r}; expected one of: {', '.join(IMAGE_FORMATS)}",
                flag="--image-format",
            )
        if not (1 <= int(self.jpeg_quality) <= 100):
            raise FernoiseError(
                f"expected a JPEG quality between 1 and 100, got {self.jpeg_quality}",
                flag="--jpeg-quality",
            )
        if not (12 <= int(self.min_face_size) <= 1000):
            raise FernoiseError(
                f"expected a minimum face size between 12 and 1000 pixels, got {self.min_face_size}",
                flag="--min-face-size",
            )
        if len(self.thresholds) != 3 or not all(0.0 < t < 1.0 for t in self.thresholds):
            raise FernoiseError(
                f"expected three thresholds in (0, 1), got {list(self.thresholds)}",
                flag="--thresholds",
            )
        if not (0.0 <= float(self.min_prob) < 1.0):
            raise FernoiseError(
                f"expected a probability in [0, 1), got {self.min_prob}", flag="--min-prob"
            )
        if int(self.detect_size) != 0 and int(self.detect_size) < 64:
            raise FernoiseError(
                f"expected 0 (full size) or at least 64 pixels, got {self.detect_size}",
                flag="--detect-size",
            )

    def asdict(self) -> dict[str, Any]:
        d = asdict(self)
        d["thresholds"] = list(self.thresholds)
        return d

    @property
    def ext(self) -> str:
        return self.image_format


@dataclass
class Face:
    """One aligned face: ``crop`` (PIL RGB, ``size`` x ``size``), ``det_prob``, ``bbox``
    (x1, y1, x2, y2) and ``landmarks`` (x1, y1, ..., x5, y5) in source pixels. All three are
    None for a whole-image crop (``mode="whole"``)."""

    crop: Image.Image
    det_prob: float | None = None
    bbox: tuple[float, ...] | None = None
    landmarks: tuple[float, ...] | None = field(default=None)


# ----------------------------------------------------------------------------- decoding
def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB. 16/32-bit integers are scaled, alpha is composited on white."""
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im)
        a = a.astype(np.float64)
        if mode.startswith("I;16") or a.max(initial=0) > 255:
            a = a / 257.0
        im = Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "L")
    elif mode == "F":
        a = np.asarray(im, dtype=np.float64)
        if a.size and np.nanmax(a) <= 1.0:
            a = a * 255.0
        im = Image.fromarray(np.clip(np.nan_to_num(a) + 0.5, 0, 255).astype(np.uint8), "L")
    if mode == "P" and "transparency" in im.info or mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")


# Decodes of more pixels than this (after JPEG's DCT scaling) run one at a time in the process,
# each reduced before the next starts: four 12000x12000 PNGs (576 MB each decoded) stay
# under ~1.2 GB peak instead of 5.5 GB.
BIG_DECODE_PIXELS = 40_000_000
_BIG_DECODE = threading.BoundedSemaphore(1)
# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose).
_ORIENT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _malloc_trim():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return None


_TRIM = _malloc_trim()


def _give_back_memory() -> None:
    """Return freed heap memory to the OS (glibc). Pillow frees a big decode in 16 MB blocks
    that glibc keeps in each thread's arena: without this, every decoding thread would hold
    the size of the largest image it decoded (measured: 2.2 GB instead of 1.1 GB peak)."""
    if _TRIM is not None:
        _TRIM(0)


@dataclass
class Decoded:
    """An image decoded by :func:`decode_image`: ``image`` (RGB, upright) is the source
    reduced by the integer ``factor`` (source pixel = ``factor`` x image pixel); ``size`` is
    the upright source's ``(width, height)``. ``image`` is None when ``status`` is not ok."""

    image: Image.Image | None
    status: str
    reason: str | None = None
    factor: int = 1
    size: tuple[int, int] | None = None


def reduction_for(k: float) -> int:
    """The integer factor a source may be reduced by before a warp of scale ``k`` (crop pixels
    per source pixel) without losing detail: box-reduce when the warp shrinks it over 2x."""
    return int(1.0 / k / 1.5) if 0 < k < 0.5 else 1


def _reduce(im: Image.Image, r: int) -> Image.Image:
    try:
        return im.reduce(r)
    except ValueError:  # palette, 1-bit, 16-bit: no box reduction in Pillow; go 8-bit RGB first
        return _to_rgb(im).reduce(r)


def decode_image(path: str | os.PathLike, factor=None) -> Decoded:
    """Decode ``path`` reduced by an integer factor, never raising for a bad file.

    ``factor`` is an int or a function ``(width, height) -> int`` of the stored image's size
    (None: full size). JPEGs are decoded at 1/2, 1/4 or 1/8 scale where that does not go
    beyond the factor (``Image.draft``: the full image is never in memory), then box-reduced
    by what remains in whole steps; other formats are decoded and box-reduced
    (``Image.reduce``) before any conversion, one big decode at a time (``BIG_DECODE_PIXELS``).
    ``Decoded.factor`` (at most the one asked, e.g. 2 for 3 on a JPEG) is exact: source
    pixel ``x`` is image pixel ``x / factor``. Statuses and reasons as :func:`open_image`.
    Only a regular file of at most ``MAX_SOURCE_BYTES`` is opened (:mod:`fernoise.safefiles`):
    a FIFO, a device or a bigger file is ``unreadable``, never a hang.
    """
    p = os.fspath(path)
    try:
        why = _not_decodable(p)
        if why is not None:
            return Decoded(None, "unreadable", why)
        return _decode_file(p, factor)
    except UnsafeFile as e:
        return Decoded(None, "unreadable", str(e))
    except PermissionError:
        return Decoded(None, "unreadable", "permission denied")
    except FileNotFoundError:
        return Decoded(None, "unreadable", "file not found")
    except Image.DecompressionBombError as e:
        return Decoded(None, "unreadable", f"image too large to decode safely ({e})")
    except UnidentifiedImageError:
        return Decoded(None, "unreadable", "not an image format Pillow can decode")
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = " ".join(str(e).split()) or e.__class__.__name__
        if "truncated" in msg.lower():
            return Decoded(None, "unreadable", f"truncated image file ({msg})")
        return Decoded(None, "unreadable", f"could not decode: {msg}")
    except MemoryError:
        return Decoded(None, "unreadable", "out of memory while decoding")
    except Exception as e:  # noqa: BLE001 - a bad file gets a row, never a crash
        return Decoded(None, "error", f"{e.__class__.__name__}: {' '.join(str(e).split())}")


def _not_decodable(p: str) -> str | None:
    """Why ``p`` is not opened at all (a broken link, a folder, not a regular file of at most
    ``MAX_SOURCE_BYTES``, an empty file), or None."""
    if os.path.islink(p) and not os.path.exists(p):
        return "broken symbolic link"
    if os.path.isdir(p):
        return "a folder, not a file"
    why = regular_problem(p, MAX_SOURCE_BYTES)  # a FIFO would block open(), a device never end
    if why is not None:
        return why
    if os.path.getsize(p) == 0:
        return "empty file (0 bytes)"
    return None


def _decode_file(p: str, factor) -> Decoded:
    """Decode the regular file ``p`` as :func:`decode_image` says; raises what Pillow raises
    for a bad file."""
    with warnings.catch_warnings(), open_regular(p, MAX_SOURCE_BYTES) as fh:
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(fh) as src:
            if getattr(src, "n_frames", 1) > 1:
                src.seek(0)
            w, h = src.size
            want = max(1, int(factor(w, h) if callable(factor) else factor or 1))
            done = 1
            if want >= 2 and src.format == "JPEG":
                src.draft(src.mode, (max(1, w // want), max(1, h // want)))
                done = max(1, round(w / src.size[0]))
            big = src.size[0] * src.size[1] > BIG_DECODE_PIXELS
            with _BIG_DECODE if big else contextlib.nullcontext():
                try:
                    src.load()
                    # after load: a PNG's getexif() loads; no orientation tag: 0, no transpose
                    orient = _ORIENT.get(src.getexif().get(0x0112, 0))
                    im: Image.Image = src
                    if want // done >= 2:
                        im = _reduce(im, want // done)
                        done *= want // done
                    if orient is not None:
                        im = im.transpose(orient)
                    rgb = _to_rgb(im)  # always a new image
                    del im
                finally:
                    src.close()  # frees the full decode (also a failed one) before the next may start
                    if big:
                        _give_back_memory()
    turned = (
        Image.Transpose.TRANSPOSE,
        Image.Transpose.ROTATE_270,
        Image.Transpose.TRANSVERSE,
        Image.Transpose.ROTATE_90,
    )
    return Decoded(rgb, "ok", None, done, (h, w) if orient in turned else (w, h))


def open_image(path: str | os.PathLike) -> tuple[Image.Image | None, str, str | None]:
    """Decode ``path`` into an RGB image: ``(image, "ok", None)`` or ``(None, status, reason)``.

    Never raises for a bad file: a missing or broken link, an empty, truncated or non-image
    file, no read permission, a FIFO or device (not a regular file), a file over
    ``MAX_SOURCE_BYTES`` or an image over Pillow's decompression-bomb limit give
    ``unreadable``; anything unexpected gives ``error``. EXIF orientation is applied; an
    animated image gives its first frame. Full size (:func:`decode_image` reduces).
    """
    d = decode_image(path)
    return d.image, d.status, d.reason


# ----------------------------------------------------------------------------- warping
def template_points(params: AlignParams) -> np.ndarray:
    """The five target points ``(5, 2)`` in crop pixels for ``params.size`` and ``margin``."""
    return (0.5 + (_TEMPLATE - 0.5) / (1.0 + 2.0 * params.margin)) * params.size


def similarity(landmarks: np.ndarray, params: AlignParams) -> tuple[float, np.ndarray, np.ndarray]:
    """``(scale k, rotation R (2, 2), translation t (2,))`` with ``crop = k R src + t``.

    R levels the eyes; k and t are the least-squares fit of the five points given R.
    """
    p = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    q = template_points(params)
    d = p[1] - p[0]
    theta = math.atan2(d[1], d[0])
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, s], [-s, c]])
    pr = p @ rot.T
    pc, qc = pr - pr.mean(0), q - q.mean(0)
    denom = float((pc**2).sum())
    k = float((pc * qc).sum() / denom) if denom > 1e-9 else 1.0
    if not math.isfinite(k) or k <= 1e-6:
        k = 1.0
    t = q.mean(0) - k * pr.mean(0)
    return k, rot, t


def _prereduce(img: Image.Image, k: float) -> tuple[Image.Image, float]:
    """Box-reduce ``img`` by an integer factor when the warp shrinks it over 2x (less aliasing)."""
    r = int(1.0 / k / 1.5) if k < 0.5 else 1
    if r >= 2:
        return img.reduce(r), float(r)
    return img, 1.0


def warp_align(img: Image.Image, landmarks: np.ndarray, params: AlignParams) -> Image.Image:
    """The aligned ``size`` x ``size`` crop of the face with these five landmarks."""
    k, rot, t = similarity(landmarks, params)
    src, r = _prereduce(img, k)
    k_eff = k * r  # crop = k_eff * R * (src_reduced) + t, as src = r * src_reduced
    a = rot.T / k_eff  # inverse: src_reduced = R^T (crop - t) / k_eff
    off = -a @ t
    coeffs = (a[0, 0], a[0, 1], off[0], a[1, 0], a[1, 1], off[1])
    return src.transform(
        (params.size, params.size),
        Image.Transform.AFFINE,
        coeffs,
        resample=Image.Resampling.BILINEAR,
        fillcolor=(0, 0, 0),
    )


def crop_box(img: Image.Image, box: Sequence[float], params: AlignParams) -> Image.Image:
    """A square around ``box`` (x1, y1, x2, y2) enlarged by ``margin`` per side, resized."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1) * (1.0 + 2.0 * params.margin)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left, top, right, bottom = (
        int(round(v)) for v in (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    )
    region = (left, top, right, bottom) if right > left and bottom > top else (0, 0, 1, 1)
    return img.crop(region).resize(
        (params.size, params.size), Image.Resampling.BILINEAR, reducing_gap=2.0
    )


def crop_whole(img: Image.Image, params: AlignParams) -> Image.Image:
    """The whole image resized to ``size`` x ``size`` (no detection)."""
    if img.size == (params.size, params.size):
        return img.copy()
    return img.resize((params.size, params.size), Image.Resampling.BILINEAR, reducing_gap=2.0)


# ----------------------------------------------------------------------------- detection
def detector_input(img: Image.Image, params: AlignParams) -> tuple[np.ndarray, float]:
    """The ``(H, W, 3)`` uint8 copy the detector sees and the factor back to source pixels."""
    w, h = img.size
    limit = int(params.detect_size)
    if limit and max(w, h) > limit:
        s = limit / max(w, h)
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        small = img.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=2.0)
        return np.asarray(small, dtype=np.uint8), w / nw
    return np.asarray(img, dtype=np.uint8), 1.0


def detect_images(
    images: Sequence[Image.Image], params: AlignParams, detector: Detector, arrays=None
) -> list[Detection]:
    """Faces of each image in source pixels, ``det_prob >= min_prob``, most confident first."""
    if arrays is None:
        arrays = [detector_input(im, params) for im in images]
    dets = detector.detect(
        [a for a, _ in arrays], min_face_size=params.min_face_size, thresholds=params.thresholds
    )
    out = []
    for d, (_, back) in zip(dets, arrays, strict=True):
        keep = d.probs >= params.min_prob
        d = Detection(d.boxes[keep], d.probs[keep], d.landmarks[keep]).scaled(back)
        # rounded so that float noise of batch composition never reaches a crop or a manifest
        out.append(Detection(np.round(d.boxes, 3), np.round(d.probs, 6), np.round(d.landmarks, 3)))
    return out


def face_scale(det: Detection, i: int, params: AlignParams) -> float:
    """Crop pixels per source pixel of face ``i`` (its warp's scale)."""
    if params.mode == "align":
        return similarity(det.landmarks[i], params)[0]
    x1, y1, x2, y2 = (float(v) for v in det.boxes[i])
    return params.size / max(max(x2 - x1, y2 - y1) * (1.0 + 2.0 * params.margin), 1e-6)


def faces_from(
    img: Image.Image,
    det: Detection,
    params: AlignParams,
    max_faces: int | None = None,
    *,
    factor: int = 1,
    finer=None,
) -> list[Face]:
    """Crops of the faces of ``det`` (source pixels; at most ``max_faces``) from ``img``.

    ``img`` may be the source reduced by ``factor``; a face that needs more detail than that
    (small in a big photo) is cropped from ``finer(f)``, a ``(image, factor)`` decode with a
    factor of at most ``f``. Without ``finer`` every crop comes from ``img``.
    """
    faces = []
    n = len(det) if max_faces is None else min(len(det), max_faces)
    for i in range(n):
        lm = det.landmarks[i]
        src, f = img, factor
        if factor > 1 and finer is not None and reduction_for(face_scale(det, i, params)) < factor:
            src, f = finer(reduction_for(face_scale(det, i, params)))
        crop = (
            warp_align(src, lm / f, params)
            if params.mode == "align"
            else crop_box(src, det.boxes[i] / f, params)
        )
        faces.append(
            Face(
                crop=crop,
                det_prob=float(det.probs[i]),
                bbox=tuple(float(v) for v in det.boxes[i]),
                landmarks=tuple(float(v) for v in lm.reshape(-1)),
            )
        )
    return faces


def align_images(
    images: list[Image.Image], params: AlignParams, detector: Detector | None = None
) -> list[list[Face]]:
    """The faces of each RGB image, most confident first (``[]`` where there is none).

    With ``params.mode == "whole"`` no detector runs: each image gives one :class:`Face`
    whose crop is the whole image resized (``det_prob``, ``bbox``, ``landmarks`` None).
    ``on_no_face`` and ``all_faces`` are the stage's business: every detected face is returned.
    """
    if params.mode == "whole":
        return [[Face(crop=crop_whole(im, params))] for im in images]
    if not images:
        return []
    detector = detector if detector is not None else make_detector()
    images = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
    dets = detect_images(images, params, detector)
    return [faces_from(im, d, params) for im, d in zip(images, dets, strict=True)]
