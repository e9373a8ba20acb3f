#!/usr/bin/env python
"""Downstream linear probe: a frozen trunk (bit-identical after training), features computed once,
a BatchNorm + linear head trained on them. With model.average, the frozen trunks are blended with
learned weights (adaptive averaging) and features are computed on every step instead.

    deepspeed --num_gpus 4 launch/linprobe.py --config configs/downstream/ucf101_lp.yaml \\
        model.init=runs/align_vitb data.train=/data/ucf101/train/manifest.json data.val=/data/ucf101/test/manifest.json
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout works without `pip install -e`

from ppma_scale.cli import launch  # noqa: E402
from ppma_scale.engine.dist import run_rank  # noqa: E402

if __name__ == "__main__":
    run_rank(lambda: launch(sys.argv[1:], stage="linprobe", tasks=("linprobe",)))
