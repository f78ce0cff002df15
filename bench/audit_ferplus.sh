#!/usr/bin/env bash
# "Finding FER2013's real label errors" of docs/results.md: fernoise audit on FERPlus crops whose
# training labels are FER2013's originals (`corrupt --kind column --column fer2013_label`; the FER+
# majority is the truth), from scratch at 48 px and from dlib's face start at 112 px; the same
# audit on 30% sym noise of the FER+ labels; then `ce` trained on the original labels, on
# `clean --drop` and on `clean --relabel` of the face audit (scratch audit without FACEAPI), each
# tested on the FER+ majority of FER2013Valid (all 3,199 rows).
#   bash bench/audit_ferplus.sh WORKDIR        (resumable: re-run after a kill; finished parts are hits)
# Environment (defaults in brackets): ROWS [4000] FERPlus training rows, FOLDS [3], EPOCHS [10]
# per fold from scratch, FACE_EPOCHS [4] per fold from the face start, FACEAPI [../shared/data/faceapi]
# (empty: no face audit), TRAIN_EPOCHS [15] of the downstream runs, FN [fernoise].
set -u
work=${1:?usage: bench/audit_ferplus.sh WORKDIR}
here=$(cd "$(dirname "$0")" && pwd)
fn=${FN:-fernoise}
rows=${ROWS:-4000}
folds=${FOLDS:-3}
faceapi=${FACEAPI-$here/../../shared/data/faceapi}
mkdir -p "$work" && cd "$work"
export FERNOISE_WORKSPACE="$work"
clean="fp${rows}-fer2013col.parquet"
[ -f "$clean" ] || python "$here/ferplus_manifest.py" "$clean" --train "$rows" --fer2013-column
$fn corrupt "$clean" --kind column --column fer2013_label --out real.parquet > corrupt-real.txt 2>&1
$fn corrupt "$clean" --kind sym --rate 0.3 --seed 0 --out sym30.parquet > corrupt-sym30.txt 2>&1
opt="--method ce --warmup 0 --batch-size 128 --lr-head 1e-3 --weight-decay 0 --lr-decay 1 --precision bf16 --augment device --seed 0"
scratch="$opt --epochs ${EPOCHS:-10} --image-size 48 --lr-backbone 1e-3"
face="$opt --epochs ${FACE_EPOCHS:-4} --image-size 112 --lr-backbone 1e-5 --backbone dlib-resnet29 --pretrained $faceapi"
audit() {  # audit NAME MANIFEST OPTIONS...: the log audit-NAME.txt; prints the audit folder
  local name=$1 manifest=$2; shift 2
  /usr/bin/time -f "wall %e s" $fn audit "$manifest" --folds "$folds" "$@" > "audit-$name.txt" 2>&1 \
    || { echo "audit $name failed: $(tail -1 "audit-$name.txt")" >&2; return 1; }
  grep -E "^(wrote|cache hit): " "audit-$name.txt" | tail -1 | sed 's/^[a-z ]*: //; s|/audit.parquet$||'
}
real_scratch=$(audit real-scratch real.parquet $scratch)
best=$real_scratch
if [ -n "$faceapi" ]; then
  best=$(audit real-face real.parquet $face) || best=$real_scratch
fi
audit sym30-scratch sym30.parquet $scratch > /dev/null
for action in drop relabel; do
  $fn clean "$best" --$action --out "real-$action.parquet" > "clean-$action.txt" 2>&1 \
    || echo "clean --$action failed: $(tail -1 "clean-$action.txt")"
done
for m in real real-drop real-relabel; do
  log="log-train-$m.txt"
  $fn train "$m.parquet" $scratch --epochs "${TRAIN_EPOCHS:-15}" > "$log" 2>&1 \
    || { echo "train $m failed: $(tail -1 "$log")"; continue; }
  run=$(grep -E "^(wrote|cache hit): " "$log" | tail -1 | sed 's/^[a-z ]*: //')
  $fn eval "$run" > "eval-$m.txt" 2>&1 || echo "eval $m failed: $(tail -1 "eval-$m.txt")"
  echo "$m: $run"
done
for f in audit-*.txt; do echo "== $f"; grep -E "audited|against|issues by|top pairs|wall" "$f"; done
