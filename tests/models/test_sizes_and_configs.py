"""The size table against published parameter counts, and the stage-1 configs building full-size
ViT-L / ViT-H MAEs that run a forward/backward on a tiny clip on the CPU."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ppma_scale.config import load_config
from ppma_scale.models import SIZES, VideoViT, build_classifier, build_encoder, build_mae
from ppma_scale.models.flops import mask_counts
from ppma_scale.models.sizes import PUBLISHED_PARAMS_M

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY_CLIP = ["data.train=/x/manifest.json", "data.num_frames=2", "data.img_size=32"]


def count_m(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


@pytest.mark.parametrize("name", ["s", "b", "l", "h", "g"])
def test_encoder_sizes_match_published_counts(name):
    with torch.device("meta"):
        encoder = VideoViT(SIZES[name])
    assert count_m(encoder) == pytest.approx(PUBLISHED_PARAMS_M[name], rel=0.01)


@pytest.mark.parametrize("config,published", [("vitl.yaml", 304.0), ("vith.yaml", 632.0)])
def test_stage1_config_builds_full_size_mae_and_trains_a_step(config, published):
    cfg = load_config(CONFIGS / config, TINY_CLIP)
    torch.manual_seed(0)
    mae = build_mae(cfg.model, cfg.mae, cfg.data.num_frames, cfg.data.img_size)
    assert count_m(mae.encoder) == pytest.approx(published, rel=0.01)
    assert mae.encoder.act_checkpoint_every == cfg.model.act_checkpoint_every == 1
    assert mae.decoder_embed.out_features == {"l": 512, "h": 640}[cfg.model.size]
    assert mae.decoder_blocks[0].attn.num_heads == 8  # VideoMAE's: ViT-H's 640-wide decoder has 8 heads, not 10
    assert len(mae.decoder_blocks) == 4
    video = torch.randn(2, 3, cfg.data.num_frames, cfg.data.img_size, cfg.data.img_size)
    visible, _ = mask_counts(mae.encoder.grid, 0.5)
    mask = torch.tensor([[False, True, True, False], [True, False, False, True]])
    assert mask.shape[1] == mae.encoder.num_patches and (~mask).sum(1).tolist() == [visible] * 2
    loss, _ = mae(video, mask)
    loss.backward()
    assert torch.isfinite(loss)
    first, last = mae.encoder.blocks[0].attn.qkv.weight, mae.encoder.blocks[-1].mlp.fc2.weight
    assert first.grad.abs().sum() > 0 and last.grad.abs().sum() > 0


def test_other_stage1_configs_build_on_meta():
    for config, size in (("vits.yaml", "s"), ("vitb.yaml", "b")):
        cfg = load_config(CONFIGS / config, TINY_CLIP[:1])
        with torch.device("meta"):
            mae = build_mae(cfg.model, cfg.mae, cfg.data.num_frames, cfg.data.img_size)
        assert count_m(mae.encoder) == pytest.approx(PUBLISHED_PARAMS_M[size], rel=0.01)
        assert mae.encoder.num_patches == 1568


def test_builders_apply_config_overrides(tmp_path):
    cfg = load_config(CONFIGS / "vitb.yaml", TINY_CLIP + [
        "model.size=tiny", "model.depth=2", "model.pos_embed=learned", "model.layer_scale=0.1",
        "model.drop_path=0.2", "model.head_dropout=0.5", "mae.decoder_dim=48", "mae.decoder_heads=2",
        "mae.target_norm=all"])
    mae = build_mae(cfg.model, cfg.mae, 2, 32)
    assert len(mae.encoder.blocks) == 2 and mae.encoder.pos_embed_kind == "learned"
    assert mae.decoder_blocks[0].attn.num_heads == 2 and mae.target_norm == "all"
    assert mae.encoder.blocks[1].drop_path1.drop_prob == pytest.approx(0.2)
    classifier = build_classifier(cfg.model, 2, 32, num_classes=6, head="linear")
    assert isinstance(classifier.encoder.norm, torch.nn.Identity)  # the head normalises after pooling
    assert classifier.head.dropout.p == 0.5 and classifier.head.fc.out_features == 6
    assert isinstance(build_encoder(cfg.model, 2, 32).norm, torch.nn.LayerNorm)


@pytest.mark.parametrize("override,message", [
    ("model.size=xl", "model.size 'xl'"),
    ("model.num_heads=5", "not divisible by model.num_heads"),
    ("model.tubelet=3", "data.num_frames 2 must be a multiple of model.tubelet 3"),
    ("model.patch_size=12", "data.img_size 32 must be a multiple of the patch size 12"),
    ("model.act_checkpoint_every=-1", "model.act_checkpoint_every"),
])
def test_bad_model_values_fail_with_the_key_named(override, message):
    with pytest.raises(ValueError, match=message):  # at load time (ConfigError), before any model is built
        cfg = load_config(CONFIGS / "vitb.yaml", TINY_CLIP + [override])
        with torch.device("meta"):
            build_mae(cfg.model, cfg.mae, cfg.data.num_frames, cfg.data.img_size)
