"""The training engine: one DeepSpeed loop (trainer.py) for every stage; tasks (tasks.py) say what to train.

`run` is imported on first use so that light modules of this package (evaluate, averaging) do not pull
in DeepSpeed.
"""


def run(*args, **kwargs):
    """`ppma_scale.engine.trainer.run(cfg, run_dir=None, resume='auto', task=None) -> TrainResult`."""
    from .trainer import run as _run
    return _run(*args, **kwargs)
