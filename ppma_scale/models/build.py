"""Builders: the one place where the `model` and `mae` config sections become modules."""
from __future__ import annotations

from typing import Any

from ppma_scale.models.heads import VideoClassifier
from ppma_scale.models.mae import MAE
from ppma_scale.models.sizes import ViTSize, resolve_size
from ppma_scale.models.vit import VideoViT


def size_from_config(model_cfg: Any) -> ViTSize:
    """The size-table row named by `model.size`, with the config's explicit overrides applied."""
    return resolve_size(model_cfg.size, embed_dim=model_cfg.embed_dim, depth=model_cfg.depth,
                        num_heads=model_cfg.num_heads, mlp_ratio=model_cfg.mlp_ratio,
                        patch_size=model_cfg.patch_size)


def build_encoder(model_cfg: Any, num_frames: int, img_size: int, final_norm: bool = True) -> VideoViT:
    """The VideoViT trunk described by the `model` section, for clips of num_frames x img_size^2."""
    return VideoViT(size_from_config(model_cfg), num_frames=num_frames, img_size=img_size,
                    tubelet=model_cfg.tubelet, qkv_bias=model_cfg.qkv_bias, layer_scale=model_cfg.layer_scale,
                    drop_path=model_cfg.drop_path, pos_embed=model_cfg.pos_embed, final_norm=final_norm,
                    act_checkpoint_every=model_cfg.act_checkpoint_every, compile_blocks=model_cfg.compile)


def build_mae(model_cfg: Any, mae_cfg: Any, num_frames: int, img_size: int) -> MAE:
    """Trunk + narrow decoder for stage-1 masked autoencoding."""
    encoder = build_encoder(model_cfg, num_frames, img_size, final_norm=True)
    return MAE(encoder, decoder_dim=mae_cfg.decoder_dim, decoder_depth=mae_cfg.decoder_depth,
               decoder_heads=mae_cfg.decoder_heads, target_norm=mae_cfg.target_norm)


def build_classifier(model_cfg: Any, num_frames: int, img_size: int, num_classes: int,
                     head: str = "linear") -> VideoClassifier:
    """Trunk + head. The trunk has no final norm: the head pools first, then normalises (VideoMAE)."""
    encoder = build_encoder(model_cfg, num_frames, img_size, final_norm=False)
    return VideoClassifier(encoder, num_classes=num_classes, head=head, dropout=model_cfg.head_dropout)
