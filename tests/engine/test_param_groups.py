import pytest
import torch
from torch import nn

from ppma_scale.engine.param_groups import build_param_groups, layer_id, no_weight_decay_names


class Trunk(nn.Module):
    def __init__(self, depth=3):
        super().__init__()
        self.patch_embed = nn.Conv3d(3, 8, 2)
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8)) for _ in range(depth))
        self.norm = nn.LayerNorm(8)

    def no_weight_decay(self):
        return {"pos_embed"}


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = Trunk()
        self.head = nn.Linear(8, 5)


def test_no_decay_on_bias_norm_and_declared_pos_embed():
    model = Classifier()
    skip = no_weight_decay_names(model)
    assert "encoder.pos_embed" in skip  # declared by the submodule, prefixed
    assert "encoder.blocks.0.0.weight" in skip and "head.bias" in skip  # norm weight, bias
    assert "head.weight" not in skip and "encoder.blocks.1.1.weight" not in skip
    groups = build_param_groups(model.named_parameters(), 0.05, skip)
    by_param = {id(p): g for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert by_param[id(named["head.weight"])]["weight_decay"] == 0.05
    assert by_param[id(named["encoder.pos_embed"])]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(named)


def test_layer_decay_scales_by_depth_and_skips_frozen():
    model = Classifier()
    model.encoder.patch_embed.weight.requires_grad_(False)
    groups = build_param_groups(model.named_parameters(), 0.05, no_weight_decay_names(model), layer_decay=0.5, depth=3)
    scale = {}
    for g in groups:
        for p in g["params"]:
            scale[id(p)] = g["lr_scale"]
    named = dict(model.named_parameters())
    assert id(named["encoder.patch_embed.weight"]) not in scale  # frozen: not optimised
    assert scale[id(named["encoder.pos_embed"])] == pytest.approx(0.5 ** 4)
    assert scale[id(named["encoder.blocks.0.1.weight"])] == pytest.approx(0.5 ** 3)
    assert scale[id(named["encoder.blocks.2.1.weight"])] == pytest.approx(0.5)
    assert scale[id(named["head.weight"])] == 1.0


def test_layer_id_and_errors():
    assert layer_id("blocks.11.attn.qkv.weight", 12) == 12
    assert layer_id("trunk.blocks.0.norm1.bias", 12) == 1
    assert layer_id("fc_norm.weight", 12) == 13
    with pytest.raises(ValueError, match="optim.layer_decay"):
        build_param_groups(Trunk().named_parameters(), 0.0, set(), layer_decay=1.5, depth=3)
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_param_groups(frozen.named_parameters(), 0.0, set())
