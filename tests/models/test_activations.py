"""The analytic activation count against the bytes autograd really keeps for backward.

Measured with saved-tensor hooks on a real forward pass (CPU; its fused attention keeps the same
tensors as the GPU's flash / cuDNN kernels: q, k, v, output and an fp32 log-sum-exp): every saved
tensor's storage counted once, parameters left out.
"""
from __future__ import annotations

import pytest
import torch

from ppma_scale.models import MAE
from ppma_scale.models.activations import activation_bytes
from ppma_scale.models.heads import VideoClassifier

from .conftest import random_masks, small_encoder

DTYPES = {"bf16": (torch.bfloat16, 2), "fp32": (torch.float32, 4)}


def saved_bytes(model: torch.nn.Module, run) -> int:
    """Bytes of the distinct non-parameter storages autograd saves while `run()` builds the graph."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = run()
    out.backward()  # the graph was complete and usable
    return sum(seen.values())


@pytest.mark.parametrize("precision", sorted(DTYPES))
def test_mae_count_matches_what_autograd_keeps(precision, video):
    dtype, elem = DTYPES[precision]
    torch.manual_seed(0)
    mae = MAE(small_encoder(), decoder_depth=2).to(dtype)
    mask = random_masks(2, 32, 24)
    measured = saved_bytes(mae, lambda: mae(video.to(dtype), mask)[0])
    expected = activation_bytes(mae, elem, num_visible=8, num_targets=24)
    assert expected.recompute == 0
    # not counted: the gathers' int64 indices; on the CPU LayerNorm keeps bf16 statistics, not fp32
    assert 2 * expected.saved == pytest.approx(measured, rel=0.01)


@pytest.mark.parametrize("precision", sorted(DTYPES))
def test_classifier_count_matches_what_autograd_keeps(precision, video):
    dtype, elem = DTYPES[precision]
    torch.manual_seed(0)
    model = VideoClassifier(small_encoder(final_norm=False), num_classes=5).to(dtype)
    measured = saved_bytes(model, lambda: model(video.to(dtype)).float().square().mean())
    expected = activation_bytes(model, elem)
    assert 2 * expected.saved == pytest.approx(measured, rel=0.01)


def test_checkpointing_keeps_block_inputs_and_recomputes_one_block():
    plain = MAE(small_encoder(), decoder_depth=2)
    every = MAE(small_encoder(act_checkpoint_every=1), decoder_depth=2)
    second = MAE(small_encoder(act_checkpoint_every=2), decoder_depth=2)
    counts = [activation_bytes(m, 2, num_visible=8, num_targets=24) for m in (plain, every, second)]
    assert counts[0].recompute == 0 and counts[1].recompute > 0
    assert counts[1].saved < counts[2].saved < counts[0].saved
    assert counts[1].peak(4) < counts[0].peak(4)
    assert activation_bytes(VideoClassifier(small_encoder(), 5, head="probe"), 2).saved < 1024  # frozen trunk


def test_the_measured_peak_factor_is_that_of_the_h100_run():
    """MEASURED_PEAK_OVER_ESTIMATE, quoted by the dry run, is the H100 ViT-L MAE step's peak memory
    (bench/gpu/results, micro-batch 256, no checkpointing) over model states + this count."""
    import json
    from pathlib import Path

    from ppma_scale.engine.dry_run import model_state_bytes
    from ppma_scale.models import VideoViT, resolve_size
    from ppma_scale.models.activations import MEASURED_PEAK_OVER_ESTIMATE
    from ppma_scale.models.flops import mask_counts

    results = Path(__file__).resolve().parents[2] / "bench/gpu/results/h100_vitl_compile_model_bench.json"
    (row,) = [r for r in json.loads(results.read_text())["steps"] if r["model"] == "ours" and r["compile"] == "off"]
    with torch.device("meta"):
        mae = MAE(VideoViT(resolve_size("l")), decoder_depth=4)
    visible, targets = mask_counts(mae.encoder.grid, 0.9)
    params = sum(p.numel() for p in mae.parameters())
    states = model_state_bytes(params, params, "bf16", 0, 1).device  # the bench's bf16 + fp32 master + AdamW
    estimate = states + activation_bytes(mae, 2, num_visible=visible, num_targets=targets).peak(row["batch"])
    assert row["peak_gb"] * 2**30 / estimate == pytest.approx(MEASURED_PEAK_OVER_ESTIMATE, abs=0.01)
