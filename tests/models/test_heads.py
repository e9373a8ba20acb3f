"""Classification heads: mean-pool + LayerNorm + Linear, and the frozen-trunk BatchNorm probe."""
from __future__ import annotations

import pytest
import torch

from ppma_scale.models import VideoClassifier


def test_linear_head_pools_then_normalises(make_encoder, video):
    torch.manual_seed(0)
    model = VideoClassifier(make_encoder(final_norm=False), num_classes=5, dropout=0.3).eval()
    with torch.no_grad():
        tokens = model.encoder(video)
        expected = model.head.fc(torch.nn.functional.layer_norm(tokens.mean(1), (48,), model.head.norm.weight,
                                                                model.head.norm.bias, eps=1e-6))
        torch.testing.assert_close(model(video), expected)
    assert dict(model.named_modules())["head.dropout"].p == 0.3
    model.train()
    model(video).sum().backward()
    assert model.encoder.blocks[0].attn.qkv.weight.grad is not None


def test_probe_freezes_the_trunk_and_trains_the_head(make_encoder, video):
    model = VideoClassifier(make_encoder(final_norm=False, drop_path=0.3), num_classes=4, head="probe")
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert not model.head.bn.affine and model.head.bn.weight is None
    model.train()
    assert not model.encoder.training and model.head.training  # no drop path in a frozen trunk
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = torch.nn.functional.cross_entropy(model(video), torch.tensor([0, 3]))
    loss.backward()
    optimizer.step()
    assert model.head.fc.weight.grad.abs().sum() > 0
    assert all(torch.equal(before[k], v) for k, v in model.encoder.state_dict().items())
    assert model.head.bn.running_mean.abs().sum() > 0  # statistics of the frozen features were tracked


def test_the_probe_normalises_each_pooled_feature_before_its_batchnorm(make_encoder, video):
    """As MAE's pooled linear probe: a LayerNorm (no scale or shift: the BatchNorm would undo them) on
    each clip's feature, so the probe sees the feature's direction, not the size of the residual
    stream (the trunk's final norm is dropped for classification)."""
    model = VideoClassifier(make_encoder(final_norm=False), num_classes=4, head="probe")
    model.head.train()
    with torch.no_grad():
        model.head(torch.randn(64, 48, generator=torch.Generator().manual_seed(0)) * 5 + 2)  # running statistics
    model.eval()
    feature = torch.randn(3, 48, generator=torch.Generator().manual_seed(1))
    scaled = feature * torch.tensor([[0.5], [3.0], [10.0]]) + torch.tensor([[1.0], [-2.0], [0.0]])
    with torch.no_grad():
        torch.testing.assert_close(model.head(scaled), model.head(feature), atol=1e-4, rtol=1e-4)
    assert not any(name.startswith("head.norm") for name in model.state_dict())  # no new weights


def test_layer_decay_matcher_puts_head_last(make_encoder):
    from timm.optim import param_groups_layer_decay
    model = VideoClassifier(make_encoder(final_norm=False), num_classes=3)
    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.75)
    by_name = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert by_name[id(named["head.fc.weight"])] == 1.0
    assert by_name[id(named["encoder.patch_embed.proj.weight"])] == pytest.approx(0.75 ** 4)


def test_head_errors(make_encoder):
    with pytest.raises(ValueError, match="head must be one of"):
        VideoClassifier(make_encoder(), 3, head="mlp")
    with pytest.raises(ValueError, match="model.num_classes"):
        VideoClassifier(make_encoder(), 0)
    with pytest.raises(ValueError, match="model.head_dropout"):
        VideoClassifier(make_encoder(), 3, dropout=1.0)
