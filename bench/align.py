"""Images/s of `fernoise align` against the plain per-image facenet-pytorch loop, same photos.

    python bench/align.py [--photos ../shared/data/wild] [--repeat 1] [--workers 2]

Both sides get a ready detector (model loading is not timed) and decode the photos
themselves. The baseline is what a user writes first: ``mtcnn = MTCNN()``, then
``mtcnn(Image.open(f).convert("RGB"))`` for each photo (facenet's default settings, torch's
default thread count; also shown single-threaded). fernoise is the library call
``align_folder(photos, tmp)`` with a cold cache in a fresh temporary folder: hashing,
decoding, batched detection on a copy of at most 1024 px, alignment, JPEG crops and the
Parquet manifest all included. Prints a table and the ratio.

Where the speed comes from (``fernoise/align/detect.py``): the MTCNN nets run in channels-last
memory order (~2x on CPU), on a copy of at most 1024 px, batched by image size, with the
batches run side by side, one single-threaded lane per core (MTCNN's many small ops lose to
intra-op thread hand-offs; whole batches in parallel do not); decoding and saving overlap
detection.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

WILD = (
    Path(
        os.environ.get("FERNOISE_SHARED", Path(__file__).resolve().parents[1] / ".." / "shared")
    ).resolve()
    / "data"
    / "wild"
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=Path, default=WILD)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    if not args.photos.is_dir():
        print(f"no photos at {args.photos}; pass --photos DIR", file=sys.stderr)
        return 1

    import torch
    from facenet_pytorch import MTCNN
    from PIL import Image
    from rich.console import Console
    from rich.table import Table

    from fernoise.align.detect import make_detector
    from fernoise.align.faces import AlignParams
    from fernoise.align.stage import align_folder, scan_images

    files = [args.photos / s for s in scan_images(args.photos)]
    n = len(files)
    mtcnn = MTCNN(device="cpu")
    det = make_detector("cpu")
    default_threads = torch.get_num_threads()

    def baseline(threads: int) -> float:
        torch.set_num_threads(threads)
        try:
            t = time.perf_counter()
            found = 0
            for f in files:
                with Image.open(f) as im:
                    face = mtcnn(im.convert("RGB"))
                found += face is not None
            return time.perf_counter() - t
        finally:
            torch.set_num_threads(default_threads)

    def ours() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            r = align_folder(
                args.photos, Path(tmp) / "out", AlignParams(), detector=det, workers=args.workers
            )
            dt = time.perf_counter() - t
            assert not r.hit and r.rows == n
            return dt

    runs: dict[str, list[float]] = {
        "facenet loop": [],
        "facenet loop, 1 thread": [],
        "fernoise align": [],
    }
    for _ in range(args.repeat):
        runs["facenet loop"].append(baseline(default_threads))
        runs["facenet loop, 1 thread"].append(baseline(1))
        runs["fernoise align"].append(ours())
    med = {k: statistics.median(v) for k, v in runs.items()}
    base = med["facenet loop"]
    table = Table(
        title=f"{n} photos from {args.photos} (median of {args.repeat}; torch default threads {default_threads}, "
        f"{os.cpu_count()} CPUs)"
    )
    for col in ("method", "seconds", "images/s", "speed-up vs facenet loop"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for k, v in med.items():
        table.add_row(k, f"{v:.2f}", f"{n / v:.2f}", f"{base / v:.2f}x")
    Console().print(table)
    print(f"ratio fernoise align / facenet loop: {base / med['fernoise align']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
