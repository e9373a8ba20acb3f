#!/usr/bin/env python
"""Stage 1 of PPMA: video MAE on (human-free) clips.

    deepspeed --num_gpus 8 launch/pretrain.py --config configs/vitl.yaml data.train=/data/nohuman/manifest.json
    torchrun --nproc_per_node 8 launch/pretrain.py --config configs/vitl.yaml ...
    python launch/pretrain.py --config configs/demo/pretrain.yaml --output runs/demo

Every stage's launcher also takes --allow-config-change: resume even though run-defining keys
(optim.*, augment.*, micro_batch, ...) changed since the checkpoint; the changes are logged and
written to RUN/config.resume-step_N.yaml (see ppma_scale/engine/resume_guard.py).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout works without `pip install -e`

from ppma_scale.cli import launch  # noqa: E402
from ppma_scale.engine.dist import run_rank  # noqa: E402

if __name__ == "__main__":
    run_rank(lambda: launch(sys.argv[1:], stage="pretrain", tasks=("mae",)))
