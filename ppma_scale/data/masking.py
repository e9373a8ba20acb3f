"""MAE masks over the token grid (T', H', W'), flattened in (t, h, w) order; True = masked.

- `random` (PPMA, mae_st): each row masks exactly round(N * ratio) tokens anywhere.
- `tube` (VideoMAE): each row masks exactly round(H'W' * ratio) spatial positions, the same at
  every time step, so a masked patch cannot be copied from its neighbour in time.
- decoder mask (VideoMAE V2 running cell): the decoder reconstructs only part of the masked
  tokens. A 2x2 spatial cell keeps round(4 * (1 - decoder_ratio)) of its positions, and the kept
  positions shift by one every time step ("running"). Each row starts the cycle at a random one of
  the 4 phases (as VideoMAE V2), so every position is reconstructed equally often over samples.
  Rows keep exactly num_masked - round(num_masked * decoder_ratio) (at least 1) masked tokens: the running-cell ones
  first, random ones to make the count exact (the model needs equal counts to batch).
"""
from __future__ import annotations

import torch


def _count(total: int, ratio: float, what: str) -> int:
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"{what} must be in [0, 1), got {ratio}")
    return int(round(total * ratio))


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask with True at the k lowest scores of each row (exact count per row)."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k:
        mask.scatter_(1, scores.argsort(dim=1)[:, :k], True)
    return mask


def running_cell_keep(grid: tuple[int, int, int], decoder_ratio: float, device=None,
                      phase: torch.Tensor | None = None) -> torch.Tensor:
    """Bool (N,): the positions a running 2x2 cell keeps for reconstruction at each time step; with
    `phase` (B,) of 0..3, (B, N): each row's cycle started at its phase. A fixed phase would never
    reconstruct half of the positions (those outside the pattern at every step of every sample)."""
    t, h, w = grid
    keep = int(round(4 * (1.0 - decoder_ratio)))
    tt = torch.arange(t, device=device).view(t, 1, 1)
    cell = (torch.arange(h, device=device).view(1, h, 1) % 2) * 2 + torch.arange(w, device=device).view(1, 1, w) % 2
    step = (cell + tt).reshape(-1)
    if phase is not None:
        step = step.unsqueeze(0) + phase.view(-1, 1)
    return (step % 4) < keep


def make_masks(kind: str, batch: int, grid: tuple[int, int, int], ratio: float, decoder_ratio: float = 0.0,
               generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(mask, decoder_mask | None), both bool (batch, T'*H'*W'); decoder_mask is a subset of mask."""
    t, h, w = (int(g) for g in grid)
    if min(t, h, w) < 1:
        raise ValueError(f"mask grid must be positive (T', H', W'), got {grid}")
    n = t * h * w
    if kind == "random":
        mask = _lowest(torch.rand(batch, n, generator=generator, device=device), _count(n, ratio, "mae.mask_ratio"))
    elif kind == "tube":
        spatial = _lowest(torch.rand(batch, h * w, generator=generator, device=device),
                          _count(h * w, ratio, "mae.mask_ratio"))
        mask = spatial.unsqueeze(1).expand(batch, t, h * w).reshape(batch, n)
    else:
        raise ValueError(f"mae.mask_type must be 'random' or 'tube', got {kind!r}")
    if decoder_ratio == 0.0:
        return mask, None
    masked = int(mask[0].sum()) if batch else 0
    kept = min(masked, max(1, masked - _count(masked, decoder_ratio, "mae.decoder_mask_ratio")))
    # score: running-cell tokens first (0..1), other masked tokens next (1..2), visible tokens never (3)
    phase = torch.randint(4, (batch,), generator=generator, device=device)
    scores = torch.rand(batch, n, generator=generator, device=device)
    scores = scores + (~running_cell_keep((t, h, w), decoder_ratio, device, phase)).float()
    scores = scores.masked_fill(~mask, 3.0)
    return mask, _lowest(scores, kept)
