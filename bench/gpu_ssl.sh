#!/usr/bin/env bash
# The phantom semi-supervised comparison on a lent GPU (issue 16): full method vs its control (the same
# batches, unlabeled crops forwarded, every unlabeled weight 0) vs supervised-only vs fully supervised
# (bench/ssl_seeds.py, configs/phantoms_ssl.yaml), both nets at the paper's width 16, eight phantom sets
# never used before (data seeds 20-27, reserved for this script) x two training seeds, JOBS trainings
# sharing the GPU. Sized to finish inside BUDGET seconds (default 540, under the 10 minutes one command
# may run on the device machine):
#   1. the phantom sets and their preprocessed arrays are generated in parallel (one process per set);
#   2. JOBS copies of the full method train TIME_ITERS (50) iterations at once (bench/ssl_timing.py):
#      the slowest copy's seconds per iteration is the rate under that load;
#   3. ITER = (time left - EVAL_S per wave of JOBS trainings) / (waves x that rate), rounded down to a
#      multiple of 10 and capped at ITER_MAX; below ITER_MIN the script stops and says so;
#   4. bench/ssl_seeds.py runs at ITER iterations, stopped by `timeout` at the budget if it overruns.
# Rule, fixed before any run (bench/RESULTS.md, "Pre-registered protocol (issue 16)"): the 95 % t-interval
# over the sets of the per-set mean over training seeds of Dice(full) - Dice(control) above 0; a run
# stopped by the budget is reported, never judged.
# Every finished training is kept in the work folder's results.json (copied to $OUT with RESULTS.md and the
# timing even when the budget stops the run); a rerun with the same ITER on the same warm machine resumes.
#   bench/gpu_ssl.sh                         # on the GPU machine
#   DEVICE=cpu WIDTH=2 SEEDS=90 TRAIN_SEEDS=1 CASES=10 TEST_CASES=2 PATCH="32 32 32" TIME_ITERS=2 \
#     ITER_MIN=2 ITER_MAX=4 JOBS=1 EVAL_S=5 BUDGET=400 EXTRA=--no-append bench/gpu_ssl.sh   # CPU smoke
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DEVICE=${DEVICE:-cuda}; WIDTH=${WIDTH:-16}; JOBS=${JOBS:-$(nproc)}; BUDGET=${BUDGET:-540}
SEEDS=${SEEDS:-"20 21 22 23 24 25 26 27"}; TRAIN_SEEDS=${TRAIN_SEEDS:-"1337 7"}
VARIANTS=${VARIANTS:-"control full supervised fully_supervised"}
CASES=${CASES:-40}; TEST_CASES=${TEST_CASES:-16}; PATCH=${PATCH:-"48 48 32"}
TIME_ITERS=${TIME_ITERS:-50}; ITER_MIN=${ITER_MIN:-200}; ITER_MAX=${ITER_MAX:-3000}; EVAL_S=${EVAL_S:-30}
start=$(date +%s)
left() { local s=$((BUDGET - ($(date +%s) - start))); echo $((s > 1 ? s : 1)); }
DATA=var/bench/ssl_data_${CASES}+${TEST_CASES}
TIMING=var/bench/ssl_timing_${DEVICE}_w${WIDTH}
mkdir -p "$DATA" "$TIMING"
[ "$DEVICE" = cuda ] && { nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true; }
set -f  # the word lists below are split on spaces, never globbed
# shellcheck disable=SC2206
seeds=($SEEDS); train_seeds=($TRAIN_SEEDS); variants=($VARIANTS); patch=($PATCH)

# 1. data, one process per set
"$PY" bench/ssl_seeds.py --prepare-only --jobs "${#seeds[@]}" --data-seeds "${seeds[@]}" --cases "$CASES" \
  --test-cases "$TEST_CASES" --patch "${patch[@]}" --width "$WIDTH" --data-root "$DATA" --work "$DATA"

# 2. the rate of JOBS concurrent trainings over their first TIME_ITERS iterations
rm -f "$TIMING"/t*.json
for i in $(seq 1 "$JOBS"); do
  "$PY" bench/ssl_timing.py --data-root "$DATA" --data-seed "${seeds[$(( (i - 1) % ${#seeds[@]} ))]}" \
    --cases "$CASES" --test-cases "$TEST_CASES" --patch "${patch[@]}" --width "$WIDTH" --device "$DEVICE" \
    --iterations "$TIME_ITERS" > "$TIMING/t$i.json" &
done
wait

# 3. size the run
trainings=$(( ${#seeds[@]} * ${#train_seeds[@]} * ${#variants[@]} ))
waves=$(( (trainings + JOBS - 1) / JOBS ))
read -r rate ITER < <("$PY" - "$TIMING" "$(left)" "$waves" "$EVAL_S" "$ITER_MAX" <<'EOF'
import json, math, pathlib, sys
folder, left, waves, eval_s, cap = sys.argv[1], *map(float, sys.argv[2:])
rate = max(json.loads(p.read_text())["seconds_per_iteration"] for p in pathlib.Path(folder).glob("t*.json"))
iters = int(min(cap, (left - waves * eval_s) / (waves * rate)) // 10 * 10) if cap >= 10 else int(cap)
print(f"{rate:.4f} {max(iters, 0)}")
EOF
)
echo "timing: $JOBS concurrent trainings, ${rate} s/iteration (first $TIME_ITERS iterations); $trainings trainings" \
  "in $waves wave(s); $(left) s left -> $ITER iterations per training" | tee "$TIMING/plan.txt"
WORK=var/bench/ssl_${DEVICE}_w${WIDTH}_i${ITER}
copy_out() {
  if [ -n "${OUT:-}" ]; then
    cp bench/RESULTS.md "$TIMING/plan.txt" "$OUT/"
    [ -f "$WORK/results.json" ] && cp "$WORK/results.json" "$OUT/"
  fi
  return 0
}
if [ "$ITER" -lt "$ITER_MIN" ]; then
  echo "not run: $ITER iterations fit the budget, fewer than ITER_MIN=$ITER_MIN (use fewer sets or a larger BUDGET)"
  copy_out
  exit 3
fi

# 4. the comparison
rc=0
# shellcheck disable=SC2086  # EXTRA is a word list
timeout "$(left)" "$PY" bench/ssl_seeds.py --device "$DEVICE" --threads 1 --jobs "$JOBS" --iterations "$ITER" \
  --width "$WIDTH" --patch "${patch[@]}" --cases "$CASES" --test-cases "$TEST_CASES" --data-seeds "${seeds[@]}" \
  --train-seeds "${train_seeds[@]}" --variants "${variants[@]}" --data-root "$DATA" --work "$WORK" \
  ${EXTRA:-} || rc=$?
copy_out
exit "$rc"
