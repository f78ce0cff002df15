#!/usr/bin/env bash
# The methods comparison of README's Results (issue 10): every method once, 50% symmetric noise on
# 2,000 FERPlus training rows (FER+ majority, 8 classes; 10% carved as validation, with noisy
# labels), tested on 1,500 FER2013Valid rows; 48 px, seed 0, 10 epochs, warm-up 2, the same
# optimiser for every method (Adam 1e-3 for backbone and heads, no weight decay, no lr decay,
# batch 128; RUL's classifier at the same lr), random init.
#   bash bench/methods_grid.sh WORKDIR        (resumable: re-run after a kill)
# The same with pretrained=PATH in the environment adds --pretrained PATH (README: scratch vs a
# self-supervised start). METHODS="ce ncctfer" restricts the methods.
set -u
work=${1:?usage: bench/methods_grid.sh WORKDIR}
here=$(cd "$(dirname "$0")" && pwd)
fn=${FN:-fernoise}
mkdir -p "$work" && cd "$work"
export FERNOISE_WORKSPACE="$work"
[ -f fp2k-sym50.parquet ] || python "$here/ferplus_manifest.py" fp2k-sym50.parquet --train 2000 --test 1500 --sym-rate 0.5 --seed 0
start=${pretrained:+--pretrained $pretrained}
for m in ${METHODS:-ce ncctfer elr gce sce pc nl scn rul eac}; do
  extra=""
  [ "$m" = rul ] && extra="--rul-fc-lr-factor 1"
  $fn train fp2k-sym50.parquet --method "$m" --epochs 10 --warmup 2 --image-size 48 --batch-size 128 \
    --lr-backbone 1e-3 --lr-head 1e-3 --weight-decay 0 --lr-decay 1 --seed 0 $start $extra \
    --runs-dir runs > "log-$m.txt" 2>&1 || { echo "train $m failed: $(tail -1 "log-$m.txt")"; continue; }
  run=$(grep -E "^(wrote|cache hit): " "log-$m.txt" | tail -1 | sed 's/^[a-z ]*: //')
  $fn eval "$run" > "eval-$m.txt" 2>&1 || echo "eval $m failed: $(tail -1 "eval-$m.txt")"
done
$fn report runs
