"""Benchmark: `fernoise sweep` from nothing, then the all-hit re-run (acceptance: < 15 s beyond
start-up, and no torch import).

Builds a tiny aligned manifest (32 px, --rows rows) in a temporary workspace and runs a grid of
--methods x --rates x --seeds cells, 1 epoch each (the default is grids/smoke.toml's 2 x 2 x 1),
through the real CLI in a fresh Python each time. Prints a table: wall time of the first run
and of the re-run, the re-run's own time as the sweep reports it, the start-up of a bare
`fernoise --version`, and whether the re-run imported torch.

    .venv/bin/python bench/sweep.py [--methods ce,ncctfer --rates 0.2,0.4 --seeds 0 --rows 56]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from sweep_data import make_aligned  # noqa: E402

from fernoise.cache import Workspace  # noqa: E402

PROBE = (
    "import sys\nfrom fernoise.cli.app import app\n"
    "try:\n    app()\nexcept SystemExit:\n    pass\n"
    "print('TORCH_IMPORTED', 'torch' in sys.modules)\n"
)


def timed(cmd: list[str], ws: Path) -> tuple[float, str]:
    env = {**os.environ, "FERNOISE_WORKSPACE": str(ws)}
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, check=True).stdout
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="ce,ncctfer")
    ap.add_argument("--rates", default="0.2,0.4")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--rows", type=int, default=56)
    args = ap.parse_args()
    methods = [m.strip() for m in args.methods.split(",")]
    rates = [float(r) for r in args.rates.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        manifest = make_aligned(ws / "data", n=args.rows)
        Workspace(ws).record("align", key="aligned-synthetic", output=manifest, params={})
        grid = ws / "bench.toml"
        grid.write_text(
            f'name = "bench"\nmethods = {methods!r}\nseeds = {seeds!r}\n'
            f'noise = [{{kind = "sym", rates = {rates!r}}}]\n'
            "[train]\nepochs = 1\nwarmup = 0\nimage_size = 32\nbatch_size = 16\nworkers = 0\n".replace(
                "'", '"'
            )
        )
        n = len(methods) * len(rates) * len(seeds)
        startup, _ = timed([sys.executable, "-m", "fernoise.cli.app", "--version"], ws)
        first, _ = timed([sys.executable, "-m", "fernoise.cli.app", "sweep", str(grid)], ws)
        again, out = timed([sys.executable, "-c", PROBE, "sweep", str(grid)], ws)
        inner = re.search(r"in ([\d.]+)s;", out)
        hits = re.search(r"\((\d+) cache hits\)", out)
        rows = [
            ("cells", str(n)),
            ("first run, wall (s)", f"{first:.1f}"),
            ("re-run, wall (s)", f"{again:.2f}"),
            ("re-run, inside the sweep (s)", inner.group(1) if inner else "?"),
            ("start-up: fernoise --version (s)", f"{startup:.2f}"),
            ("re-run cache hits", hits.group(1) if hits else "?"),
            ("re-run imported torch", "yes" if "TORCH_IMPORTED True" in out else "no"),
        ]
        width = max(len(k) for k, _ in rows)
        print(f"| {'figure':<{width}} | value |\n|{'-' * (width + 2)}|-------|")
        for k, v in rows:
            print(f"| {k:<{width}} | {v} |")


if __name__ == "__main__":
    main()
