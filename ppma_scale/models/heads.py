"""Classification on top of a VideoViT trunk: fine-tune / align head and linear-probe head.

Both pool the trunk's tokens by their mean (no class token, as VideoMAE and PPMA). The linear
head normalises the pooled feature (VideoMAE's `fc_norm`); the probe head is MAE's linear probe,
a LayerNorm and a BatchNorm, neither with affine parameters, then a linear layer, on a frozen trunk.
"""
from __future__ import annotations

import torch
from torch import nn

from ppma_scale.models.vit import LN_EPS, VideoViT

HEADS = ("linear", "probe")


class LinearHead(nn.Module):
    """mean-pooled feature -> LayerNorm -> dropout -> Linear."""

    def __init__(self, dim: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=2e-5)
        nn.init.zeros_(self.fc.bias)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.norm(feature)))


class ProbeHead(nn.Module):
    """mean-pooled feature -> LayerNorm -> BatchNorm(affine=False) -> Linear (MAE's linear probe).

    The trunk's final norm is dropped for classification (heads pool first, then normalise), so the
    pooled feature is normalised here, as MAE's pooled probe (`fc_norm`) and PPMA's pooled feature
    (the trunk's norm after the mean) are. Its scale and shift would be undone by the BatchNorm
    that follows, so it has none: no weights to train or to load."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.fc = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.norm(feature)))


class VideoClassifier(nn.Module):
    """`forward(video) -> logits`. With head='probe' the trunk is frozen and kept in eval mode."""

    def __init__(self, encoder: VideoViT, num_classes: int, head: str = "linear", dropout: float = 0.0,
                 freeze_encoder: bool | None = None) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if num_classes < 1:
            raise ValueError(f"model.num_classes must be >= 1, got {num_classes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"model.head_dropout must be in [0, 1), got {dropout}")
        self.encoder = encoder
        self.num_classes = num_classes
        self.head_kind = head
        self.head = LinearHead(encoder.embed_dim, num_classes, dropout) if head == "linear" else \
            ProbeHead(encoder.embed_dim, num_classes)
        self.frozen_encoder = head == "probe" if freeze_encoder is None else freeze_encoder
        if self.frozen_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(video))

    def features(self, video: torch.Tensor) -> torch.Tensor:
        """Mean-pooled trunk tokens (B, D); no graph through a frozen trunk."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen_encoder):
            return self.encoder(video).mean(dim=1)

    def train(self, mode: bool = True) -> "VideoClassifier":
        super().train(mode)
        if self.frozen_encoder:
            self.encoder.eval()  # no drop path / dropout in a frozen trunk
        return self

    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()}

    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer groups for layer-wise lr decay; the head falls in the last (full-lr) group."""
        return dict(stem=r"^encoder\.(?:pos_embed|patch_embed)",
                    blocks=[(r"^encoder\.blocks\.(\d+)", None), (r"^encoder\.norm", (99999,))])
