"""Derive the DeepSpeed config dict from our YAML: one source of truth for batch, precision and sharding.

The optimizer is built by us (AdamW with our parameter groups) and the lr is set by our schedule,
so the DeepSpeed config carries no `optimizer` / `scheduler` sections: only batch geometry,
precision, ZeRO stage, offload, clipping and checkpoint loading.
"""
from __future__ import annotations

from typing import Any

import torch

# fp16 dynamic loss scaling: start at 2**16, halve on overflow, double after 1000 clean steps.
FP16_INITIAL_SCALE_POWER = 16
FP16_SCALE_WINDOW = 1000
PRECISIONS = ("bf16", "fp16", "fp32")


def check_precision_supported(precision: str, device: torch.device) -> None:
    """Refuse, naming train.precision, a precision this rank's device cannot train in. DeepSpeed's
    own error ("Type fp16 is not supported on your device") names neither the key nor a way out,
    and a CPU without AVX-512 FP16 (any AVX2-only machine) has no fp16."""
    from ..config import ConfigError
    if device.type == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"train.precision=bf16: {torch.cuda.get_device_name(device)} cannot compute in bf16 "
                              "(A100, H100 and newer can); use fp16 or fp32")
        return
    if precision == "fp16":
        from deepspeed.accelerator import get_accelerator
        if not get_accelerator().is_fp16_supported():
            raise ConfigError("train.precision=fp16: DeepSpeed cannot train in fp16 on this CPU (it needs AVX-512 "
                              "FP16); use bf16 or fp32 here, or run on GPUs")


def precision_bytes(precision: str) -> int:
    """Bytes per weight, gradient or activation element in `precision` (train.precision)."""
    return 4 if precision == "fp32" else 2
OFFLOADS = ("none", "cpu")


def build_ds_config(
    *,
    micro_batch: int,
    grad_accum: int,
    world_size: int,
    zero_stage: int,
    precision: str,
    offload: str = "none",
    offload_params: bool = False,
    clip_grad: float | None = None,
    load_universal: bool = False,
) -> dict[str, Any]:
    """A DeepSpeed config for `micro_batch` clips per rank per forward, `grad_accum` forwards per step.

    Raises ValueError naming the config key when a combination cannot work.
    """
    if micro_batch < 1:
        raise ValueError(f"train.micro_batch must be >= 1, got {micro_batch}")
    if grad_accum < 1:
        raise ValueError(f"train.grad_accum must be >= 1, got {grad_accum}")
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"train.zero_stage must be 0, 1, 2 or 3, got {zero_stage}")
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision must be one of {PRECISIONS}, got {precision!r}")
    if offload not in OFFLOADS:
        raise ValueError(f"train.offload must be one of {OFFLOADS}, got {offload!r}")
    if offload != "none" and zero_stage == 0:
        raise ValueError("train.offload=cpu needs ZeRO (train.zero_stage 1, 2 or 3): stage 0 keeps the "
                         "optimizer state where the gradients are")
    if offload_params and (zero_stage != 3 or offload == "none"):
        raise ValueError("train.offload_params needs train.zero_stage=3 and train.offload=cpu: only "
                         "ZeRO-3 shards (and can offload) the parameters themselves")
    if clip_grad is not None and clip_grad <= 0:
        raise ValueError(f"optim.clip_grad must be positive or null (no clipping), got {clip_grad}")

    zero: dict[str, Any] = {"stage": zero_stage}
    if zero_stage > 0:
        zero.update(overlap_comm=True, contiguous_gradients=True, reduce_bucket_size=int(5e8))
    if zero_stage == 3:
        # Gather a block's parameters just before use and release them after: ViT blocks are uniform.
        zero.update(stage3_prefetch_bucket_size=int(5e7), stage3_param_persistence_threshold=int(1e5),
                    stage3_gather_16bit_weights_on_model_save=False)
    if offload == "cpu":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}

    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch * grad_accum * world_size,
        "gradient_clipping": float(clip_grad) if clip_grad is not None else 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16", "check_grad_overflow": True},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0,
                 "initial_scale_power": FP16_INITIAL_SCALE_POWER, "loss_scale_window": FP16_SCALE_WINDOW,
                 "hysteresis": 2, "min_loss_scale": 1},
        "steps_per_print": 10**12,  # we log; keep DeepSpeed's own step prints out of the console
        "wall_clock_breakdown": False,
    }
    if load_universal:
        config["checkpoint"] = {"load_universal": True}
    return config
