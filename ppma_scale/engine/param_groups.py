"""AdamW parameter groups: no weight decay on biases, norms and position embeddings; layer-wise lr decay.

Layer decay (stage 2 / fine-tuning) gives transformer block i the lr scale
`decay ** (depth + 1 - layer_id)` with layer_id 0 for the embeddings, i + 1 for `blocks.i` and
depth + 1 for everything after the trunk (final norm, head). Parameters may sit under a prefix
(`encoder.blocks.3...`), so the block index is found anywhere in the name.
"""
from __future__ import annotations

import re
from typing import Iterable

from torch import nn

_BLOCK_INDEX = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_EMBEDDING_PARTS = ("patch_embed", "pos_embed", "cls_token", "mask_token")


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full parameter names without weight decay: 1-d tensors (biases, norms) and what modules declare.

    A module's `no_weight_decay()` names are relative to that module; they are prefixed here.
    """
    names = {name for name, param in model.named_parameters() if param.ndim <= 1}
    for prefix, module in model.named_modules():
        declared = getattr(module, "no_weight_decay", None)
        if callable(declared):
            for name in declared():
                names.add(f"{prefix}.{name}" if prefix else name)
    return names


def layer_id(name: str, depth: int) -> int:
    """0 for embeddings, i + 1 for transformer block i, depth + 1 for the rest."""
    match = _BLOCK_INDEX.search(name)
    if match:
        return int(match.group(1)) + 1
    if any(part in name.split(".") for part in _EMBEDDING_PARTS):
        return 0
    return depth + 1


def build_param_groups(
    named_params: Iterable[tuple[str, nn.Parameter]],
    weight_decay: float,
    skip_decay: set[str],
    layer_decay: float | None = None,
    depth: int | None = None,
) -> list[dict]:
    """Groups for AdamW; frozen parameters are left out. Each group carries `lr_scale` for the schedule."""
    if layer_decay is not None:
        if not 0 < layer_decay <= 1:
            raise ValueError(f"optim.layer_decay must be in (0, 1], got {layer_decay}")
        if depth is None:
            raise ValueError("layer decay needs the trunk depth (number of transformer blocks)")
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in named_params:
        if not param.requires_grad:
            continue
        decay = name not in skip_decay
        lid = layer_id(name, depth) if layer_decay is not None else 0
        scale = layer_decay ** (depth + 1 - lid) if layer_decay is not None else 1.0
        group = groups.setdefault((lid, decay), {
            "params": [], "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale})
        group["params"].append(param)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return [groups[key] for key in sorted(groups)]
