"""Analytic FLOPs of a training step, for TFLOP/s and MFU.

Counted: every matmul (tubelet embedding, qkv, q@k^T, attn@v, projections, MLPs, decoder, head),
at 2 FLOPs per multiply-add, as the model runs them: the MAE decoder's last block has only the
reconstructed tokens as queries (the visible tokens' outputs are never computed). Backward is twice
the forward, except where no input gradient is needed (the tubelet embedding, and the head over a
frozen trunk: weight gradient only).
Activation-checkpoint recomputation is not counted (model FLOPs, not hardware FLOPs), nor are
norms, softmax and GELU. This is exactly what `torch.utils.flop_counter.FlopCounterMode` counts
for the explicit-attention path; SDPA's fused backward is counted there at 2.5x forward for the
attention matmuls (it recomputes the scores), which the tests and the GPU benchmark show.
"""
from __future__ import annotations

from typing import Optional

from torch import nn

# Dense bf16 peak TFLOP/s per GPU, by a substring of torch.cuda.get_device_name() (first match wins).
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200 NVL", 835.0), ("H200", 989.0),
    ("H800", 989.0), ("GH200", 989.0), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0),
    ("L40", 181.0), ("A10G", 70.0), ("A10", 125.0), ("L4", 121.0),  # longer names first: "L40" holds "L4"
)


def peak_tflops(device_name: str) -> Optional[float]:
    """Dense bf16 peak of a GPU from its name (A100 312, H100 SXM 989, ...); None if unknown."""
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


def block_flops(tokens: int, dim: int, mlp_hidden: int, queries: Optional[int] = None) -> float:
    """Forward FLOPs of one transformer block over `tokens` tokens, of which only `queries` (all by
    default) are queries and have outputs (the MAE decoder's last block: the reconstructed ones)."""
    queries = tokens if queries is None else queries
    projections = 2 * dim * (3 * dim * tokens + dim * queries)  # qkv of all tokens + output projection
    attention = 2 * 2 * queries * tokens * dim  # q@k^T and attn@v over all heads
    mlp = 2 * 2 * queries * dim * mlp_hidden
    return float(projections + attention + mlp)


def encoder_flops(encoder: nn.Module, tokens: int) -> tuple[float, float]:
    """(forward FLOPs of the blocks, forward FLOPs of the tubelet embedding) over `tokens` tokens."""
    size = encoder.size
    embed = 2.0 * tokens * size.embed_dim * encoder.in_chans * encoder.tubelet * encoder.patch_size ** 2
    return size.depth * block_flops(tokens, size.embed_dim, size.mlp_hidden), embed


def mask_counts(grid: tuple[int, int, int], mask_ratio: float, decoder_mask_ratio: float = 0.0,
                mask_type: str = "random") -> tuple[int, int]:
    """(visible tokens, reconstructed tokens) per clip, counted as `ppma_scale.data.masking` does:
    round(ratio * N) masked tokens (tube: round(ratio * H'W') per frame), and decoder masking keeps
    max(1, masked - round(decoder_ratio * masked)) of them."""
    if not 0.0 <= mask_ratio < 1.0 or not 0.0 <= decoder_mask_ratio < 1.0:
        raise ValueError(f"mask ratios must be in [0, 1), got {mask_ratio}, {decoder_mask_ratio}")
    t, h, w = grid
    if mask_type == "tube":
        masked = t * int(round(h * w * mask_ratio))
    elif mask_type == "random":
        masked = int(round(t * h * w * mask_ratio))
    else:
        raise ValueError(f"mae.mask_type must be 'random' or 'tube', got {mask_type!r}")
    targets = masked if decoder_mask_ratio == 0.0 else max(1, masked - int(round(masked * decoder_mask_ratio)))
    return t * h * w - masked, min(masked, targets)


def flops_per_clip(model: nn.Module, mask_ratio: float = 0.0, decoder_mask_ratio: float = 0.0,
                   trunk_trainable: bool = True, num_visible: Optional[int] = None,
                   num_targets: Optional[int] = None, mask_type: str = "random") -> float:
    """Forward + backward FLOPs of one clip through an MAE, a VideoClassifier or a bare VideoViT.

    For an MAE the token counts come from the ratios and `mask_type` (or `num_visible` /
    `num_targets` when the exact counts of a batch are known); a classifier or trunk sees every token.
    """
    from ppma_scale.models.heads import VideoClassifier
    from ppma_scale.models.mae import MAE
    from ppma_scale.models.vit import VideoViT

    if isinstance(model, MAE):
        encoder = model.encoder
        visible, targets = mask_counts(encoder.grid, mask_ratio, decoder_mask_ratio, mask_type)
        visible = num_visible if num_visible is not None else visible
        targets = num_targets if num_targets is not None else targets
        blocks, embed = encoder_flops(encoder, visible)
        dec_dim = model.decoder_embed.out_features
        dec_hidden = model.decoder_blocks[0].mlp.fc1.out_features
        tokens = visible + targets
        decoder = (2.0 * visible * encoder.embed_dim * dec_dim
                   + (len(model.decoder_blocks) - 1) * block_flops(tokens, dec_dim, dec_hidden)
                   + block_flops(tokens, dec_dim, dec_hidden, queries=targets)  # the last computes targets only
                   + 2.0 * targets * dec_dim * model.decoder_pred.out_features)
        return 3 * (blocks + decoder) + 2 * embed
    if isinstance(model, VideoClassifier):
        blocks, embed = encoder_flops(model.encoder, model.encoder.num_patches)
        head = 2.0 * model.encoder.embed_dim * model.num_classes
        trunk_trainable = trunk_trainable and not model.frozen_encoder
        if trunk_trainable:
            return 3 * (blocks + head) + 2 * embed
        return blocks + embed + 2 * head
    if isinstance(model, VideoViT):
        blocks, embed = encoder_flops(model, model.num_patches)
        return 3 * blocks + 2 * embed if trunk_trainable else blocks + embed
    raise TypeError(f"flops_per_clip needs an MAE, VideoClassifier or VideoViT, got {type(model).__name__}")


def mfu(flops_per_clip_: float, clips_per_second: float, peak: Optional[float]) -> Optional[float]:
    """Model FLOPs utilisation (0..1) per GPU, or None when the peak is unknown."""
    if not peak:
        return None
    return flops_per_clip_ * clips_per_second / (peak * 1e12)
