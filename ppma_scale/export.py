"""Consolidated weights from a run's checkpoint, as one safetensors file (no pickle, any ZeRO stage).

    python -m ppma_scale.export RUN_DIR|CHECKPOINT [--dtype fp32|bf16] [--output FILE] [--overwrite]

ZeRO 1/2/3 checkpoints (and bf16 ones, whose fp32 master weights sit in per-rank optimizer files)
are merged with DeepSpeed's `get_fp32_state_dict_from_zero_checkpoint`; a ZeRO-0 fp32 checkpoint
already holds the whole module. Keys are the model's own (`encoder.*`, `decoder.*` for MAE), so
`ppma_scale.models.convert` and `model.init` read the file directly.
"""
from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path

import torch
import yaml

from .engine.checkpoint import Checkpoint, find_checkpoint
from .cli import refuse_replacing_outputs, run_tool

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class _WeightsOnlyTorch:
    """`torch` as DeepSpeed's zero_to_fp32 sees it during a merge: its `torch.load` reads tensors and
    DeepSpeed's own bookkeeping classes only. DeepSpeed passes weights_only=False, which would run
    whatever a pickled object in a checkpoint file asks for; a run folder may come from anyone."""

    def __getattr__(self, name: str):
        return getattr(torch, name)

    @staticmethod
    def load(f, *args, **kwargs):
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address
        kwargs.pop("weights_only", None)  # DeepSpeed passes False
        with torch.serialization.safe_globals([LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]):
            return torch.load(f, *args, weights_only=True, **kwargs)


def _merge_zero_partitions(ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    from deepspeed.utils import zero_to_fp32
    original = zero_to_fp32.torch
    zero_to_fp32.torch = _WeightsOnlyTorch()
    try:
        return zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(str(ckpt.root), tag=ckpt.tag)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{ckpt.path}: a checkpoint file holds an object other than tensors and DeepSpeed's "
                         f"own records, which export does not unpickle: {str(exc).splitlines()[0]}") from None
    finally:
        zero_to_fp32.torch = original


def consolidated_state_dict(ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    """The full fp32 state dict of the model in `ckpt`, on the CPU."""
    if any(ckpt.path.glob("*zero_pp_rank_*_optim_states.pt")):
        state = _merge_zero_partitions(ckpt)
    else:
        model_file = ckpt.path / "mp_rank_00_model_states.pt"
        if not model_file.is_file():
            raise FileNotFoundError(f"{ckpt.path} holds neither ZeRO optimizer partitions nor {model_file.name}")
        state = torch.load(model_file, map_location="cpu", weights_only=True)["module"]
    return {name: tensor.detach().float().contiguous() for name, tensor in state.items()}


def export_checkpoint(source: str | Path, output: str | Path | None = None, dtype: str = "fp32",
                      overwrite: bool = False) -> Path:
    """Write the weights of the checkpoint `source` names (run dir, checkpoints/ or step_N) to
    safetensors; an existing output is replaced only with `overwrite` (checked before the merge)."""
    from .models.convert import save_safetensors
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    ckpt = find_checkpoint(source, what="export source")
    output = Path(output) if output is not None else ckpt.root.parent / "export" / f"{ckpt.tag}.safetensors"
    if ckpt.root.resolve() in output.expanduser().resolve().parents:  # even with --overwrite: it is the input
        raise ValueError(f"the output {output} is inside {ckpt.root}, the checkpoints being exported: write "
                         "it elsewhere (default: RUN_DIR/export/)")
    refuse_replacing_outputs([output], overwrite)
    from .engine.blend_export import checkpoint_blend, is_blend
    from .engine.resume_guard import saved_config
    state = consolidated_state_dict(ckpt)
    marker = json.loads((ckpt.path / "ppma_complete.json").read_text())
    config, _ = saved_config(ckpt, marker)  # this checkpoint's own config (a resume may have changed it)
    metadata = {"format": "ppma_scale", "task": str(marker.get("task", "")), "step": str(ckpt.step),
                "dtype": dtype, "source": str(ckpt.path)}
    if is_blend(state):  # alpha and a head: the trunk is rebuilt from the blended sources
        state = checkpoint_blend(ckpt, state)
        metadata["blended_from"] = json.dumps(config["model"]["average"])
    state = {k: v.to(DTYPES[dtype]) for k, v in state.items()}
    if marker.get("classes"):  # logit i is classes[i]; `ppma-convert --to hf` turns it into id2label
        metadata["classes"] = json.dumps(marker["classes"])
    if config is not None:
        metadata["config"] = yaml.safe_dump(config, sort_keys=False)
    return save_safetensors(state, output, metadata=metadata)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ppma_scale.export", description=__doc__.split("\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("run_dir", help="a run directory, its checkpoints/ folder, or one step_N checkpoint")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--output", default=None, help="file to write (default RUN_DIR/export/step_N.safetensors)")
    parser.add_argument("--overwrite", action="store_true", help="replace the output if it already exists")
    args = parser.parse_args(argv)
    def work() -> int:
        print(export_checkpoint(args.run_dir, args.output, args.dtype, args.overwrite))
        return 0
    return run_tool("export", work)


if __name__ == "__main__":
    sys.exit(main())
