#!/usr/bin/env bash
# The methods comparison of docs/results.md: every method once at 50% symmetric noise
# on ROWS FERPlus training rows (FER+ majority, 8 classes; 10% carved as validation, with noisy
# labels), tested on every FER2013Valid row with a FER+ majority (3,199); seed 0, the same
# optimiser for every method (Adam 1e-3 for backbone and heads, no weight decay, no lr decay,
# batch 128; RUL's classifier at the same lr), random init: METHOD.md's reference protocol
# (10,000 rows, 15 epochs, warm-up 3, 48 px, bf16 on the CPU).
#   bash bench/methods_grid.sh WORKDIR        (resumable: re-run after a kill; finished runs are hits)
# Environment (defaults in brackets): ROWS [10000], EPOCHS [15], WARMUP [3], SIZE [48],
# PRECISION [bf16], AUGMENT [device], METHODS ["ce ncctfer elr gce sce scn rul eac pc nl"],
# pretrained=PATH adds --pretrained PATH (README: scratch vs a self-supervised start),
# BACKBONE [resnet18] --backbone, LR_BACKBONE [1e-3] --lr-backbone, EXTRA [] more train options
# and TAG [] a word in the log names (e.g. EXTRA="--threshold batch" TAG=batch),
# NOISE [sym50] or fer2013 (the real-noise table: `corrupt --kind column --column fer2013_label`
# on the same rows, FER2013's original labels against the FER+ majority; add TAG=fer2013),
# FN [fernoise] the command.
set -u
work=${1:?usage: bench/methods_grid.sh WORKDIR}
here=$(cd "$(dirname "$0")" && pwd)
fn=${FN:-fernoise}
rows=${ROWS:-10000}
mkdir -p "$work" && cd "$work"
export FERNOISE_WORKSPACE="$work"
if [ "${NOISE:-sym50}" = fer2013 ]; then  # real noise: FER2013's original labels, FER+ majority as truth
  manifest="fp${rows}-fer2013.parquet"
  [ -f "fp${rows}-fer2013col.parquet" ] || python "$here/ferplus_manifest.py" "fp${rows}-fer2013col.parquet" --train "$rows" --fer2013-column
  [ -f "$manifest" ] || $fn corrupt "fp${rows}-fer2013col.parquet" --kind column --column fer2013_label --out "$manifest" > "corrupt-fer2013.txt" 2>&1
else
  manifest="fp${rows}-sym50.parquet"
  [ -f "$manifest" ] || python "$here/ferplus_manifest.py" "$manifest" --train "$rows" --sym-rate 0.5 --seed 0
fi
start=${pretrained:+--pretrained $pretrained}
for m in ${METHODS:-ce ncctfer elr gce sce scn rul eac pc nl}; do
  extra=""
  [ "$m" = rul ] && extra="--rul-fc-lr-factor 1"
  log="log-$m-${SIZE:-48}px${BACKBONE:+-$BACKBONE}${pretrained:+-pre}${TAG:+-$TAG}.txt"
  $fn train "$manifest" --method "$m" --epochs "${EPOCHS:-15}" --warmup "${WARMUP:-3}" --image-size "${SIZE:-48}" \
    --batch-size 128 --lr-backbone "${LR_BACKBONE:-1e-3}" --lr-head 1e-3 --weight-decay 0 --lr-decay 1 --seed 0 \
    --precision "${PRECISION:-bf16}" --augment "${AUGMENT:-device}" ${BACKBONE:+--backbone $BACKBONE} \
    $start $extra ${EXTRA:-} \
    --runs-dir runs > "$log" 2>&1 || { echo "train $m failed: $(tail -1 "$log")"; continue; }
  run=$(grep -E "^(wrote|cache hit): " "$log" | tail -1 | sed 's/^[a-z ]*: //')
  $fn eval "$run" > "eval-${log#log-}" 2>&1 || echo "eval $m failed: $(tail -1 "eval-${log#log-}")"
done
$fn report runs
