#!/usr/bin/env bash
# The GPU check of issue 13, as one prepared script: run it in ONE device call.
#
# Two modes:
#   bash bench/gpu_check.sh pack     # HERE (the CPU machine, network and ../shared at hand):
#                                    # packs what the GPU machine cannot reach into .gpu/
#   bash bench/gpu_check.sh          # THERE (the GPU machine): install, tests, bench, runs
#
# pack writes, in the repository root (add `/.gpu/` to .git/info/exclude; it travels with
# `carry: [".gpu"]`, ~40 MB):
#   .gpu/ferplus.tar   data/ferplus/{manifest.csv, FER2013Train/<the 12,271 train PNGs the
#                      bench and the run use>, FER2013Valid/*} from $FERNOISE_SHARED
#                      (default ../shared), since ../shared does not travel
#   .gpu/whl/*.whl     facenet-pytorch (align's MTCNN; not in the GPU image), no deps
#
# The run mode reads the data from $FERNOISE_GPU_DATA (default .gpu/ferplus.tar; a folder
# holding data/ferplus works too) and prints one summary table at the end (also written to
# $OUT/summary.txt when $OUT is set, with the logs beside it). Device call, e.g.:
#   run(command="bash bench/gpu_check.sh", carry=[".gpu"], timeout_s=600)
# Knobs: GPU_CHECK_EPOCHS (40), GPU_CHECK_ROWS (12271), GPU_CHECK_STEPS ("tests bench run align":
# the steps to do), GPU_CHECK_BENCH_ROUNDS (1).
# Each step has its own timeout (tests 80 s, bench 180 s, cache prep 60 s, the 40-epoch run
# 180 s, align 60 s: at most ~560 s, inside one 600 s call); a step that runs out still
# reports what it finished (the run's metrics.jsonl is written every epoch). If the budget
# allows a second call, split: GPU_CHECK_STEPS="tests bench", then "run align".
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
ROWS=${GPU_CHECK_ROWS:-12271}

if [ "${1:-}" = "pack" ]; then
  set -e
  SHARED=${FERNOISE_SHARED:-$ROOT/../shared}
  PY=${PYTHON:-$ROOT/.venv/bin/python}
  mkdir -p .gpu/whl .gpu/stage/data
  # the train rows ferplus_manifest.build picks for --train $ROWS, plus every FER2013Valid PNG
  FERNOISE_SHARED="$SHARED" "$PY" - "$ROWS" <<'EOF'
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, "bench")
import ferplus_manifest

m = ferplus_manifest.build(Path(".gpu/stage/pick.parquet"), n_train=int(sys.argv[1]), n_test=None)
df = pd.read_parquet(m)
root = ferplus_manifest.FERPLUS
keep = [str((m.parent / p).resolve().relative_to(root)) for p in df["path"]]
keep += [f"FER2013Valid/{p.name}" for p in sorted((root / "FER2013Valid").glob("*.png"))]
Path(".gpu/stage/files.txt").write_text("\n".join(["manifest.csv", *sorted(set(keep))]) + "\n")
print(len(keep), "files")
EOF
  tar -cf .gpu/ferplus.tar --transform 's,^,data/ferplus/,' -C "$SHARED/data/ferplus" -T .gpu/stage/files.txt
  rm -rf .gpu/stage
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform any -d .gpu/whl "$(grep '^facenet-pytorch==' constraints.txt)"
  du -sh .gpu
  exit 0
fi

# ----------------------------------------------------------------------------- on the GPU machine
OUTDIR=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUTDIR"
SUMMARY="$OUTDIR/summary.txt"
: >"$SUMMARY"
STEPS=${GPU_CHECK_STEPS:-tests bench run align}
EPOCHS=${GPU_CHECK_EPOCHS:-40}
export PYTHONUNBUFFERED=1
row() { printf '%-44s %s\n' "$1" "$2" | tee -a "$SUMMARY"; }
has() { case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# Install: the image's torch/torchvision/pandas/...; fernoise from this tree (no network there);
# facenet-pytorch from the carried wheel. Versions vs constraints.txt are reported, not forced.
SITE=/tmp/fernoise-site
mkdir -p "$SITE"
ln -sfn "$ROOT/fernoise" "$SITE/fernoise"
if ls .gpu/whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE/deps" .gpu/whl/*.whl
fi
export PYTHONPATH="$SITE:$SITE/deps${PYTHONPATH:+:$PYTHONPATH}"
FN="python3 -m fernoise.cli.app"
WORK=/tmp/fernoise-gpu-check
rm -rf "$WORK" && mkdir -p "$WORK"
export FERNOISE_WORKSPACE="$WORK/ws"
mkdir -p "$FERNOISE_WORKSPACE"

python3 - <<'EOF' | tee -a "$SUMMARY"
import re, importlib.metadata as md, torch
print(f"device: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO CUDA'}; torch {torch.__version__}")
for line in open("constraints.txt"):
    m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line)
    if m:
        try:
            have = md.version(m.group(1))
        except md.PackageNotFoundError:
            have = "missing"
        if have != m.group(2):
            print(f"  constraints: {m.group(1)} {m.group(2)} wanted, {have} here")
EOF
date -u +"date: %Y-%m-%d %H:%M UTC" | tee -a "$SUMMARY"

DATA=${FERNOISE_GPU_DATA:-$ROOT/.gpu/ferplus.tar}
if [ -f "$DATA" ]; then
  mkdir -p "$WORK/shared" && tar -xf "$DATA" -C "$WORK/shared"
  export FERNOISE_SHARED="$WORK/shared"
elif [ -d "$DATA/data/ferplus" ]; then
  export FERNOISE_SHARED="$DATA"
else
  echo "no data: set FERNOISE_GPU_DATA to .gpu/ferplus.tar or a folder holding data/ferplus (bench/gpu_check.sh pack)" | tee -a "$SUMMARY"
  STEPS=${STEPS//bench/}; STEPS=${STEPS//run/}; STEPS=${STEPS//align/}
fi

secs() { python3 -c "import time; print(f'{time.time():.3f}')"; }

if has tests; then
  t0=$(secs)
  FERNOISE_TEST_DEVICE=cuda timeout 80 python3 -m pytest -q -x -p no:cacheprovider tests/test_augment.py >"$OUTDIR/tests.log" 2>&1
  rc=$?
  row "augment tests on cuda (rc $rc)" "$(tail -1 "$OUTDIR/tests.log") [$(python3 -c "print(f'{$(secs)-$t0:.0f}')") s]"
fi

if has bench; then
  timeout 180 python3 bench/train.py --device cuda --image-size 224 --rows "$ROWS" --rounds "${GPU_CHECK_BENCH_ROUNDS:-1}" \
    --no-layouts --workdir "$WORK/bench" >"$OUTDIR/bench.log" 2>&1
  row "bench/train.py 224 px (rc $?)" "table below (bench.log)"
fi

if has run; then
  # 12,271 FERPlus train crops (RAF-DB's train size) resized to 224 by the array cache, the
  # FER2013Valid rows as test, evaluated every epoch; no carved val (--val-fraction 0).
  python3 bench/ferplus_manifest.py "$WORK/run.parquet" --train "$ROWS" >/dev/null
  # one epoch first, in another runs folder: builds the 224 px array cache (not timed)
  timeout 60 $FN train "$WORK/run.parquet" --method ncctfer --epochs 1 --image-size 224 --device cuda \
    --augment device --val-fraction 0 --runs-dir "$WORK/prep" --workspace "$FERNOISE_WORKSPACE" >"$OUTDIR/prepare.log" 2>&1
  t0=$(secs)
  timeout 180 $FN train "$WORK/run.parquet" --method ncctfer --epochs "$EPOCHS" --image-size 224 --device cuda \
    --augment device --val-fraction 0 --runs-dir "$WORK/runs" --workspace "$FERNOISE_WORKSPACE" >"$OUTDIR/run.log" 2>&1
  rc=$?
  wall=$(python3 -c "print(f'{$(secs)-$t0:.1f}')")
  row "ncctfer ${EPOCHS} epochs x ${ROWS} at 224 (rc $rc)" "${wall} s wall incl. startup and eval each epoch (target < 120)"
  python3 - "$WORK/runs" <<'EOF' | tee -a "$SUMMARY"
import json, sys
from pathlib import Path
for run in sorted(Path(sys.argv[1]).glob("*/metrics.jsonl")):
    ms = [json.loads(l) for l in run.read_text().splitlines()]
    if len(ms) < 2:
        continue
    cfg = json.loads((run.parent / "config.json").read_text())
    sps = sorted(m["samples_per_s"] for m in ms[1:])
    print(f"  {len(ms)} epochs: sum of epoch seconds {sum(m['seconds'] for m in ms):.1f}, train {sum(m['train_seconds'] for m in ms):.1f}; "
          f"median {sps[len(sps)//2]:.0f} samples/s ({2*sps[len(sps)//2]:.0f} images/s, both views); "
          f"data wait {sum(m['data_wait_s'] for m in ms):.1f} s; final test_acc {ms[-1]['test_acc']}; "
          f"augment {cfg.get('augment')}, precision {cfg.get('precision')}")
EOF
fi

if has align; then
  # FER2013Valid (3,579 48x48 PNGs) with detection on the GPU; cold cache.
  VALID="$FERNOISE_SHARED/data/ferplus/FER2013Valid"
  n=$(ls "$VALID" | wc -l)
  t0=$(secs)
  timeout 60 $FN align "$VALID" "$WORK/aligned" --device cuda --workspace "$FERNOISE_WORKSPACE" >"$OUTDIR/align.log" 2>&1
  rc=$?
  wall=$(python3 -c "print(f'{$(secs)-$t0:.1f}')")
  row "align FER2013Valid on cuda (rc $rc)" "$n images in ${wall} s = $(python3 -c "print(f'{$n/$wall:.0f}')") images/s (target >= 1000)"
fi

echo
echo "=================== summary (also $SUMMARY) ==================="
cat "$SUMMARY"
if [ -f "$OUTDIR/bench.log" ]; then
  echo "------------------- bench/train.py table -------------------"
  sed -n '/throughput/,$p' "$OUTDIR/bench.log"
fi
