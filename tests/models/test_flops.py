"""The analytic FLOPs formula against torch's FlopCounterMode and against published numbers."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ppma_scale.models import MAE, VideoClassifier, VideoViT, resolve_size, set_attention
from ppma_scale.models.flops import flops_per_clip, mask_counts, mfu, peak_tflops


def counted_flops(model, step, batch):
    """FLOPs FlopCounterMode sees in `step()` (forward + backward), per clip."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / batch


@pytest.mark.parametrize("ratio,decoder_ratio", [(0.75, 0.0), (0.5, 0.5)])
def test_mae_flops_match_flop_counter(make_encoder, make_masks, ratio, decoder_ratio):
    torch.manual_seed(0)
    mae = MAE(make_encoder(size=dict(mlp_ratio=3.0)), decoder_depth=2)
    set_attention(mae, "math")  # the CPU SDPA kernel is invisible to FlopCounterMode
    visible, targets = mask_counts((2, 4, 4), ratio, decoder_ratio)
    mask = make_masks(3, 32, 32 - visible)
    decoder_mask = None
    if decoder_ratio:
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :targets]
        decoder_mask = torch.zeros_like(mask).scatter(1, order, True)
    video = torch.randn(3, 3, 4, 32, 32)

    def step():
        loss, _ = mae(video, mask, decoder_mask)
        loss.backward()

    expected = flops_per_clip(mae, ratio, decoder_ratio)
    # exact: the formula counts what runs, including the decoder's last block on the targets only
    assert counted_flops(mae, step, 3) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("head", ["linear", "probe"])
def test_classifier_flops_match_flop_counter(make_encoder, head):
    model = VideoClassifier(make_encoder(final_norm=False), num_classes=7, head=head)
    set_attention(model, "math")
    video = torch.randn(2, 3, 4, 32, 32)

    def step():
        torch.nn.functional.cross_entropy(model(video), torch.tensor([1, 2])).backward()

    # the probe's trunk is frozen: forward only there, backward through the head alone
    assert counted_flops(model, step, 2) == pytest.approx(flops_per_clip(model), rel=0.02)


def test_trunk_only_flops(make_encoder):
    model = make_encoder()
    set_attention(model, "math")
    video = torch.randn(2, 3, 4, 32, 32)
    assert counted_flops(model, lambda: model(video).sum().backward(), 2) == pytest.approx(flops_per_clip(model))
    with torch.no_grad():
        assert counted_flops(model, lambda: model(video), 2) == pytest.approx(
            flops_per_clip(model, trunk_trainable=False))


@pytest.mark.parametrize("size,published_gmacs", [("b", 180), ("l", 597), ("h", 1192)])
def test_forward_flops_match_videomae_published(size, published_gmacs):
    """VideoMAE reports 180 / 597 / 1192 G(MACs) per 16x224 view for ViT-B / L / H."""
    with torch.device("meta"):
        model = VideoViT(resolve_size(size))
    forward = flops_per_clip(model, trunk_trainable=False)
    assert forward / 2 / 1e9 == pytest.approx(published_gmacs, rel=0.02)


def test_mae_masking_cuts_flops():
    with torch.device("meta"):
        mae = MAE(VideoViT(resolve_size("l")))
    full, masked, decoder_masked = (flops_per_clip(mae, 0.0), flops_per_clip(mae, 0.9),
                                    flops_per_clip(mae, 0.9, 0.5))
    assert masked < 0.2 * full and decoder_masked < masked
    assert mask_counts((8, 14, 14), 0.9) == (157, 1411)
    assert mask_counts((8, 14, 14), 0.9, mask_type="tube") == (160, 1408)  # 176 of 196 per frame
    assert mask_counts((8, 14, 14), 0.9, 0.5) == (157, 705)
    with pytest.raises(ValueError, match="mask ratios"):
        mask_counts((8, 14, 14), 1.0)


def test_peak_table_and_mfu():
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert [peak_tflops(f"NVIDIA {name}") for name in ("L40", "L40S", "L4", "H200 NVL", "H200")] == \
        [181.0, 362.0, 121.0, 835.0, 989.0]  # a name that holds a shorter one (L40: L4) is matched first
    assert peak_tflops("Some CPU") is None
    assert mfu(1e12, 494.5, 989.0) == pytest.approx(0.5)
    assert mfu(1e12, 10, None) is None
    with pytest.raises(TypeError, match="MAE, VideoClassifier or VideoViT"):
        flops_per_clip(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("kind,ratio,decoder_ratio", [("random", 0.9, 0.0), ("tube", 0.9, 0.0), ("random", 0.75, 0.5),
                                                      ("tube", 0.8, 0.5)])
def test_token_counts_agree_with_the_data_layers_masks(kind, ratio, decoder_ratio):
    from ppma_scale.data.masking import make_masks
    grid = (8, 14, 14)
    mask, decoder_mask = make_masks(kind, 2, grid, ratio, decoder_ratio=decoder_ratio,
                                    generator=torch.Generator().manual_seed(0))
    targets = decoder_mask if decoder_mask is not None else mask
    expected = mask_counts(grid, ratio, decoder_ratio, mask_type=kind)
    assert ((~mask).sum(1).tolist(), targets.sum(1).tolist()) == ([expected[0]] * 2, [expected[1]] * 2)
