"""Baseline for the model benchmarks: a plain eager video MAE computed the way VideoMAE's own code
does it (explicit q@k^T softmax attention, q/v biases, Conv3d over every tubelet, boolean-mask
indexing, targets normalised over the whole clip). Same shapes and FLOPs as our MAE; written
here from the paper's description, not copied.

Imports only torch, so the GPU benchmark can use it too.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def flat_sincos(num_tokens: int, dim: int) -> torch.Tensor:
    """VideoMAE's fixed 1-D table (1, N, dim)."""
    pos = torch.arange(num_tokens, dtype=torch.float64)[:, None]
    angles = pos / torch.pow(10000.0, 2 * (torch.arange(dim, dtype=torch.float64) // 2) / dim)
    table = torch.where(torch.arange(dim) % 2 == 0, angles.sin(), angles.cos())
    return table.float().unsqueeze(0)


class EagerAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class EagerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = EagerAttention(dim, heads)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class EagerVideoMAE(nn.Module):
    """`forward(video (B, C, T, H, W), mask (B, N) bool) -> loss`."""

    def __init__(self, dim: int, depth: int, heads: int, decoder_dim: int, decoder_heads: int,
                 num_frames: int = 16, img_size: int = 224, patch: int = 16, tubelet: int = 2,
                 mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.patch, self.tubelet = patch, tubelet
        self.grid = (num_frames // tubelet, img_size // patch, img_size // patch)
        num_tokens = self.grid[0] * self.grid[1] * self.grid[2]
        self.patch_embed = nn.Conv3d(3, dim, (tubelet, patch, patch), (tubelet, patch, patch))
        self.register_buffer("pos", flat_sincos(num_tokens, dim), persistent=False)
        self.register_buffer("decoder_pos", flat_sincos(num_tokens, decoder_dim), persistent=False)
        self.blocks = nn.ModuleList(EagerBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.encoder_to_decoder = nn.Linear(dim, decoder_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_blocks = nn.ModuleList(EagerBlock(decoder_dim, decoder_heads, mlp_ratio) for _ in range(4))
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.head = nn.Linear(decoder_dim, 3 * tubelet * patch * patch)
        self.checkpoint_blocks = False  # non-reentrant activation checkpointing of every block

    def run(self, blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        for block in blocks:
            x = checkpoint(block, x, use_reentrant=False) if self.checkpoint_blocks and x.requires_grad else block(x)
        return x

    def forward(self, video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b = video.shape[0]
        x = self.patch_embed(video).flatten(2).transpose(1, 2) + self.pos.to(video.dtype)
        x = self.run(self.blocks, x[~mask].reshape(b, -1, x.shape[-1]))
        x = self.encoder_to_decoder(self.norm(x))
        pos = self.decoder_pos.to(x.dtype).expand(b, -1, -1)
        visible = x + pos[~mask].reshape(b, -1, x.shape[-1])
        hidden = self.mask_token.to(x.dtype) + pos[mask].reshape(b, -1, x.shape[-1])
        x = self.run(self.decoder_blocks, torch.cat([visible, hidden], dim=1))
        pred = self.head(self.decoder_norm(x[:, -hidden.shape[1]:]))
        with torch.no_grad():
            target = self.targets(video.float())[mask].reshape(b, -1, pred.shape[-1])
        return F.mse_loss(pred.float(), target)

    def targets(self, video: torch.Tensor) -> torch.Tensor:
        """Every tubelet of the clip, normalised per channel over its pixels: (B, N, pixels*C)."""
        b, c, t, h, w = video.shape
        p, pt = self.patch, self.tubelet
        x = video.reshape(b, c, t // pt, pt, h // p, p, w // p, p).permute(0, 2, 4, 6, 3, 5, 7, 1)
        x = x.reshape(b, -1, pt * p * p, c)
        x = (x - x.mean(-2, keepdim=True)) / (x.var(-2, keepdim=True) + 1e-6).sqrt()
        return x.flatten(2)
