"""A stage's launch script, counting the start-up work each rank does: shard stats, checkpoint zip
opens, ZeRO merges of a run named by model.init / model.average, saved data-state files read and
data-epoch continuations worked out on a resume. Writes COUNTS_DIR/counts_<rank>.json
as the rank ends. Usage: counting_launch.py COUNTS_DIR STAGE ARGS... (STAGE: pretrain, align, finetune,
linprobe)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ppma_scale import export  # noqa: E402
from ppma_scale.cli import launch  # noqa: E402
from ppma_scale.data import loader, shards  # noqa: E402
from ppma_scale.engine import checkpoint  # noqa: E402
from ppma_scale.engine.dist import run_rank  # noqa: E402

TASKS = {"pretrain": ("mae",), "align": ("classify",), "finetune": ("classify",), "linprobe": ("linprobe",)}
counts = {"shard_stats": 0, "zip_checks": 0, "zero_merges": 0, "data_state_files": 0, "continue_plans": 0}


def counted(module, name: str, key: str, how_many=lambda *args, **kwargs: 1) -> None:
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        counts[key] += how_many(*args, **kwargs)
        return original(*args, **kwargs)
    setattr(module, name, wrapper)


def main() -> int:
    counted(shards, "_size_or_error", "shard_stats")
    counted(checkpoint, "_zip_problem", "zip_checks")
    counted(export, "consolidated_state_dict", "zero_merges")
    counted(checkpoint.CheckpointManager, "load_rank_states", "data_state_files",
            how_many=lambda manager, ckpt, ranks: len(list(ranks)))
    counted(loader, "continue_plan", "continue_plans")
    out, stage = Path(sys.argv[1]), sys.argv[2]
    try:
        return launch(sys.argv[3:], stage=stage, tasks=TASKS[stage])
    finally:
        (out / f"counts_{os.environ.get('RANK', '0')}.json").write_text(json.dumps(counts))


if __name__ == "__main__":
    run_rank(main)
