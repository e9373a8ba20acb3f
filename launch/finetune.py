#!/usr/bin/env python
"""Downstream fine-tuning: the whole trunk trains from model.init with a new linear head.

    deepspeed --num_gpus 4 launch/finetune.py --config configs/downstream/ucf101_ft.yaml \\
        model.init=runs/align_vitb data.train=/data/ucf101/train/manifest.json data.val=/data/ucf101/test/manifest.json
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout works without `pip install -e`

from ppma_scale.cli import launch  # noqa: E402
from ppma_scale.engine.dist import run_rank  # noqa: E402

if __name__ == "__main__":
    run_rank(lambda: launch(sys.argv[1:], stage="finetune", tasks=("classify",)))
