"""What keying caches on a manifest's content costs (issue 8.4): the column digests a stage
computes on read, against reading the manifest at all.

    python bench/ferplus_manifest.py /tmp/fp.parquet     # the 32k-row FERPlus manifest
    python bench/content_hash.py /tmp/fp.parquet [--repeat 5]

Prints one table: best-of-N seconds for reading the file (Parquet -> pandas, as train does),
the digests of the columns train reads (``fernoise.train.config.READS``), of every column (what
corrupt keys on), the check against the digests recorded at write time, and the crops'
stat fingerprint (one ``stat`` per crop; the image cache's key).
"""

from __future__ import annotations

import argparse
import time

import pyarrow.parquet as pq

from fernoise.data import crop_fingerprint
from fernoise.manifest import content_digests, read_manifest
from fernoise.train.config import READS


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest")
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    m = read_manifest(a.manifest)
    table = pq.read_table(a.manifest)
    paths = [str(m.root / p) for p in m.df["path"].dropna()]
    rows = [
        ("read manifest (Parquet -> pandas)", best(lambda: read_manifest(a.manifest), a.repeat)),
        (
            f"digest of train's columns ({len([c for c in READS if c in table.column_names])})",
            best(lambda: m.content_key(READS), a.repeat),
        ),
        (
            f"digest of every column ({table.num_columns}, corrupt)",
            best(lambda: content_digests(table), a.repeat),
        ),
        (
            "check against recorded digests (train's columns)",
            best(lambda: m.edited(READS), a.repeat),
        ),
        (
            f"crop stat fingerprint ({len(paths):,} files)",
            best(lambda: crop_fingerprint(paths), a.repeat),
        ),
    ]
    print(f"{a.manifest}: {table.num_rows:,} rows, {table.num_columns} columns; best of {a.repeat}")
    print(f"{'step':<52} {'seconds':>8}")
    for name, sec in rows:
        print(f"{name:<52} {sec:>8.3f}")


if __name__ == "__main__":
    main()
