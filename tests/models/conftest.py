"""Small models for the model tests: 4 frames of 32x32 px in 2x8x8 tubelets -> a 2x4x4 token grid."""
from __future__ import annotations

import pytest
import torch

from ppma_scale.models import MAE, VideoViT, resolve_size

FRAMES, IMG = 4, 32
SMALL = dict(embed_dim=48, depth=3, num_heads=3, patch_size=8, decoder_dim=32)


def small_encoder(**kwargs) -> VideoViT:
    size = resolve_size("tiny", **{**SMALL, **kwargs.pop("size", {})})
    return VideoViT(size, num_frames=FRAMES, img_size=IMG, **kwargs)


def random_masks(batch: int, num_tokens: int, num_masked: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    order = torch.stack([torch.randperm(num_tokens, generator=gen) for _ in range(batch)])
    return order < num_masked  # True for num_masked random tokens per row


@pytest.fixture()
def video() -> torch.Tensor:
    return torch.randn(2, 3, FRAMES, IMG, IMG, generator=torch.Generator().manual_seed(1))


@pytest.fixture()
def small_mae() -> MAE:
    torch.manual_seed(0)
    return MAE(small_encoder(), decoder_depth=2)


@pytest.fixture()
def make_encoder():
    """small_encoder(**VideoViT kwargs, size={ViTSize overrides})."""
    return small_encoder


@pytest.fixture()
def make_masks():
    """random_masks(batch, num_tokens, num_masked, seed=0) -> bool (B, N), exact count per row."""
    return random_masks
