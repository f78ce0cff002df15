"""synthetic-faces: procedurally drawn cartoon faces with the seven basic expressions.

A small data set the project may redistribute (it is code, not images), so that a fresh clone
can run the whole pipeline (``fernoise demo``). **These are drawings, not photos of people**:
figures on them say nothing about real facial expression recognition.

Each image is drawn with PIL from its own ``numpy.random.default_rng((seed, split, class, i))``:

- **identity** (one of ``identities`` per seed): face shape, skin tone, eye spacing and colour,
  brow thickness, mouth width, nose, hair style and colour, glasses. Train and test draw from
  disjoint identities (subject-independent, like the posed-data protocols);
- **expression** (the class): brows (height, inner-end tilt, arch), eye opening, mouth corners,
  opening, width, teeth, asymmetry and nose wrinkles, each moved from the neutral face by an
  intensity drawn in [0.6, 1] plus per-parameter jitter, so weak expressions look close to
  neutral and fear/surprise, anger/disgust, sad/neutral overlap;
- **capture**: position, scale, in-plane rotation, horizontal flip, background, brightness,
  contrast, blur and pixel noise.

:func:`draw_face` returns one ``(size, size, 3)`` uint8 image; :func:`write_dataset` writes a
class-folder tree ``<root>/<split>/<class>/<class>-<i>.png`` that ``fernoise align`` reads.
The same arguments give byte-identical files on any machine (same numpy and Pillow).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from fernoise.cache import atomic_path
from fernoise.errors import FernoiseError
from fernoise.labels import LABEL_SPACES

VERSION = 1
"""Bump when a change to the drawing changes the pixels (it is part of the demo's cache key)."""
NAME = "synthetic-faces"
"""The data set's name, as written in manifest metadata and printed in every table."""
CLASSES = LABEL_SPACES["basic7"]
"""neutral, happy, sad, surprise, fear, disgust, anger (the canonical basic7 order)."""
SPLITS = ("train", "test")
SUPERSAMPLE = 2
"""Faces are drawn this many times larger, then downsampled (anti-aliasing)."""

# Expression targets: how far each expression moves each face parameter from neutral (0).
#   brow_raise  (+ up, in eye heights)   brow_tilt  (+ inner ends up, - inner ends down: a V)
#   brow_arch   (+ rounded)              eye_open   (multiplier - 1)
#   smile       (+ corners up, - down)   mouth_open (0..1, of the face height / 6)
#   mouth_width (multiplier - 1)         teeth      (0..1 chance the teeth show)
#   sneer       (one corner and the upper lip raised)   wrinkle (nose wrinkle lines)
EXPRESSIONS: dict[str, dict[str, float]] = {
    "neutral": {},
    "happy": {
        "smile": 1.0,
        "eye_open": -0.3,
        "mouth_width": 0.25,
        "mouth_open": 0.25,
        "teeth": 0.7,
        "brow_raise": 0.15,
    },
    "sad": {
        "smile": -0.8,
        "brow_tilt": 0.9,
        "brow_raise": 0.1,
        "eye_open": -0.2,
        "mouth_width": -0.1,
    },
    "surprise": {
        "brow_raise": 1.0,
        "brow_arch": 1.0,
        "eye_open": 0.6,
        "mouth_open": 1.0,
        "mouth_width": -0.4,
    },
    "fear": {
        "brow_raise": 0.7,
        "brow_tilt": 0.7,
        "eye_open": 0.55,
        "mouth_open": 0.45,
        "mouth_width": 0.25,
        "smile": -0.35,
        "teeth": 0.8,
    },
    "disgust": {
        "sneer": 1.0,
        "wrinkle": 1.0,
        "brow_raise": -0.4,
        "brow_tilt": -0.35,
        "eye_open": -0.35,
        "smile": -0.3,
        "mouth_open": 0.1,
    },
    "anger": {
        "brow_raise": -0.55,
        "brow_tilt": -1.0,
        "eye_open": -0.25,
        "smile": -0.2,
        "mouth_width": -0.2,
        "teeth": 0.5,
        "mouth_open": 0.12,
    },
}
PARAMS = (
    "brow_raise",
    "brow_tilt",
    "brow_arch",
    "eye_open",
    "smile",
    "mouth_open",
    "mouth_width",
    "teeth",
    "sneer",
    "wrinkle",
)

SKIN = np.array(
    [
        [255, 224, 196],
        [241, 194, 160],
        [224, 172, 130],
        [198, 134, 90],
        [160, 104, 66],
        [120, 76, 46],
        [88, 56, 36],
    ],
    dtype=float,
)
HAIR = np.array(
    [
        [20, 16, 14],
        [60, 40, 26],
        [110, 72, 40],
        [170, 120, 60],
        [220, 190, 130],
        [140, 140, 140],
        [150, 50, 30],
    ],
    dtype=float,
)
IRIS = np.array(
    [[70, 45, 25], [40, 90, 160], [60, 120, 70], [90, 90, 90], [30, 25, 20]], dtype=float
)


@dataclass(frozen=True)
class SyntheticParams:
    """How many faces of each class to draw, and how."""

    train_per_class: int = 48
    """Training images per class."""
    test_per_class: int = 16
    """Test images per class."""
    image_size: int = 96
    """Side of the written images in pixels."""
    identities: int = 24
    """Identities drawn from the seed; the last quarter (at least 1) are the test identities."""
    seed: int = 0
    """Seed of every random choice (identities, expressions, capture)."""

    def __post_init__(self) -> None:
        for name, flag, lo in (
            ("train_per_class", "--train-per-class", 1),
            ("test_per_class", "--test-per-class", 0),
        ):
            if getattr(self, name) < lo:
                raise FernoiseError(
                    f"expected at least {lo} images per class, got {getattr(self, name)}", flag=flag
                )
        if not 32 <= self.image_size <= 512:
            raise FernoiseError(
                f"expected an image size of 32..512 px, got {self.image_size}", flag="--image-size"
            )
        if self.identities < 2:
            raise FernoiseError(
                f"expected at least 2 identities (train and test), got {self.identities}",
                flag="--identities",
            )

    def asdict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def test_identities(self) -> range:
        n_test = max(1, self.identities // 4)
        return range(self.identities - n_test, self.identities)

    @property
    def train_identities(self) -> range:
        return range(0, self.test_identities.start)


# ----------------------------------------------------------------------------- identities
def identity(seed: int, index: int) -> dict[str, Any]:
    """The fixed traits of identity ``index`` of ``seed`` (a dict of floats, ints and colours)."""
    rng = np.random.default_rng((seed, 7919, index))
    skin = SKIN[rng.integers(len(SKIN))] * rng.uniform(0.93, 1.05, 3)
    return {
        "face_w": rng.uniform(0.34, 0.39),  # half-width, of the canvas
        "face_h": rng.uniform(0.41, 0.46),  # half-height
        "jaw": rng.uniform(0.0, 1.0),  # 0 round, 1 square-ish chin
        "skin": np.clip(skin, 0, 255),
        "eye_dx": rng.uniform(0.34, 0.44),  # of face_w
        "eye_y": rng.uniform(-0.16, -0.06),  # of face_h, from the centre
        "eye_size": rng.uniform(1.0, 1.25),
        "iris": IRIS[rng.integers(len(IRIS))],
        "brow_w": rng.uniform(4.5, 6.5),  # line width, per 100 px of canvas
        "brow_len": rng.uniform(0.8, 1.15),
        "mouth_w": rng.uniform(0.44, 0.54),  # half-width, of face_w
        "mouth_y": rng.uniform(0.40, 0.50),  # of face_h
        "lip": np.clip(skin * np.array([0.45, 0.2, 0.2]) + rng.uniform(0, 25, 3), 0, 255),
        "nose": int(rng.integers(3)),
        "nose_len": rng.uniform(0.16, 0.26),
        "hair_style": int(rng.integers(4)),  # 0 none, 1 cap, 2 long, 3 fringe
        "hair": HAIR[rng.integers(len(HAIR))],
        "glasses": bool(rng.random() < 0.15),
        "beard": bool(rng.random() < 0.1),
    }


def expression_params(name: str, rng: np.random.Generator) -> dict[str, float]:
    """Face parameters of one image of expression ``name``: the target times an intensity in
    [0.6, 1], plus jitter (so weak expressions approach neutral and neighbours overlap)."""
    if name not in EXPRESSIONS:
        raise FernoiseError(
            f"unknown expression {name!r}; expected one of: {', '.join(EXPRESSIONS)}"
        )
    target = EXPRESSIONS[name]
    t = rng.uniform(0.6, 1.0)
    out = {}
    for p in PARAMS:
        out[p] = target.get(p, 0.0) * t * rng.uniform(0.8, 1.2) + rng.normal(0.0, 0.08)
    out["teeth"] = float(rng.random() < target.get("teeth", 0.0))
    out["mouth_open"] = max(0.0, out["mouth_open"])
    out["wrinkle"] = max(0.0, out["wrinkle"])
    out["sneer"] = max(0.0, out["sneer"])
    out["brow_arch"] = max(0.0, out["brow_arch"])
    return out


# ----------------------------------------------------------------------------- drawing
def _col(c: np.ndarray, f: float = 1.0) -> tuple[int, int, int]:
    v = np.clip(np.asarray(c, dtype=float) * f, 0, 255)
    return int(v[0]), int(v[1]), int(v[2])


def _bezier(p0, p1, p2, n: int = 24) -> list[tuple[float, float]]:
    """Points of the quadratic Bezier curve p0 -> p2 with control point p1."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    pts = (1 - t) ** 2 * np.asarray(p0) + 2 * (1 - t) * t * np.asarray(p1) + t**2 * np.asarray(p2)
    return [(float(x), float(y)) for x, y in pts]


def _face_polygon(cx, cy, w, h, jaw, n: int = 72) -> list[tuple[float, float]]:
    """The head outline: an ellipse whose lower half widens towards a square jaw."""
    pts = []
    for a in np.linspace(0, 2 * math.pi, n, endpoint=False):
        x, y = math.cos(a), math.sin(a)
        if y > 0:  # lower half: a superellipse exponent from 2 (round) to 3.2 (square)
            e = 2.0 + 1.2 * jaw
            x = math.copysign(abs(x) ** (2 / e), x)
            y = abs(y) ** (2 / e)
        pts.append((cx + w * x, cy + h * y))
    return pts


def draw_face(
    expression: str, rng: np.random.Generator, ident: dict[str, Any], size: int = 96
) -> np.ndarray:
    """One drawn face: ``(size, size, 3)`` uint8, the expression's cues on the identity's face,
    captured at a random position, scale, rotation and lighting from ``rng``."""
    e = expression_params(expression, rng)
    S = size * SUPERSAMPLE
    canvas = _background(rng, S)
    layer = Image.new("RGBA", (S, S), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    g = _Geometry.of(ident, e, S)
    _draw_head(d, ident, g)
    _draw_eyes(d, ident, e, g)
    _draw_brows(d, ident, e, g)
    if ident["glasses"]:
        _draw_glasses(d, g)
    _draw_nose(d, ident, e, g)
    _draw_mouth(d, ident, e, g, rng)
    return _capture(canvas, layer, rng, size)


@dataclass(frozen=True)
class _Geometry:
    """Where the face is on an ``S`` x ``S`` canvas: centre, half-width and half-height of the
    head, the unit ``u`` (1% of the canvas), and the eyes' height, offset and half-sizes."""

    cx: float
    cy: float
    fw: float
    fh: float
    u: float
    eye_y: float
    eye_dx: float
    ew: float
    eh: float

    @staticmethod
    def of(ident: dict[str, Any], e: dict[str, float], S: int) -> _Geometry:
        cx, cy = S / 2, S * 0.52
        fw, fh = ident["face_w"] * S, ident["face_h"] * S
        return _Geometry(
            cx=cx,
            cy=cy,
            fw=fw,
            fh=fh,
            u=S / 100.0,
            eye_y=cy + ident["eye_y"] * fh,
            eye_dx=ident["eye_dx"] * fw,
            ew=0.2 * fw * ident["eye_size"],
            eh=0.1 * fh * ident["eye_size"] * max(0.25, 1.0 + e["eye_open"]),
        )


def _background(rng: np.random.Generator, S: int) -> Image.Image:
    """Two random colours blended top to bottom, plus a few soft blobs."""
    u = S / 100.0
    bg_a, bg_b = rng.uniform(30, 230, 3), rng.uniform(30, 230, 3)
    ramp = np.linspace(0, 1, S)[:, None, None]
    bg = (bg_a * (1 - ramp) + bg_b * ramp) * np.ones((1, S, 1))
    canvas = Image.fromarray(bg.astype(np.uint8), "RGB")
    d = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(0, 2))):
        x, y, r = rng.uniform(0, S), rng.uniform(0, S), rng.uniform(8, 25) * u
        d.ellipse([x - r, y - r, x + r, y + r], fill=_col(rng.uniform(30, 230, 3)))
    return canvas


def _draw_head(d: ImageDraw.ImageDraw, ident: dict[str, Any], g: _Geometry) -> None:
    """Hair behind the head (long style), then ears, head, beard and hair on top."""
    cx, cy, fw, fh = g.cx, g.cy, g.fw, g.fh
    skin = ident["skin"]
    hair = ident["hair"]
    if ident["hair_style"] == 2:
        d.ellipse([cx - fw * 1.18, cy - fh * 1.12, cx + fw * 1.18, cy + fh * 0.75], fill=_col(hair))
    for sx in (-1, 1):
        ex = cx + sx * fw * 0.98
        d.ellipse(
            [ex - fw * 0.12, cy - fh * 0.12, ex + fw * 0.12, cy + fh * 0.16], fill=_col(skin, 0.92)
        )
    d.polygon(_face_polygon(cx, cy, fw, fh, ident["jaw"]), fill=_col(skin))
    if ident["beard"]:
        d.chord(
            [cx - fw * 0.95, cy - fh * 0.2, cx + fw * 0.95, cy + fh * 1.02],
            35,
            145,
            fill=_col(hair, 0.9),
        )
    if ident["hair_style"] in (1, 2, 3):
        d.chord(
            [cx - fw * 1.04, cy - fh * 1.1, cx + fw * 1.04, cy + fh * 0.06],
            180,
            360,
            fill=_col(hair),
        )
        if ident["hair_style"] == 3:  # fringe down to the forehead
            d.rectangle(
                [cx - fw * 0.8, cy - fh * 0.8, cx + fw * 0.8, cy - fh * 0.6], fill=_col(hair)
            )


def _draw_eyes(
    d: ImageDraw.ImageDraw, ident: dict[str, Any], e: dict[str, float], g: _Geometry
) -> None:
    """Eyes with iris and pupil; a lowered upper lid where the expression narrows them."""
    skin = ident["skin"]
    eye_y, ew, eh = g.eye_y, g.ew, g.eh
    for sx in (-1, 1):
        ex = g.cx + sx * g.eye_dx
        d.ellipse(
            [ex - ew, eye_y - eh, ex + ew, eye_y + eh],
            fill=(250, 250, 250),
            outline=_col(skin, 0.45),
            width=max(1, int(0.6 * g.u)),
        )
        r = min(eh, ew * 0.55)
        d.ellipse([ex - r, eye_y - r, ex + r, eye_y + r], fill=_col(ident["iris"]))
        rp = r * 0.45
        d.ellipse([ex - rp, eye_y - rp, ex + rp, eye_y + rp], fill=(10, 10, 10))
        if e["eye_open"] < -0.15:  # a lowered upper lid: skin over the top of the eye
            lid = eye_y - eh + (-e["eye_open"]) * 1.2 * eh
            d.rectangle([ex - ew * 1.05, eye_y - eh * 1.1, ex + ew * 1.05, lid], fill=_col(skin))


def _draw_brows(
    d: ImageDraw.ImageDraw, ident: dict[str, Any], e: dict[str, float], g: _Geometry
) -> None:
    """Brows: outer end, inner end and an arch; inner ends tilt up (sad, fear) or down (anger)."""
    fh = g.fh
    bw = max(1, int(ident["brow_w"] * g.u))
    base = g.eye_y - g.eh - 0.09 * fh - e["brow_raise"] * 0.10 * fh
    blen = 0.22 * g.fw * ident["brow_len"]
    for sx in (-1, 1):
        ex = g.cx + sx * g.eye_dx
        outer = (ex + sx * blen, base + 0.01 * fh)
        inner = (ex - sx * blen * 0.9, base - e["brow_tilt"] * 0.1 * fh)
        mid = (
            (outer[0] + inner[0]) / 2,
            (outer[1] + inner[1]) / 2 - (0.02 + e["brow_arch"] * 0.06) * fh,
        )
        d.line(
            _bezier(outer, mid, inner, 12),
            fill=_col(ident["hair"] * 0.35 + 10),
            width=bw,
            joint="curve",
        )


def _draw_glasses(d: ImageDraw.ImageDraw, g: _Geometry) -> None:
    """Round rims around the eyes and a bridge between them."""
    cx, eye_y, eye_dx, ew = g.cx, g.eye_y, g.eye_dx, g.ew
    gw = max(1, int(0.9 * g.u))
    for sx in (-1, 1):
        ex = cx + sx * eye_dx
        d.ellipse(
            [ex - ew * 1.5, eye_y - ew * 1.1, ex + ew * 1.5, eye_y + ew * 1.1],
            outline=(30, 30, 30),
            width=gw,
        )
    d.line(
        [(cx - eye_dx + ew * 1.5, eye_y), (cx + eye_dx - ew * 1.5, eye_y)],
        fill=(30, 30, 30),
        width=gw,
    )


def _draw_nose(
    d: ImageDraw.ImageDraw, ident: dict[str, Any], e: dict[str, float], g: _Geometry
) -> None:
    """The identity's nose (a line, an arc or nostrils), and the wrinkles of disgust across
    its bridge."""
    cx, fw, fh, eye_y, u = g.cx, g.fw, g.fh, g.eye_y, g.u
    skin = ident["skin"]
    ny0, ny1 = eye_y + 0.05 * fh, eye_y + ident["nose_len"] * fh + 0.1 * fh
    nw = max(1, int(0.8 * u))
    if ident["nose"] == 0:
        d.line(
            [(cx, ny0), (cx - 0.06 * fw, ny1), (cx + 0.04 * fw, ny1)],
            fill=_col(skin, 0.6),
            width=nw,
        )
    elif ident["nose"] == 1:
        d.arc(
            [cx - 0.09 * fw, ny1 - 0.06 * fh, cx + 0.09 * fw, ny1 + 0.03 * fh],
            20,
            160,
            fill=_col(skin, 0.55),
            width=nw,
        )
    else:
        for sx in (-1, 1):
            d.ellipse(
                [
                    cx + sx * 0.05 * fw - 0.02 * fw,
                    ny1 - 0.01 * fh,
                    cx + sx * 0.05 * fw + 0.02 * fw,
                    ny1 + 0.015 * fh,
                ],
                fill=_col(skin, 0.5),
            )
    for j in range(int(round(min(3.0, e["wrinkle"] * 3.2)))):
        y = eye_y + (0.03 + 0.035 * j) * fh
        d.line(
            _bezier((cx - 0.1 * fw, y), (cx, y - 0.02 * fh), (cx + 0.1 * fw, y)),
            fill=_col(skin, 0.6),
            width=max(1, int(0.7 * u)),
        )


def _draw_mouth(
    d: ImageDraw.ImageDraw,
    ident: dict[str, Any],
    e: dict[str, float],
    g: _Geometry,
    rng: np.random.Generator,
) -> None:
    """Lips as two curves between the corners; an opening with optional teeth."""
    cx, fw, fh, u = g.cx, g.fw, g.fh, g.u
    my = g.cy + ident["mouth_y"] * fh
    mw = ident["mouth_w"] * fw * max(0.4, 1.0 + e["mouth_width"])
    lift = e["smile"] * 0.14 * fh  # corners up for a smile
    sneer = e["sneer"] * 0.07 * fh
    side = 1 if rng.random() < 0.5 else -1  # which corner the sneer lifts
    left = (cx - mw, my - lift - (sneer if side < 0 else 0))
    right = (cx + mw, my - lift - (sneer if side > 0 else 0))
    gap = e["mouth_open"] * fh / 4.5
    # the sneer of disgust pulls the upper lip up on one side: an asymmetric opening
    upper_c = (cx + side * mw * 0.35 * min(1.0, e["sneer"]), my - gap - sneer * 1.6 - lift * 0.15)
    lower_c = (cx, my + gap * 1.6 + lift * 0.9)
    upper = _bezier(left, upper_c, right)
    lower = _bezier(right, lower_c, left)
    lw = max(1, int(4.5 * u))
    if gap + sneer * 0.5 > 0.012 * fh:
        d.polygon(upper + lower, fill=(60, 20, 25))
        if e["teeth"] > 0.5 or sneer > 0.02 * fh:  # a band of teeth under the upper lip
            lx = [x for x, _ in reversed(lower)]
            ly = [y for _, y in reversed(lower)]
            th = 0.07 * fh
            bottom = [(x, float(min(y + th, np.interp(x, lx, ly)))) for x, y in upper]
            d.polygon(upper + bottom[::-1], fill=(240, 238, 230))
        d.line(
            upper, fill=_col(ident["lip"]), width=max(1, lw // 2), joint="curve"
        )  # thin: the teeth show
        d.line(lower, fill=_col(ident["lip"]), width=max(1, lw // 2), joint="curve")
    else:
        d.line(upper, fill=_col(ident["lip"]), width=lw + max(1, int(0.5 * u)), joint="curve")


def _capture(
    canvas: Image.Image, layer: Image.Image, rng: np.random.Generator, size: int
) -> np.ndarray:
    """The face layer scaled, rotated and shifted onto the background, maybe mirrored and
    blurred, resized to ``size``, with random contrast, gain, bias and sensor noise."""
    S = canvas.width
    scale = rng.uniform(1.18, 1.3)  # a tight crop, as aligned faces are
    angle = rng.uniform(-6, 6)
    shift = rng.uniform(-0.02, 0.02, 2) * S  # train adds its own shifts
    layer = layer.resize((max(1, int(S * scale)), max(1, int(S * scale))), Image.Resampling.BICUBIC)
    layer = layer.rotate(angle, resample=Image.Resampling.BICUBIC, expand=False)
    ox = int((S - layer.width) / 2 + shift[0])
    oy = int((S - layer.height) / 2 + shift[1])
    canvas.paste(layer, (ox, oy), layer)
    if rng.random() < 0.5:
        canvas = canvas.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    img = canvas.resize((size, size), Image.Resampling.LANCZOS)
    if rng.random() < 0.2:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    x: np.ndarray = np.asarray(img, dtype=np.float32)  # float64 once the noise is added
    gain, bias = rng.uniform(0.7, 1.25), rng.uniform(-25, 25)
    x = (x - 128) * rng.uniform(0.75, 1.15) + 128  # contrast
    x = x * gain + bias + rng.normal(0, rng.uniform(0, 5), x.shape)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- the data set
def plan(params: SyntheticParams) -> list[tuple[str, str, int, int]]:
    """``(split, class, i, identity)`` of every image, in writing order."""
    out = []
    for s, split in enumerate(SPLITS):
        n = params.train_per_class if split == "train" else params.test_per_class
        ids = params.train_identities if split == "train" else params.test_identities
        for c, name in enumerate(CLASSES):
            # every identity shows every expression about equally often; which one is seeded
            order = np.random.default_rng((params.seed, s, c, 104729)).permutation(len(ids))
            for i in range(n):
                out.append((split, name, i, ids[int(order[i % len(ids)])]))
    return out


def image_path(split: str, name: str, i: int) -> str:
    """The relative path of an image in the class-folder tree."""
    return f"{split}/{name}/{name}-{i:04d}.png"


def render(params: SyntheticParams, split: str, name: str, i: int, ident_index: int) -> np.ndarray:
    """The pixels of one image of the data set (its own generator: order does not matter)."""
    s, c = SPLITS.index(split), CLASSES.index(name)
    rng = np.random.default_rng((params.seed, s, c, i))
    return draw_face(name, rng, identity(params.seed, ident_index), params.image_size)


def write_dataset(
    root: str | os.PathLike,
    params: SyntheticParams = SyntheticParams(),
    *,
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Write ``root/<split>/<class>/<class>-<i>.png`` for every planned image (atomic writes).

    Returns the paths written, in :func:`plan` order. Files are PNG without metadata, so
    the bytes depend only on the pixels.
    """
    root = Path(root)
    items = plan(params)
    written = []
    for k, (split, name, i, ident) in enumerate(items):
        path = root / image_path(split, name, i)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Image.fromarray(render(params, split, name, i, ident)).save(
                tmp, format="PNG", optimize=False
            )
        written.append(path)
        if progress:
            progress(k + 1, len(items))
    return written
