#!/usr/bin/env bash
# Device command for a lent GPU box, from the repository root (one call, about 3 minutes on an H100):
#   bash bench/e2e/run_on_device.sh
# DeepSpeed and its pure-Python needs travel as wheels in .engine_whl/ (see bench/e2e/RESULTS.md).
# Results in $OUT: e2e_vitb.json, engine_gpu.json, and the log.
set -uo pipefail
export OUT="${OUT:-./.bench_out}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .engine_whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.csv"
python3 -c "import torch, deepspeed; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__)"
# 1. engine mechanics on the GPU (NCCL world of one): bf16 ZeRO-2 and ZeRO-3, a poisoned step skipped,
#    consolidated export equal to the live master weights.
python3 - <<'PY' 2>&1 | tee "$OUT/engine_gpu.log"
import json, os, subprocess, sys
out = os.environ["OUT"] + "/matrix"
cases = [{"name": n, "train": {"zero_stage": z, "precision": "bf16", "max_steps": 4, "ckpt_every": 1}, "poison": [2]}
         for n, z in (("z2_bf16", 2), ("z3_bf16", 3))]
os.makedirs(out, exist_ok=True)
done = subprocess.run([sys.executable, "tests/engine/helpers/engine_worker.py", out, json.dumps(cases)])
import torch
from safetensors.torch import load_file
summary = {}
for c in cases:
    r = json.load(open(f"{out}/{c['name']}.json"))
    live = torch.load(f"{out}/{c['name']}_live.pt")
    sums = r["weight_sums"]
    summary[c["name"]] = {"rc": done.returncode, "error": r["error"], "step": r.get("step"),
                          "skipped_step_unchanged": sums["2"] == sums["3"], "real_step_changed": sums["3"] != sums["4"],
                          "events": [e for e in map(json.loads, open(f"{out}/{c['name']}/events.jsonl")) if e["event"] == "nonfinite"]}
print(json.dumps(summary, indent=1))
json.dump(summary, open(os.environ["OUT"] + "/engine_gpu.json", "w"), indent=1)
PY
# 2. the loop's cost over a bare DeepSpeed loop, TFLOP/s and MFU as the trainer reports them, checkpoint cost.
python3 bench/e2e/bench_trainer.py --size b --frames 16 --img 224 --micro 32 --mask-ratio 0.9 --precision bf16 \
    --zero 2 --steps 40 --warmup 10 --saves 2 --no-universal --json "$OUT/e2e_vitb.json" 2>&1 | grep -v "^step" | tail -8
