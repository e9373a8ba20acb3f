"""Baseline for the q/k/v split: timm's order ((3, B, H, N, D) by a permute), put back into our blocks.

`VideoAttention` splits along the packed axis instead, which saves one copy of the q/k/v gradients
per block in backward (same values; tests/models/test_vit.py). The GPU benchmark times both in one run.
"""
from __future__ import annotations

from types import MethodType
from typing import Optional

import torch
import torch.nn.functional as F

from ppma_scale.models.vit import VideoAttention


def timm_split_forward(self: VideoAttention, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                       is_causal: bool = False, keep_last: Optional[int] = None) -> torch.Tensor:
    """timm 1.0's Attention.forward (SDPA path), with queries from the last `keep_last` tokens."""
    b, n, _ = x.shape
    q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q = q if keep_last is None else q[:, :, -keep_last:]
    o = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v)
    return self.proj(self.norm(o.transpose(1, 2).reshape(b, q.shape[2], self.attn_dim)))


def use_timm_split(model: torch.nn.Module) -> torch.nn.Module:
    """Swap every VideoAttention's forward for timm's split, in place (dropout-free benchmarks only)."""
    for module in model.modules():
        if isinstance(module, VideoAttention):
            module.forward = MethodType(timm_split_forward, module)
    return model
