"""AdamW for our parameter groups, and the non-finite-gradient guard DeepSpeed lacks for plain fp32.

DeepSpeed skips an optimizer step whose gradient norm is not finite under ZeRO 1/2/3 (any
precision) and under its bf16/fp16 optimizers; only ZeRO-0 in fp32 hands the step straight to
torch's AdamW. There the trainer checks the gradients itself (`plain_gradients_finite`) and, if
they are not finite, zeroes them (so DeepSpeed's clipping still works) and runs `engine.step()`
with the optimizer's own step suppressed: weights, moments and step counts stay as they were.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch


def build_optimizer(param_groups: list[dict], *, betas: list[float], eps: float, offload: str,
                    device: torch.device) -> torch.optim.Optimizer:
    """torch AdamW (fused kernel on CUDA and CPU); DeepSpeed's CPU Adam when the state is offloaded."""
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ValueError(f"optim.betas must be two numbers in [0, 1), got {betas}")
    if offload == "cpu":
        from deepspeed.ops.adam import DeepSpeedCPUAdam  # JIT-builds a small C++ op on first use
        return DeepSpeedCPUAdam(param_groups, lr=0.0, betas=tuple(betas), eps=eps, adamw_mode=True)
    return torch.optim.AdamW(param_groups, lr=0.0, betas=tuple(betas), eps=eps, fused=device.type in ("cuda", "cpu"))


def deepspeed_skips_nonfinite(engine) -> bool:
    """Whether DeepSpeed itself checks gradients for inf/NaN before stepping (see module docstring)."""
    return hasattr(engine.optimizer, "overflow")


def plain_gradients_finite(engine) -> tuple[float, bool]:
    """For an un-wrapped optimizer, at the accumulation boundary after backward: (grad norm, finite).

    Non-finite gradients are zeroed in place; pair with `optimizer_step_suppressed`.
    """
    grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
    if not grads:
        return 0.0, True
    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))
    if math.isfinite(norm):
        return norm, True
    for grad in grads:
        grad.zero_()
    return norm, False


@contextmanager
def optimizer_step_suppressed(optimizer: torch.optim.Optimizer, active: bool) -> Iterator[None]:
    """While active, `optimizer.step()` does nothing (an instance attribute shadows the method)."""
    if not active:
        yield
        return
    optimizer.step = lambda *args, **kwargs: None
    try:
        yield
    finally:
        del optimizer.step
