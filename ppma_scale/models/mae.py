"""Masked autoencoder for video (VideoMAE / PPMA stage 1), written to read like the paper.

Hide most tubelets; the encoder sees only the visible ones (gathered, never mask-multiplied);
a narrow decoder gets the encoded visible tokens plus a shared mask token at each position to
reconstruct, and predicts those tubelets' pixels, normalised per patch. Its last block computes
only the reconstructed tokens (the visible ones' outputs would be thrown away). Optionally the
decoder reconstructs only a subset of the masked tokens (VideoMAE V2 decoder masking).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ppma_scale.models import pos_embed as pe
from ppma_scale.models.vit import (LN_EPS, VideoViT, compile_each_block, default_init_skipped, gather_tokens,
                                   gather_tubelets, init_weights, make_blocks, run_blocks)

TARGET_NORMS = ("per_channel", "all", "none")


class MAE(nn.Module):
    """`forward(video, mask, decoder_mask=None) -> (loss, extras)`; masks are bool (B, N), True = hidden.

    Pass the masks on the CPU (as made) to keep the step free of device syncs; they are moved here.
    """

    def __init__(self, encoder: VideoViT, decoder_dim: Optional[int] = None, decoder_depth: int = 4,
                 decoder_heads: Optional[int] = None, target_norm: str = "per_channel",
                 decoder_act_checkpoint_every: Optional[int] = None) -> None:
        super().__init__()
        size = encoder.size
        decoder_heads = decoder_heads or size.decoder_heads_for(decoder_dim)
        decoder_dim = decoder_dim or size.decoder_dim
        if target_norm not in TARGET_NORMS:
            raise ValueError(f"mae.target_norm must be one of {TARGET_NORMS}, got {target_norm!r}")
        if decoder_depth < 1:
            raise ValueError(f"mae.decoder_depth must be >= 1, got {decoder_depth}")
        if decoder_dim % decoder_heads or decoder_dim % 2:
            raise ValueError(f"mae.decoder_dim {decoder_dim} must be even and divisible by "
                             f"mae.decoder_heads {decoder_heads}")
        self.encoder = encoder
        self.target_norm = target_norm
        self.act_checkpoint_every = (encoder.act_checkpoint_every if decoder_act_checkpoint_every is None
                                     else decoder_act_checkpoint_every)
        pixels_per_token = encoder.in_chans * encoder.tubelet * encoder.patch_size ** 2

        with default_init_skipped():
            self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_dim)
            self.decoder_blocks = make_blocks(decoder_dim, decoder_depth, decoder_heads, size.mlp_ratio,
                                              qkv_bias=True, layer_scale=None, drop_path=0.0)
            self.decoder_pred = nn.Linear(decoder_dim, pixels_per_token)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_kind = encoder.pos_embed_kind  # the decoder's own (weights loaded later may change the encoder's)
        if encoder.pos_embed_kind == "learned":
            self.decoder_pos_embed = nn.Parameter(torch.zeros(1, encoder.num_patches, decoder_dim))
        else:
            self.register_buffer("decoder_pos_embed",
                                 pe.fixed_table(encoder.pos_embed_kind, encoder.grid, decoder_dim))
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=LN_EPS)
        for module in (self.decoder_embed, self.decoder_blocks, self.decoder_pred):
            init_weights(module)
        nn.init.normal_(self.mask_token, std=0.02)
        if encoder.pos_embed_kind == "learned":
            nn.init.trunc_normal_(self.decoder_pos_embed, std=0.02)
        self._pos_cache: dict = {}
        compile_each_block(self.decoder_blocks, encoder.compile_options)  # as the encoder's: `model.compile`

    # ----------------------------------------------------------------------------- the method

    def forward(self, video: torch.Tensor, mask: torch.Tensor,
                decoder_mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, dict]:
        grid = self.encoder.grid_of(video)
        visible_idx, target_idx = self.split_tokens(mask, decoder_mask, grid, video.device)
        latent = self.encoder(video, visible_idx)
        pred = self.decode(latent, visible_idx, target_idx, grid)
        target = self.targets(video, target_idx)
        loss = F.mse_loss(pred.float(), target)
        return loss, {"pred": pred, "target_idx": target_idx, "visible_idx": visible_idx}

    def split_tokens(self, mask: torch.Tensor, decoder_mask: Optional[torch.Tensor],
                     grid: tuple[int, int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices (ascending) of the visible tokens and of the tokens to reconstruct.

        Masks may arrive on the CPU: they are checked there (no device sync) and then moved.
        """
        num_visible, num_targets = check_masks(mask, decoder_mask, grid)
        mask = mask.to(device, non_blocking=True)
        decoder_mask = None if decoder_mask is None else decoder_mask.to(device, non_blocking=True)
        order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)  # visible first, then masked
        visible_idx = order[:, :num_visible]
        if decoder_mask is None:
            return visible_idx, order[:, num_visible:]
        chosen = torch.argsort((~decoder_mask).to(torch.int8), dim=1, stable=True)
        return visible_idx, chosen[:, :num_targets]

    def decode(self, latent: torch.Tensor, visible_idx: torch.Tensor, target_idx: torch.Tensor,
               grid: tuple[int, int, int]) -> torch.Tensor:
        """Encoded visible tokens + mask tokens at the target positions -> pixels of the targets."""
        x = self.decoder_embed(latent)
        pos = pe.table_for_grid(self.decoder_pos_embed, self.decoder_pos_kind, self.encoder.grid,
                                grid, self._pos_cache).to(x.dtype)
        queries = self.mask_token.to(x.dtype) + gather_tokens(pos, target_idx)
        x = torch.cat([x + gather_tokens(pos, visible_idx), queries], dim=1)
        x = run_blocks(self.decoder_blocks, x, self.act_checkpoint_every, keep_last=target_idx.shape[1])
        return self.decoder_pred(self.decoder_norm(x))

    def targets(self, video: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Pixels of the tubelets at `index`, normalised per patch (per channel or over all)."""
        kernel = self.encoder.patch_embed.proj.kernel_size  # the tubelet, as the embedding cuts it
        x = gather_tubelets(video, index, kernel).flatten(3).float()  # B, M, C, pixels
        if self.target_norm != "none":
            # Two passes (mean, then squares of the centred values): torch.var is ~10x slower here.
            dims = (-1,) if self.target_norm == "per_channel" else (-2, -1)
            x = x - x.mean(dim=dims, keepdim=True)
            count = math.prod(x.shape[d] for d in dims)
            x = x * torch.rsqrt(x.square().sum(dim=dims, keepdim=True) / (count - 1) + 1e-6)
        return x.transpose(-1, -2).flatten(2)  # (pixels C) per token, as patchify orders them

    # -------------------------------------------------------------------------------- helpers

    def patchify(self, video: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, N, pt*ph*pw, C): tubelets in (t, h, w) order, channel last."""
        p, pt = self.encoder.patch_size, self.encoder.tubelet
        return rearrange(video, "b c (t pt) (h ph) (w pw) -> b (t h w) (pt ph pw) c", pt=pt, ph=p, pw=p)

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """(B, N, pt*ph*pw*C) -> (B, C, T, H, W), e.g. to look at reconstructions."""
        p, pt = self.encoder.patch_size, self.encoder.tubelet
        t, h, w = grid
        return rearrange(tokens, "b (t h w) (pt ph pw c) -> b c (t pt) (h ph) (w pw)",
                         t=t, h=h, w=w, pt=pt, ph=p, pw=p)

    def no_weight_decay(self) -> set[str]:
        names = {f"encoder.{n}" for n in self.encoder.no_weight_decay()} | {"mask_token"}
        if self.decoder_pos_kind == "learned":
            names.add("decoder_pos_embed")
        return names


def check_masks(mask: torch.Tensor, decoder_mask: Optional[torch.Tensor],
                grid: tuple[int, int, int]) -> tuple[int, int]:
    """(visible count, target count) per row; ValueError unless every row has the same counts.

    The counts fix the shapes of the gathered tensors, so they must reach the host: one read for
    all checks, free for CPU masks, a device sync for GPU masks.
    """
    num_tokens = grid[0] * grid[1] * grid[2]
    for name, m in (("mask", mask), ("decoder_mask", decoder_mask)):
        if m is None:
            continue
        if m.dtype != torch.bool or m.ndim != 2 or m.shape[1] != num_tokens:
            raise ValueError(f"{name} must be a bool tensor of shape (B, {num_tokens}) for a {grid} token "
                             f"grid, got {m.dtype} {tuple(m.shape)}")
    stats = [mask.sum(1).min(), mask.sum(1).max()]
    if decoder_mask is not None:
        if decoder_mask.shape != mask.shape:
            raise ValueError(f"decoder_mask shape {tuple(decoder_mask.shape)} != mask shape {tuple(mask.shape)}")
        counts = decoder_mask.sum(1)
        stats += [counts.min(), counts.max(), (decoder_mask & ~mask).sum()]
    values = torch.stack(stats).tolist()
    if values[0] != values[1]:
        raise ValueError(f"every row of mask must hide the same number of tokens; got {values[0]}..{values[1]}")
    num_masked = int(values[0])
    if not 0 < num_masked < num_tokens:
        raise ValueError(f"mask hides {num_masked} of {num_tokens} tokens; it must hide some but not all")
    if decoder_mask is None:
        return num_tokens - num_masked, num_masked
    if values[2] != values[3] or values[2] == 0:
        raise ValueError(f"every row of decoder_mask must select the same, non-zero number of tokens; "
                         f"got {values[2]}..{values[3]}")
    if values[4]:
        raise ValueError("decoder_mask selects visible tokens; it must be a subset of mask")
    return num_tokens - num_masked, int(values[2])
