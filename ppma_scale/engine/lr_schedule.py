"""Peak lr from the batch size, and linear warmup into a cosine decay, evaluated per optimizer step.

The schedule is a pure function of the optimizer step, so a resumed run needs no scheduler state.
The peak lr is scaled by the global batch exactly once (the PPMA reference divides by the scale a
second time when entering the cosine phase, so its decay starts at half the peak when the batch
differs from the nominal one; here the cosine phase starts at the peak whatever the batch).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable


def peak_lr(lr: float | None, base_lr: float, lr_ref_batch: int, global_batch: int) -> float:
    """`lr` when given; otherwise base_lr * global_batch / lr_ref_batch (the linear scaling rule)."""
    if lr is not None:
        if lr <= 0:
            raise ValueError(f"optim.lr must be positive, got {lr}")
        return float(lr)
    if lr_ref_batch <= 0:
        raise ValueError(f"optim.lr_ref_batch must be a positive batch size, got {lr_ref_batch}")
    if base_lr <= 0:
        raise ValueError(f"optim.base_lr must be positive, got {base_lr}")
    return base_lr * global_batch / lr_ref_batch


@dataclass(frozen=True)
class WarmupCosine:
    """lr(step): linear 0 -> peak over `warmup_steps`, then cosine peak -> min_lr at `total_steps`.

    `step` counts optimizer steps from 0; the lr used *for* step s is `self(s)`, so step 0 of a
    warmup runs at peak / warmup_steps rather than at 0 (a zero-lr step would be wasted).
    """

    peak: float
    total_steps: int
    warmup_steps: int = 0
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        if self.total_steps <= 0:
            raise ValueError(f"the run has {self.total_steps} optimizer steps; set train.epochs or "
                             "train.max_steps so that it has at least one")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup must be >= 0 steps, got {self.warmup_steps}")
        if not 0 <= self.min_lr <= self.peak:
            raise ValueError(f"optim.min_lr must lie in [0, peak lr = {self.peak:g}], got {self.min_lr:g}")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.peak * (step + 1) / self.warmup_steps
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.min_lr + (self.peak - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def apply_lr(param_groups: Iterable[dict], lr: float) -> None:
    """Set every group's lr, honouring a per-group `lr_scale` (layer-wise lr decay)."""
    for group in param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
