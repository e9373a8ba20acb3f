#!/usr/bin/env bash
# Device command for the lent GPU box (run from the repository root):
#   bash bench/gpu/run_on_device.sh
# Runs the model benchmark once (< 6 min on an H100); results land in $OUT (default ./.bench_out):
# model_bench.json (written after every configuration), model_bench.txt (the table), model_bench.log.
set -uo pipefail
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}."
export PYTHONUNBUFFERED=1
export OUT="${OUT:-./.bench_out}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$OUT/gpu.csv" 2>&1 || true
python bench/gpu/model_bench.py --profile --compile "$@" 2>&1 | tee "$OUT/model_bench.log"
exit "${PIPESTATUS[0]}"
