#!/usr/bin/env bash
# One prepared GPU check for a lent H100/H200 (≤ 8 minutes, nothing fetched from the internet).
# Runs the inference and training benchmarks on CUDA and prints their tables; with RECORD=1 they are
# appended to bench/RESULTS.md (copy it back from $OUT). Needs the project's venv or the wheels installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
rec=""; [ "${RECORD:-0}" = 1 ] && rec="--record"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 300 "$PY" bench/inference.py --device cuda --sizes 128x128x96,256x256x96 --batch 4 --repeat 3 $rec
timeout 300 "$PY" bench/inference.py --device cuda --amp --sizes 128x128x96,256x256x96 --batch 4 --repeat 3 $rec
timeout 180 "$PY" bench/training.py --device cuda --presets la_10pct --iterations 5 $rec
[ -n "${OUT:-}" ] && cp bench/RESULTS.md "$OUT/" || true
