"""The one table of video ViT sizes (widths, depths, heads, patches, MAE decoder widths).

Rows follow the published ViTs as VideoMAE / VideoMAE V2 use them for video (tubelet 2x16x16;
g is 1408 wide, 40 deep, 14-px patches, MLP 6144). `tiny` is not a published model: it is small
enough to train on a CPU in the demo and the tests.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

# Published encoder parameter counts (millions), for the tests and for `describe()`.
PUBLISHED_PARAMS_M = {"s": 22.0, "b": 86.0, "l": 304.0, "h": 632.0, "g": 1011.0}


@dataclass(frozen=True)
class ViTSize:
    """Shape of a ViT trunk and the width of its MAE decoder."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    patch_size: int = 16
    decoder_dim: int = 512
    decoder_head_count: Optional[int] = None  # where VideoMAE's are not 64 wide (ViT-H: 8 of 80)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def decoder_heads(self) -> int:
        """Default decoder heads: VideoMAE's, 64-wide (192/3, 384/6, 512/8) except ViT-H's (640/8)."""
        return self.decoder_head_count or max(1, self.decoder_dim // 64)

    def decoder_heads_for(self, decoder_dim: Optional[int]) -> int:
        """Default heads of a decoder `decoder_dim` wide (None: this size's own): the table's for
        this size's width, else 64-wide heads."""
        if decoder_dim is None or decoder_dim == self.decoder_dim:
            return self.decoder_heads
        return max(1, decoder_dim // 64)


SIZES: dict[str, ViTSize] = {
    "tiny": ViTSize(embed_dim=96, depth=4, num_heads=3, decoder_dim=64),
    "s": ViTSize(embed_dim=384, depth=12, num_heads=6, decoder_dim=192),
    "b": ViTSize(embed_dim=768, depth=12, num_heads=12, decoder_dim=384),
    "l": ViTSize(embed_dim=1024, depth=24, num_heads=16, decoder_dim=512),
    "h": ViTSize(embed_dim=1280, depth=32, num_heads=16, decoder_dim=640, decoder_head_count=8),
    "g": ViTSize(embed_dim=1408, depth=40, num_heads=16, mlp_ratio=48 / 11, patch_size=14, decoder_dim=512),
}


def resolve_size(name: str, **overrides: Optional[float]) -> ViTSize:
    """The row `name` of SIZES with the non-None `overrides` applied, validated.

    Raises ValueError naming the problem: an unknown size, an unknown field, or a shape that cannot
    work (width not divisible by the heads, odd width for sin-cos position embeddings).
    """
    key = name.lower()
    if key not in SIZES:
        raise ValueError(f"model.size {name!r} is not a known size; choose one of {', '.join(SIZES)}")
    fields = {f.name for f in dataclasses.fields(ViTSize)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown ViTSize field(s) {unknown}; valid: {sorted(fields)}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    size = dataclasses.replace(SIZES[key], **changes)
    for field_name in ("embed_dim", "depth", "num_heads", "patch_size", "decoder_dim"):
        value = getattr(size, field_name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"model.{field_name} must be a positive integer, got {value!r}")
    if size.mlp_ratio <= 0:
        raise ValueError(f"model.mlp_ratio must be positive, got {size.mlp_ratio}")
    if size.embed_dim % size.num_heads:
        raise ValueError(f"model.embed_dim {size.embed_dim} is not divisible by model.num_heads "
                         f"{size.num_heads}")
    if size.embed_dim % 2:
        raise ValueError(f"model.embed_dim must be even (sin-cos position embedding), got {size.embed_dim}")
    return size
