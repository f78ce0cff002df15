#!/bin/bash
# One fernoise sweep spread over a SLURM job array: task i runs share i of N of the grid's cells,
# all tasks write into one shared workspace (a file system with working flock: local, NFSv4,
# Lustre mounted with -o flock, GPFS). No scheduler of ours: resubmitting the same array later
# finishes what is missing, and finished cells are cache hits.
#
#   sbatch --array=0-7 examples/slurm_sweep.sh grids/paper-table5.toml
#
# Before submitting, make the clean aligned manifest once (fernoise align ...) in WORKSPACE, or
# pass it as the second argument. Each task here gets one GPU; with --gres=gpu:4 per task, add
# --gpus "$CUDA_VISIBLE_DEVICES" to run four cells of its share at once.
#SBATCH --job-name=fernoise-sweep
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=24:00:00
#SBATCH --output=sweep-%A_%a.log
set -euo pipefail

GRID=${1:?usage: sbatch --array=0-N examples/slurm_sweep.sh GRID.toml [MANIFEST]}
MANIFEST=${2:-}
WORKSPACE=${WORKSPACE:-$SLURM_SUBMIT_DIR}
VENV=${VENV:-$SLURM_SUBMIT_DIR/.venv}

SHARD=$((SLURM_ARRAY_TASK_ID - ${SLURM_ARRAY_TASK_MIN:-0} + 1))
SHARDS=${SLURM_ARRAY_TASK_COUNT:?run this script as a job array: sbatch --array=0-N}

cd "$WORKSPACE"
# Exit code: 0 when every cell of this share is done, 1 when some failed (see sweeps/<name>/<manifest>/).
# SWEEP_ARGS: more options, e.g. SWEEP_ARGS=--dry-run to see what each share would run.
# shellcheck disable=SC2086
exec "$VENV/bin/fernoise" sweep "$GRID" ${MANIFEST:+"$MANIFEST"} --shard "$SHARD/$SHARDS" --workspace "$WORKSPACE" ${SWEEP_ARGS:-}
