"""Position tables of imported weights: which kind a stored table is, which token grid it was made
for, and the table an encoder of another clip size should load.

A fixed table (VideoMAE's 1-D sin-cos, or the 3-D one) is recognised by comparing it with the formula
at the stored dtype's precision and regenerated for the new grid; a learned one is resampled from
its source grid, which a run's config or a file's metadata records (the token count alone can fit
several grids). Used by `models.convert` (`load_trunk_weights`) and `engine.pretrained`.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ppma_scale.models import pos_embed as pe
from ppma_scale.models.vit import VideoViT

StateDict = dict[str, torch.Tensor]
Grid = tuple[int, int, int]
FIXED_POS_LAYOUTS = ("videomae", "hf")  # layouts whose fixed 1-D table is not stored in the file


def trunk_token_grid(trunk: StateDict, geometry: tuple[int, int] | None) -> Optional[Grid]:
    """The token grid `trunk` ran at for clips of `geometry` (frames, size), if that fits its stored
    position table; None otherwise. Tells a learned table's grid when only the count is stored."""
    weight = trunk.get("patch_embed.proj.weight")
    if geometry is None or weight is None or weight.ndim != 5:
        return None
    (frames, size), (tubelet, patch) = geometry, weight.shape[2:4]
    if frames % tubelet or size % patch:
        return None
    return fits_table(trunk, (frames // tubelet, size // patch, size // patch))


def fits_table(trunk: StateDict, grid: tuple[int, ...]) -> Optional[Grid]:
    table = trunk.get("pos_embed")
    fits = len(grid) == 3 and (table is None or math.prod(grid) * table.shape[-1] == table.numel())
    return tuple(grid) if fits else None


def _fixed_table_atol(table: torch.Tensor) -> float:
    """How far a stored fixed table may be from the formula: its dtype's rounding (a bf16 export
    rounds sin-cos values by up to 4e-3) and no more, so a learned table is never taken for one."""
    return 1e-2 if table.dtype in (torch.bfloat16, torch.float16) else 1e-4


def _is_sincos_1d(table: torch.Tensor) -> bool:
    reference = pe.sincos_flat(table.shape[1], table.shape[-1])
    return torch.allclose(table.float(), reference, atol=_fixed_table_atol(table))


def _sincos_3d_grid(table: torch.Tensor, source_grid: Optional[Grid] = None
                    ) -> Optional[Grid]:
    """The grid a fixed 3-D sin-cos `table` (1, n, dim) was made for, or None. Recognised on any grid
    it may have had (frames and resolution may both differ from the target), so such a table is
    regenerated rather than resampled on a guessed grid."""
    candidates = [tuple(source_grid)] if source_grid else pe.square_grids(table.shape[1])
    atol = _fixed_table_atol(table)
    return next((g for g in candidates
                 if math.prod(g) == table.shape[1]
                 and torch.allclose(table.float(), pe.sincos_3d(g, table.shape[-1]), atol=atol)), None)


def pos_embed_kind(table: Optional[torch.Tensor], source_grid: Optional[Grid] = None) -> str:
    """What a checkpoint's position table is ('sincos_1d', 'sincos' or 'learned'), whatever grid it was
    made for: an encoder rebuilt at another clip geometry must regenerate the same kind of table."""
    if table is None:
        return "sincos_1d"  # the layouts without a stored table use VideoMAE's fixed 1-D table
    table = table.detach().reshape(1, -1, table.shape[-1])  # its own dtype: the tolerance follows it
    if _is_sincos_1d(table):
        return "sincos_1d"
    return "sincos" if _sincos_3d_grid(table, source_grid) else "learned"


def follow_table_kind(encoder: VideoViT, table: Optional[torch.Tensor], layout: str,
                      source_grid: Optional[Grid]) -> Optional[str]:
    """Make a fixed-table encoder regenerate the weights' kind of fixed table at other clip sizes
    (VideoMAE's 1-D table in a `sincos` model would become a 3-D one there); returns the new kind
    if it changed. A learned table in a fixed-table model is refused: only its own grid would work."""
    if table is None and layout not in FIXED_POS_LAYOUTS:
        return None
    kind = pos_embed_kind(table, source_grid)
    if kind == encoder.pos_embed_kind or encoder.pos_embed_kind == "learned":
        return None
    if kind == "learned":
        raise ValueError(f"the checkpoint's position table is learned but the model's is fixed "
                         f"({encoder.pos_embed_kind}): set model.pos_embed: learned")
    encoder.pos_embed_kind = kind
    encoder._pos_cache.clear()
    return kind


def adapt_pos(encoder: VideoViT, table: Optional[torch.Tensor], layout: str,
              source_grid: Optional[Grid]) -> tuple[torch.Tensor, str]:
    """The position table to load, and what was done to get it."""
    dim, grid = encoder.embed_dim, encoder.grid
    if table is None:
        if layout in FIXED_POS_LAYOUTS:
            return pe.sincos_flat(encoder.num_patches, dim), "1-D sin-cos (implicit in this layout)"
        return encoder.pos_embed.detach().clone(), "model's own (none in checkpoint)"
    if table.shape[-1] != dim:
        raise ValueError(f"pos_embed: checkpoint width {table.shape[-1]} != model width {dim} (check model.size)")
    table = table.detach().reshape(1, -1, dim)
    source_grid = tuple(source_grid) if source_grid else None
    if source_grid is not None and math.prod(source_grid) != table.shape[1]:
        raise ValueError(f"pos_embed: the checkpoint's table has {table.shape[1]} tokens, not the "
                         f"{math.prod(source_grid)} of its stated grid {source_grid}")
    if table.shape[1] == encoder.num_patches and source_grid in (None, tuple(grid)):
        return table.float(), "loaded"
    if _is_sincos_1d(table):
        return pe.sincos_flat(encoder.num_patches, dim), f"1-D sin-cos regenerated for {grid}"
    fixed_on = _sincos_3d_grid(table, source_grid)
    if fixed_on:
        return pe.sincos_3d(grid, dim), f"3-D sin-cos of grid {fixed_on} regenerated for {grid}"
    guessed = "" if source_grid else " (source grid guessed from the token count: pass it if this is wrong)"
    old_grid = source_grid or pe.infer_grid(table.shape[1], grid)
    with torch.no_grad():
        return pe.resample(table.float(), old_grid, grid), f"resampled {old_grid} -> {grid}{guessed}"
