#!/usr/bin/env python
"""Stage 2 of PPMA ("align"): supervised classification over a shared label space on synthetic
videos of virtual humans (+ labelled no-human clips), starting from the stage-1 MAE trunk.

    deepspeed --num_gpus 8 launch/align.py --config configs/align/vitb.yaml model.init=runs/mae_vitb \\
        'data.train=[{manifest: /data/synapt/manifest.json}, {manifest: /data/nohuman150/manifest.json}]'
    python launch/align.py --config configs/demo/align.yaml --output runs/demo/align
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout works without `pip install -e`

from ppma_scale.cli import launch  # noqa: E402
from ppma_scale.engine.dist import run_rank  # noqa: E402

if __name__ == "__main__":
    run_rank(lambda: launch(sys.argv[1:], stage="align", tasks=("classify",)))
