#!/usr/bin/env bash
# The phantom semi-supervised comparison (bench/ssl_seeds.py: supervised-only vs the full method of
# configs/phantoms_ssl.yaml, paired per phantom set) on a lent GPU, at a larger budget than the CPU runs:
# both nets at the paper's width 16, ITER iterations (default 2000), eight phantom sets never used before
# (data seeds 20-27), JOBS trainings sharing the GPU. Not yet run on a GPU: the first run sets the timings.
# Rule, fixed before any run: bench/ssl_seeds.py's (the 95 % t-interval over the sets of
# Dice(full) - Dice(supervised) above 0); a run stopped by LIMIT is reported, never judged.
# Every finished training is kept in the work folder's results.json (copied to $OUT with RESULTS.md even when
# LIMIT stops the run); a rerun on the same warm machine resumes from it.
#   bench/gpu_ssl.sh                         # on the GPU machine
#   DEVICE=cpu ITER=2 WIDTH=2 SEEDS=90 EXTRA=--no-append bench/gpu_ssl.sh   # smoke run on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DEVICE=${DEVICE:-cuda}; ITER=${ITER:-2000}; WIDTH=${WIDTH:-16}; JOBS=${JOBS:-8}; LIMIT=${LIMIT:-480}
SEEDS=${SEEDS:-"20 21 22 23 24 25 26 27"}
WORK=var/bench/ssl_${DEVICE}_w${WIDTH}_i${ITER}
[ "$DEVICE" = cuda ] && { nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true; }
rc=0
# shellcheck disable=SC2086  # SEEDS and EXTRA are word lists
timeout "$LIMIT" "$PY" bench/ssl_seeds.py --device "$DEVICE" --threads 1 --jobs "$JOBS" --iterations "$ITER" \
  --width "$WIDTH" --data-seeds $SEEDS --work "$WORK" ${EXTRA:-} || rc=$?
if [ -n "${OUT:-}" ]; then
  cp bench/RESULTS.md "$OUT/"
  [ -f "$WORK/results.json" ] && cp "$WORK/results.json" "$OUT/"
fi
exit "$rc"
