"""launch/pretrain.py with every DeepSpeed checkpoint file write slowed by SLOW_SAVE_S seconds, so a
test can land a signal inside a save. Usage: slow_save_launch.py PRETRAIN_ARGS..."""
from __future__ import annotations

import os
import runpy
import sys
import time
from pathlib import Path

import deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine as engine_module

REPO = Path(__file__).resolve().parents[2]
original = engine_module.TorchCheckpointEngine.save


def slow_save(self, state_dict, path):
    time.sleep(float(os.environ.get("SLOW_SAVE_S", "2")))
    return original(self, state_dict, path)


engine_module.TorchCheckpointEngine.save = slow_save
sys.argv = [str(REPO / "launch" / "pretrain.py"), *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
