"""dlib's own descriptors of dlib's own face chips: the fixture that proves the port
(``fernoise.backbones.dlib_resnet29``) computes dlib's network (issue 21, item 4).

Two steps, in two environments (dlib is never a fernoise dependency):

1. ``make``, in a scratch venv that has dlib (``python3 -m venv /work/scratch/dlibvenv &&
   /work/scratch/dlibvenv/bin/pip install dlib-bin face-recognition-models numpy pillow``)::

       /work/scratch/dlibvenv/bin/python bench/dlib_fixture.py make \\
           --wild ../shared/data/wild --chips /work/scratch/dlib_chips \\
           --out tests/fixtures/dlib_resnet29_descriptors.json

   For every photo of ``--wild`` (decoded with Pillow, converted to RGB), dlib's HOG face
   detector (``get_frontal_face_detector``, upsampled once) finds the faces, the 5-point shape
   predictor of ``face-recognition-models`` places the landmarks, ``get_face_chip(img, shape,
   size=150, padding=0.25)`` cuts dlib's 150x150 chip, and
   ``face_recognition_model_v1(...).compute_face_descriptor(chip)`` (num_jitters default)
   computes dlib's 128-D descriptor. The chips are written as PNG under ``--chips`` (outside
   the repository: they are cut from third-party photos, see the fixture's ``chips_note``);
   the JSON keeps, per chip, the photo (name + sha1), the detector box, the 5 landmarks,
   dlib's chip placement (``rect``/``angle``) and the descriptor.

2. ``compare``, in the project venv (torch)::

       PYTHONPATH=. OMP_NUM_THREADS=1 /work/main/.venv/bin/python bench/dlib_fixture.py compare \\
           --faceapi ../shared/data/faceapi --wild ../shared/data/wild \\
           --chips /work/scratch/dlib_chips --fixture tests/fixtures/dlib_resnet29_descriptors.json

   runs the port on dlib's chips (the PNGs) and on the chips rebuilt without dlib
   (:func:`rebuild_chip`, what CI does), and prints the cosine min/median/max against dlib's
   descriptors, the Pearson correlation of the pairwise distances, and the pairs below dlib's
   0.6 same-person threshold in each.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

CHIP_SIZE = 150
CHIP_PADDING = 0.25
UPSAMPLE = 1

# Who is who, where known, by chip id ("<photo stem>#<face index in reading order>"): labelled
# by eye from the chips (not by dlib). bald_guys.jpg is dlib's face-clustering
# collage of four actors, six faces each. Faces not listed are unnamed; faces in one group
# photo (not the collage) are different people.
IDENTITIES: dict[str, str] = {
    **{f"bald_guys#{i}": "statham" for i in (0, 4, 7, 10, 11, 14)},
    **{f"bald_guys#{i}": "diesel" for i in (1, 3, 5, 6, 8, 20)},
    **{f"bald_guys#{i}": "johnson" for i in (2, 9, 12, 21, 22, 23)},
    **{f"bald_guys#{i}": "willis" for i in (13, 15, 16, 17, 18, 19)},
    **{
        f"{s}#0": "obama"
        for s in (
            "obama",
            "obama_small",
            "obama-240p",
            "obama_partial_face",
            "obama_partial_face2",
            "32bit",
        )
    },
    "obama_and_biden#0": "obama",
    "obama_and_biden#1": "biden",
    "obama_and_biden#2": "child",
    "two_people#0": "obama",
    "two_people#1": "biden",
    "biden#0": "biden",
}
COLLAGES = {"bald_guys.jpg"}  # one person may appear several times


def sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_rgb(path: Path) -> np.ndarray:
    """The photo as HxWx3 uint8 RGB, decoded by Pillow (alpha dropped), in both steps."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def photos(wild: Path) -> list[Path]:
    return sorted(p for p in wild.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})


def dump(fixture: dict) -> str:
    """JSON with one line per chip (readable diffs, ~140 kB for 91 chips)."""
    head = {k: v for k, v in fixture.items() if k != "chips"}
    text = json.dumps(head, indent=1)[:-2] + ',\n "chips": [\n'
    text += ",\n".join("  " + json.dumps(c, separators=(",", ":")) for c in fixture["chips"])
    return text + "\n ]\n}\n"


# --------------------------------------------------------------------------------------------
# make (scratch venv, dlib)


def make(args: argparse.Namespace) -> int:
    from importlib import metadata

    import dlib
    import face_recognition_models as frm
    from PIL import Image

    wild = Path(args.wild)
    chips_dir = Path(args.chips)
    chips_dir.mkdir(parents=True, exist_ok=True)
    rec_path = Path(frm.face_recognition_model_location())
    sp_path = Path(frm.pose_predictor_five_point_model_location())
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(sp_path))
    net = dlib.face_recognition_model_v1(str(rec_path))

    chips = []
    for photo in photos(wild):
        img = load_rgb(photo)
        dets = detector(img, UPSAMPLE)
        # reading order: top to bottom, then left to right (stable ids across runs)
        dets = sorted(dets, key=lambda r: (r.top(), r.left()))
        for k, box in enumerate(dets):
            shape = predictor(img, box)
            details = dlib.get_face_chip_details(shape, CHIP_SIZE, CHIP_PADDING)
            chip = dlib.get_face_chip(img, shape, size=CHIP_SIZE, padding=CHIP_PADDING)
            desc = np.asarray(net.compute_face_descriptor(chip), dtype=np.float64)
            cid = f"{photo.stem}#{k}"
            png = chips_dir / f"{photo.stem}__{k}.png"
            Image.fromarray(chip).save(png)
            r = details.rect
            chips.append(
                {
                    "id": cid,
                    "file": photo.name,
                    "file_sha1": sha1(photo),
                    "face": k,
                    "identity": IDENTITIES.get(cid),
                    "box_ltrb": [box.left(), box.top(), box.right(), box.bottom()],
                    "landmarks5": [[p.x, p.y] for p in shape.parts()],
                    "chip_rect_ltrb": [r.left(), r.top(), r.right(), r.bottom()],
                    "chip_angle": details.angle,
                    "chip_sha256": hashlib.sha256(np.ascontiguousarray(chip).tobytes()).hexdigest(),
                    "descriptor": [float(f"{v:.9g}") for v in desc],
                }
            )
            print(
                f"{cid}: box {chips[-1]['box_ltrb']} |d| {np.linalg.norm(desc):.4f}",
                file=sys.stderr,
            )

    out = {
        "what": "dlib's own 128-D descriptors (dlib_face_recognition_resnet_model_v1) of dlib's own "
        "150x150 face chips (5-point alignment, padding 0.25) of ../shared/data/wild",
        "command": "/work/scratch/dlibvenv/bin/python bench/dlib_fixture.py make --wild ../shared/data/wild "
        "--chips /work/scratch/dlib_chips --out tests/fixtures/dlib_resnet29_descriptors.json",
        "dlib_version": dlib.__version__,
        "face_recognition_models_version": metadata.version("face_recognition_models"),
        "pillow_version": metadata.version("pillow"),
        "recognition_model_sha256": sha256(rec_path),
        "shape_predictor_sha256": sha256(sp_path),
        "detector": f"dlib.get_frontal_face_detector(), upsample {UPSAMPLE}",
        "decode": "Pillow Image.open(path).convert('RGB') (alpha dropped)",
        "chip": {"size": CHIP_SIZE, "padding": CHIP_PADDING, "function": "dlib.get_face_chip"},
        "descriptor_call": "dlib.face_recognition_model_v1(path).compute_face_descriptor(chip)",
        "chips_note": "chip pixels are not stored: they are cut from third-party photos whose "
        "copyright is not stated (wild README: test fixtures only, not shipped); the test rebuilds "
        "each chip from the photo with chip_rect_ltrb/chip_angle",
        "identities": "labelled by eye from the chips (bench/dlib_fixture.py IDENTITIES); "
        "null = unnamed; faces of one photo are different people except in the collages",
        "collages": sorted(COLLAGES),
        "chips": chips,
    }
    Path(args.out).write_text(dump(out))
    print(
        f"{len(chips)} chips from {len({c['file'] for c in chips})} photos -> {args.out}",
        file=sys.stderr,
    )
    return 0


# --------------------------------------------------------------------------------------------
# the chip rebuilt without dlib


def rebuild_chip(img: np.ndarray, rect_ltrb, angle: float, size: int = CHIP_SIZE) -> np.ndarray:
    """dlib's ``extract_image_chip`` of the chip placed at ``rect_ltrb`` rotated by ``angle``,
    redone with numpy: see :func:`fernoise.backbones.dlib_resnet29.extract_chip`."""
    from fernoise.backbones.dlib_resnet29 import extract_chip

    return extract_chip(img, rect_ltrb, angle, size)


# --------------------------------------------------------------------------------------------
# compare (project venv, torch)


def pairwise(d: np.ndarray) -> np.ndarray:
    diff = d[:, None, :] - d[None, :, :]
    return np.sqrt((diff**2).sum(-1))


def summary(name: str, port: np.ndarray, ref: np.ndarray, chips: list[dict]) -> dict:
    cos = (port * ref).sum(1) / (np.linalg.norm(port, axis=1) * np.linalg.norm(ref, axis=1))
    l2 = np.linalg.norm(port - ref, axis=1)
    iu = np.triu_indices(len(ref), 1)
    dp, dr = pairwise(port)[iu], pairwise(ref)[iu]
    r = float(np.corrcoef(dp, dr)[0, 1])
    both = int(((dp < 0.6) & (dr < 0.6)).sum())
    res = {
        "n": len(ref),
        "cos_min": float(cos.min()),
        "cos_median": float(np.median(cos)),
        "cos_max": float(cos.max()),
        "l2_max": float(l2.max()),
        "pairs": len(dr),
        "pearson_pairwise": r,
        "pairs_below_0.6_dlib": int((dr < 0.6).sum()),
        "pairs_below_0.6_port": int((dp < 0.6).sum()),
        "pairs_below_0.6_both": both,
        "max_abs_pairwise_diff": float(np.abs(dp - dr).max()),
    }
    print(
        f"{name}: "
        + ", ".join(f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}" for k, v in res.items())
    )
    worst = np.argsort(cos)[:3]
    res.update(identity_summary(port, ref, chips))
    for k in (
        "same_pairs",
        "diff_pairs",
        "port_same_max",
        "dlib_same_max",
        "port_diff_min",
        "dlib_diff_min",
        "port_ranking",
        "dlib_ranking",
        "port_accuracy_at_0.6",
        "dlib_accuracy_at_0.6",
        "verdicts_agree_at_0.6",
    ):
        print(f"  {k}: {res[k]:.6g}" if isinstance(res[k], float) else f"  {k}: {res[k]}")
    print(f"  lowest cosines: {[(int(i), round(float(cos[i]), 6)) for i in worst]}")
    return res


def labelled_pairs(chips: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) index pairs of known same-person and known different-person faces: the same
    named identity; different named identities, or two faces of one (non-collage) photo."""
    same, diff = [], []
    for i in range(len(chips)):
        for j in range(i + 1, len(chips)):
            a, b = chips[i], chips[j]
            if a["identity"] and b["identity"]:
                (same if a["identity"] == b["identity"] else diff).append((i, j))
            elif a["file"] == b["file"] and a["file"] not in COLLAGES:
                diff.append((i, j))
    return np.asarray(same), np.asarray(diff)


def identity_summary(port: np.ndarray, ref: np.ndarray, chips: list[dict]) -> dict:
    same, diff = labelled_pairs(chips)
    out: dict = {"same_pairs": len(same), "diff_pairs": len(diff)}
    for name, d in (("port", port), ("dlib", ref)):
        dist = pairwise(d)
        ds, dd = dist[same[:, 0], same[:, 1]], dist[diff[:, 0], diff[:, 1]]
        out[f"{name}_same_max"] = float(ds.max())
        out[f"{name}_diff_min"] = float(dd.min())
        # share of (same, different) pair couples ordered right: the ROC AUC of verification
        out[f"{name}_ranking"] = float((ds[:, None] < dd[None, :]).mean())
        out[f"{name}_accuracy_at_0.6"] = float(
            ((ds < 0.6).sum() + (dd >= 0.6).sum()) / (len(ds) + len(dd))
        )
        out[f"_{name}_verdict"] = np.concatenate([ds < 0.6, dd < 0.6])
    out["verdicts_agree_at_0.6"] = int((out.pop("_port_verdict") == out.pop("_dlib_verdict")).sum())
    return out


def compare(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image

    from fernoise.backbones.dlib_resnet29 import DlibResNet29

    fx = json.loads(Path(args.fixture).read_text())
    chips = fx["chips"]
    ref = np.asarray([c["descriptor"] for c in chips], dtype=np.float64)
    net = DlibResNet29.from_faceapi(args.faceapi).eval()
    torch.set_grad_enabled(False)

    def run(imgs):
        x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2)
        return torch.cat([net(net.normalize(b)) for b in x.split(16)]).double().numpy()

    results = {}
    if args.chips:
        dlib_chips = [
            np.asarray(
                Image.open(Path(args.chips) / f"{c['file'].rsplit('.', 1)[0]}__{c['face']}.png")
            )
            for c in chips
        ]
        results["dlib_chips"] = summary("port on dlib's chips", run(dlib_chips), ref, chips)
    cache: dict[str, np.ndarray] = {}
    rebuilt = []
    for c in chips:
        if c["file"] not in cache:
            cache[c["file"]] = load_rgb(Path(args.wild) / c["file"])
        rebuilt.append(rebuild_chip(cache[c["file"]], c["chip_rect_ltrb"], c["chip_angle"]))
    if args.chips:
        diffs = [
            np.abs(a.astype(int) - b.astype(int)) for a, b in zip(rebuilt, dlib_chips, strict=True)
        ]
        mae = [float(d.mean()) for d in diffs]
        print(
            f"rebuilt vs dlib chip pixels: mean |diff| median {np.median(mae):.3f}, max {max(mae):.3f}; "
            f"max |diff| {max(int(d.max()) for d in diffs)}"
        )
    results["rebuilt_chips"] = summary("port on rebuilt chips", run(rebuilt), ref, chips)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make", help="dlib's chips and descriptors (scratch venv with dlib)")
    m.add_argument("--wild", required=True)
    m.add_argument(
        "--chips", required=True, help="folder for the chip PNGs (outside the repository)"
    )
    m.add_argument("--out", required=True)
    c = sub.add_parser("compare", help="the port against the fixture (project venv)")
    c.add_argument("--faceapi", required=True)
    c.add_argument("--wild", required=True)
    c.add_argument("--fixture", required=True)
    c.add_argument("--chips", help="dlib's chip PNGs from `make`; without them only rebuilt chips")
    c.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    return make(args) if args.cmd == "make" else compare(args)


if __name__ == "__main__":
    raise SystemExit(main())
