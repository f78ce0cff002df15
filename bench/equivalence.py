"""Every registered method's 2-epoch run, to check that a refactor keeps their numbers.

Run it on two checkouts (the one before the change and the one after), then compare::

    (cd OLD && python bench/equivalence.py run /tmp/before.json)
    (cd NEW && python bench/equivalence.py run /tmp/after.json)
    python bench/equivalence.py compare /tmp/before.json /tmp/after.json

``run`` trains each method (``--methods``, default: all of the checkout's registry) for 2
epochs (warm-up 1) on a generated 48-row manifest (tests/factories.py), 8 per batch, 32 px,
fp32 on the CPU, on both view paths (``--augment workers`` and ``device``), and writes every
epoch's metrics without the timing fields. ``compare`` prints the largest relative
difference of the numbers two such files share and every field that differs by more than
``--rel`` (default 1e-6); it exits 1 when any does. Methods only one file has are listed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

TIMING = ("seconds", "per_s", "wait")


def run(out: Path, names: list[str] | None) -> None:
    sys.path[:0] = ["tests", "."]
    from factories import SIZE, make_manifest

    from fernoise import methods
    from fernoise.train.config import TrainConfig
    from fernoise.train.stage import train

    got: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        manifest = make_manifest(root / "data", n=48)
        for augment in ("workers", "device"):
            for name in names or methods.names():
                cfg = TrainConfig(
                    method=name, epochs=2, warmup=1, batch_size=8, image_size=SIZE, workers=0,
                    precision="fp32", device="cpu", augment=augment, seed=3,
                )  # fmt: skip
                run_dir = train(manifest, cfg, runs_dir=root / "runs").output
                lines = (run_dir / "metrics.jsonl").read_text().splitlines()
                rows = [json.loads(line) for line in lines]
                got[f"{augment}/{name}"] = [
                    {k: v for k, v in r.items() if not any(t in k for t in TIMING)} for r in rows
                ]
                print(f"{augment:8s} {name:12s} loss {rows[-1]['loss']:.6f}", flush=True)
    out.write_text(json.dumps(got, indent=1, sort_keys=True))


def compare(a_path: Path, b_path: Path, rel: float) -> int:
    a, b = json.loads(a_path.read_text()), json.loads(b_path.read_text())
    for only, path in ((a.keys() - b.keys(), a_path), (b.keys() - a.keys(), b_path)):
        if only:
            print(f"only in {path}: {', '.join(sorted(only))}")
    worst, bad = 0.0, []
    for run in sorted(a.keys() & b.keys()):
        for ra, rb in zip(a[run], b[run], strict=True):
            for field in sorted(ra.keys() | rb.keys()):
                x, y = ra.get(field), rb.get(field)
                if isinstance(x, float) and isinstance(y, float):
                    d = abs(x - y) / max(abs(x), 1e-12)
                    worst = max(worst, d)
                    if d > rel:
                        bad.append((run, ra.get("epoch"), field, x, y))
                elif x != y:
                    bad.append((run, ra.get("epoch"), field, x, y))
    print(f"runs compared: {len(a.keys() & b.keys())}; largest relative difference: {worst:.3g}")
    for row in bad:
        print("differs:", *row)
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("out", type=Path)
    r.add_argument("--methods", nargs="*")
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    c.add_argument("--rel", type=float, default=1e-6)
    args = ap.parse_args()
    if args.cmd == "run":
        run(args.out, args.methods)
        return 0
    return compare(args.a, args.b, args.rel)


if __name__ == "__main__":
    sys.exit(main())
