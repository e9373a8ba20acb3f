"""Position embeddings for (t, h, w) token grids: fixed sin-cos tables and resampling.

Two fixed tables exist in the wild and both are here, because weights only work with the table
they were trained with: a 3-D separable sin-cos (each axis gets its own sin-cos block, so the
table stays meaningful when frames or resolution change) and the flat 1-D table of VideoMAE,
OmniMAE/PPMA and Hugging Face VideoMAE (position = token index in (t, h, w) order).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Grid = tuple[int, int, int]


def _sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """[sin(p * w_i), cos(p * w_i)] with w_i = 10000^(-i / (dim/2)): positions (n,) -> (n, dim)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_3d(grid: Grid, dim: int) -> torch.Tensor:
    """3-D sin-cos table (1, T*H*W, dim): width split between t, h and w (h and w equal, even)."""
    if dim % 2:
        raise ValueError(f"sin-cos position embedding needs an even width, got {dim}")
    spatial = (dim // 3) // 2 * 2
    temporal = dim - 2 * spatial
    t, h, w = grid
    tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    table = torch.cat([_sincos_1d(tt.flatten(), temporal), _sincos_1d(hh.flatten(), spatial),
                       _sincos_1d(ww.flatten(), spatial)], dim=1)
    return table.to(torch.float32).unsqueeze(0)


def sincos_flat(num_tokens: int, dim: int) -> torch.Tensor:
    """VideoMAE's 1-D table (1, N, dim): angle p / 10000^(2*(j//2)/dim), sin on even j, cos on odd."""
    positions = torch.arange(num_tokens, dtype=torch.float64)[:, None]
    exponent = 2 * (torch.arange(dim, dtype=torch.float64) // 2) / dim
    angles = positions / torch.pow(torch.tensor(10000.0, dtype=torch.float64), exponent)[None, :]
    table = torch.empty_like(angles)
    table[:, 0::2] = angles[:, 0::2].sin()
    table[:, 1::2] = angles[:, 1::2].cos()
    return table.to(torch.float32).unsqueeze(0)


def fixed_table(kind: str, grid: Grid, dim: int) -> torch.Tensor:
    """The fixed table of `kind` ('sincos' 3-D or 'sincos_1d' flat) for `grid`."""
    if kind == "sincos":
        return sincos_3d(grid, dim)
    if kind == "sincos_1d":
        return sincos_flat(math.prod(grid), dim)
    raise ValueError(f"model.pos_embed {kind!r} has no fixed table; fixed kinds are 'sincos', 'sincos_1d'")


def resample(pos: torch.Tensor, old_grid: Grid, new_grid: Grid) -> torch.Tensor:
    """Interpolate a (1, N, D) table from `old_grid` to `new_grid`: bicubic in space, linear in time."""
    if tuple(old_grid) == tuple(new_grid):
        return pos
    (t0, h0, w0), (t1, h1, w1) = old_grid, new_grid
    dim = pos.shape[-1]
    if pos.shape[1] != t0 * h0 * w0:
        raise ValueError(f"position table has {pos.shape[1]} tokens, not {t0}x{h0}x{w0}")
    dtype = pos.dtype
    x = pos.float().reshape(t0, h0, w0, dim).permute(0, 3, 1, 2)  # T, D, H, W
    if (h0, w0) != (h1, w1):
        x = F.interpolate(x, size=(h1, w1), mode="bicubic", align_corners=False)
    x = x.permute(1, 2, 3, 0).reshape(1, dim * h1 * w1, t0)  # 1, D*H*W, T
    if t0 != t1:
        x = F.interpolate(x, size=t1, mode="linear", align_corners=False)
    x = x.reshape(dim, h1, w1, t1).permute(3, 1, 2, 0).reshape(1, t1 * h1 * w1, dim)
    return x.to(dtype)


def square_grids(num_tokens: int) -> list[Grid]:
    """Every (T, S, S) grid of `num_tokens` tokens (the shapes a square-frame table can have had)."""
    return [(num_tokens // (side * side), side, side) for side in range(1, math.isqrt(num_tokens) + 1)
            if num_tokens % (side * side) == 0]


def infer_grid(num_tokens: int, like: Grid) -> Grid:
    """The grid a table of `num_tokens` most likely had, given the current grid `like`.

    Tries "only the frames differ" and "only the (square) resolution differs"; raises when neither
    or both fit, asking for the source grid explicitly.
    """
    t, h, w = like
    if num_tokens == t * h * w:
        return like
    candidates = []
    if num_tokens % (h * w) == 0:
        candidates.append((num_tokens // (h * w), h, w))
    side = math.isqrt(num_tokens // t) if num_tokens % t == 0 else 0
    if side and side * side * t == num_tokens:
        candidates.append((t, side, side))
    if len(candidates) != 1:
        raise ValueError(f"cannot tell the token grid of a {num_tokens}-token position table for a model "
                         f"with grid {like}; pass source_grid=(T, H, W) (CLI: --source-grid T H W)")
    return candidates[0]


def table_for_grid(stored: torch.Tensor, kind: str, stored_grid: Grid, grid: Grid,
                   cache: dict) -> torch.Tensor:
    """The table to add for an input whose token grid is `grid`.

    The stored table when the grid matches; otherwise a learned table is resampled and a fixed
    one regenerated for the new grid (cached per grid, device and dtype).
    """
    if tuple(grid) == tuple(stored_grid):
        return stored
    if kind == "learned":
        return resample(stored, stored_grid, grid)
    key = (tuple(grid), stored.device, stored.dtype)
    if key not in cache:
        cache[key] = fixed_table(kind, grid, stored.shape[-1]).to(stored.device, stored.dtype)
    return cache[key]
