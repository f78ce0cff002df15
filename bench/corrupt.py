"""Benchmark: `fernoise corrupt` (sym and asym) on a synthetic 1,000,000-row manifest.

Builds a manifest with every standard column (ids, paths, sha256, bbox, landmarks, ...) in a
temporary folder, runs the stage through the real runner (key, read, corrupt, write, stamp,
lock) and prints a table: the corrupt function itself, reading, writing, the whole stage, and
a cache hit (fastest of --repeat runs). Target: < 2 s per kind on this machine.

    .venv/bin/python bench/corrupt.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fernoise.cache import Workspace
from fernoise.corrupt.stage import run_corrupt
from fernoise.labels import CLASSES
from fernoise.manifest import write_manifest

# FER+-like class shares (neutral, happy, sad, surprise, fear, disgust, anger, contempt)
SHARES = [0.33, 0.26, 0.12, 0.12, 0.023, 0.007, 0.085, 0.055]


def synthetic(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    label = rng.choice(8, size=n, p=np.array(SHARES) / sum(SHARES))
    ids = np.array(
        [
            f"train/{CLASSES[c]}/img_{i:07d}.jpg"
            for i, c in zip(rng.permutation(n), label, strict=True)
        ],
        dtype=object,
    )
    split = rng.choice(np.array(["train", "val", "test"], dtype=object), size=n, p=[0.8, 0.1, 0.1])
    lab = pd.array(label, dtype="Int64")
    lab[rng.random(n) < 0.01] = pd.NA
    box = rng.uniform(0, 200, size=(n, 4))
    lm = rng.uniform(0, 200, size=(n, 10))
    return pd.DataFrame(
        {
            "id": ids,
            "src_path": ids,
            "src_sha256": [f"{i:064x}" for i in range(n)],
            "path": [f"faces/{i}.png" for i in ids],
            "split": split,
            "label": lab,
            "label_name": [None if pd.isna(v) else CLASSES[v] for v in lab],
            "status": "ok",
            "reason": None,
            "face": np.zeros(n, dtype=np.int64),
            "n_faces": np.ones(n, dtype=np.int64),
            "det_prob": rng.uniform(0.9, 1.0, size=n),
            "bbox": list(box),
            "landmarks": list(lm),
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs per kind (recomputed with force); the fastest is shown",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        df = synthetic(args.rows)
        src = write_manifest(
            df,
            root / "manifest.parquet",
            {"classes": list(CLASSES), "label_space": "basic8", "stage": "align", "key": "bench"},
        )
        build_s = time.perf_counter() - t0
        size_mb = src.stat().st_size / 1e6
        # the same rows in id order, as align writes them: corrupt skips its id sort
        in_order = write_manifest(
            df.sort_values("id").reset_index(drop=True),
            root / "sorted" / "manifest.parquet",
            {"classes": list(CLASSES), "label_space": "basic8", "stage": "align", "key": "bench"},
        )
        del df
        ws = Workspace(root)
        rows = []
        for name, kind, path in (
            ("sym", "sym", src),
            ("asym", "asym", src),
            ("sym, rows in id order", "sym", in_order),
        ):
            runs = [
                run_corrupt(path, kind=kind, rate=0.3, seed=0, workspace=ws, force=i > 0)
                for i in range(args.repeat)
            ]
            res = min(runs, key=lambda r: r.result.seconds)
            t = res.timings
            hit = run_corrupt(path, kind=kind, rate=0.3, seed=0, workspace=ws)
            assert hit.hit and not res.hit
            rows.append(
                (
                    name,
                    t["corrupt"],
                    t["read"],
                    t["write"],
                    res.result.seconds,
                    hit.result.seconds,
                    res.noise["rate_overall"],
                )
            )
        print(
            f"manifest: {args.rows:,} rows in shuffled id order, {size_mb:.1f} MB parquet (built in {build_s:.1f} s); "
            f"fastest of {args.repeat} runs per kind; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
        )
        print()
        print(
            "| kind | corrupt (s) | read (s) | write (s) | whole stage (s) | cache hit (s) | realised rate |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for kind, c, r, w, whole, h, rate in rows:
            print(f"| {kind} | {c:.3f} | {r:.3f} | {w:.3f} | {whole:.3f} | {h:.3f} | {rate:.5f} |")
        print()
        print("whole stage = key + read + corrupt + write + stamp (sha256 of the output) + lock")


if __name__ == "__main__":
    main()
