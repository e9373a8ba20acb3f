"""The data pipeline: shard sets -> exact, resumable streams of uint8 clips (see loader.py).

Names are imported on first use, so `ppma_scale.data.manifest` (used by the pack tools) does not
pull in torch and the decoders.
"""
from importlib import import_module

_EXPORTS = {
    "build_train_stream": "loader", "TrainStream": "loader",
    "build_eval_stream": "evalstream", "EvalStream": "evalstream",
    "make_masks": "masking", "normalize_video": "transforms", "BatchAugment": "transforms",
    "SourceSpec": "shards",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"ppma_scale.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'ppma_scale.data' has no attribute {name!r}")
