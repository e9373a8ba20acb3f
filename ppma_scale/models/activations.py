"""Analytic activation memory of a training step: the bytes autograd keeps for the backward pass.

Model states (weights, gradients, optimizer) are counted by `engine.dry_run.model_state_bytes`;
this counts what decides the largest micro-batch. Per transformer block of width d, MLP width m and
h heads, over n tokens of which q are queries (all but in the MAE decoder's last block), with e
bytes per activation element (2 in bf16 / fp16, 4 in fp32), autograd keeps

    n * (5 d e + 8)  +  q * ((3 d + 2 m) e + 8 + 4 h)

- over every token: the block input (LayerNorm's input), the normalised input (the qkv
  projection's input) and the qkv output (keys and values, queries are views of it), plus
  LayerNorm's mean and inverse deviation in fp32;
- over the queries: the attention output (the fused kernels lay it out token-major, so merging the
  heads for the output projection is a view, not a copy), the second residual input and its
  normalisation, the MLP's hidden pre- and post-GELU, the second LayerNorm's fp32 statistics, and
  the fused attention's fp32 log-sum-exp per head.

With fused attention no n x n matrix is kept. A block under activation checkpointing keeps only
its input; during the backward pass one such block at a time is recomputed in full, which is the
`recompute` part. `tests/models/test_activations.py` checks the count against the bytes autograd
really saves (CPU, bf16 and fp32); bench/gpu/RESULTS.md compares it with the H100's peak memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import nn

LN_STATS = 8  # LayerNorm's fp32 mean and inverse deviation per token
LSE = 4  # the fused attention's fp32 log-sum-exp per query and head


@dataclass(frozen=True)
class ActivationBytes:
    """Bytes per clip (one view): kept from forward to backward, and one checkpointed block's
    recomputation at a time on top of that (0 without checkpointing)."""

    saved: float
    recompute: float
    frozen_trunk: bool = False  # only a head trains: the trunk runs without keeping anything

    def peak(self, clips: int) -> float:
        """Activation bytes at the start of the backward pass for a forward batch of `clips`."""
        return clips * (self.saved + self.recompute)


def block_bytes(tokens: int, queries: int, dim: int, mlp_hidden: int, heads: int, elem: int) -> float:
    """Bytes one block keeps for backward (see the module doc) over `tokens`, `queries` of them queries."""
    return float(tokens * (5 * dim * elem + LN_STATS)
                 + queries * ((3 * dim + 2 * mlp_hidden) * elem + LN_STATS + LSE * heads))


def stack_bytes(blocks: nn.ModuleList, tokens: int, elem: int, checkpoint_every: int,
                last_queries: Optional[int] = None) -> tuple[float, float]:
    """(kept, largest recomputed) bytes of a stack of blocks, checkpointing every k-th as `run_blocks`
    does; the last block has `last_queries` queries when given (the MAE decoder's)."""
    kept, recompute = 0.0, 0.0
    last = len(blocks) - 1
    for i, block in enumerate(blocks):
        dim, hidden = block.mlp.fc1.in_features, block.mlp.fc1.out_features
        full = block_bytes(tokens, last_queries if (i == last and last_queries) else tokens, dim, hidden,
                           block.attn.num_heads, elem)
        if checkpoint_every > 0 and i % checkpoint_every == 0:
            kept += tokens * dim * elem  # its input, held for the recomputation
            recompute = max(recompute, full)
        else:
            kept += full
    return kept, recompute


def activation_bytes(model: nn.Module, elem: int, mask_ratio: float = 0.0, decoder_mask_ratio: float = 0.0,
                     mask_type: str = "random", num_visible: Optional[int] = None,
                     num_targets: Optional[int] = None, trunk_trainable: bool = True) -> ActivationBytes:
    """Activation bytes per clip of an MAE or a VideoClassifier in training, with `elem` bytes per
    activation element. An MAE's token counts come from the ratios as in `flops.flops_per_clip`
    (or `num_visible` / `num_targets`)."""
    from ppma_scale.models.flops import mask_counts
    from ppma_scale.models.heads import VideoClassifier
    from ppma_scale.models.mae import MAE

    if isinstance(model, MAE):
        encoder = model.encoder
        visible, targets = mask_counts(tuple(encoder.grid), mask_ratio, decoder_mask_ratio, mask_type)
        num_visible = visible if num_visible is None else num_visible
        num_targets = targets if num_targets is None else num_targets
        dim, dec_dim = encoder.embed_dim, model.decoder_embed.out_features
        pixels = model.decoder_pred.out_features
        enc_kept, enc_re = stack_bytes(encoder.blocks, num_visible, elem, encoder.act_checkpoint_every)
        dec_kept, dec_re = stack_bytes(model.decoder_blocks, num_visible + num_targets, elem,
                                       model.act_checkpoint_every, last_queries=num_targets)
        extras = (num_visible * pixels * elem  # the visible tubelets' pixels, the embedding's input
                  + num_visible * (2 * dim * elem + LN_STATS)  # final norm's input, decoder_embed's input
                  + num_targets * (2 * dec_dim * elem + LN_STATS)  # decoder_norm's and decoder_pred's inputs
                  + num_targets * pixels * 4 * 2)  # the loss in fp32: predictions and targets
        return ActivationBytes(enc_kept + dec_kept + extras, max(enc_re, dec_re))
    if isinstance(model, VideoClassifier):
        encoder = model.encoder
        if not trunk_trainable or model.frozen_encoder:
            return ActivationBytes(2.0 * encoder.embed_dim * elem, 0.0, frozen_trunk=True)  # the head's input
        kept, recompute = stack_bytes(encoder.blocks, encoder.num_patches, elem, encoder.act_checkpoint_every)
        clip = encoder.in_chans * encoder.num_patches * encoder.tubelet * encoder.patch_size ** 2
        return ActivationBytes(kept + clip * elem + 2.0 * encoder.embed_dim * elem, recompute)
    raise TypeError(f"activation_bytes needs an MAE or a VideoClassifier, got {type(model).__name__}")


# The H100 ViT-L MAE step (bf16, micro-batch 256, no checkpointing; bench/gpu/RESULTS.md, second run)
# peaked at this multiple of its model states plus this estimate: the rest is working memory (the
# loss's gradients in flight at the start of the backward pass, kernels' workspaces, the allocator's
# rounding). `tests/models/test_activations.py` recomputes it from that run's results file.
MEASURED_PEAK_OVER_ESTIMATE = 1.09
