import pytest

from ppma_scale.engine.ds_config import build_ds_config

BASE = dict(micro_batch=4, grad_accum=3, world_size=8, zero_stage=2, precision="bf16")


def test_batch_geometry_and_precision():
    cfg = build_ds_config(**BASE, clip_grad=1.0)
    assert cfg["train_micro_batch_size_per_gpu"] == 4
    assert cfg["gradient_accumulation_steps"] == 3
    assert cfg["train_batch_size"] == 4 * 3 * 8
    assert cfg["gradient_clipping"] == 1.0
    assert cfg["bf16"]["enabled"] and not cfg["fp16"]["enabled"]
    assert cfg["zero_optimization"]["stage"] == 2
    assert "offload_optimizer" not in cfg["zero_optimization"]
    assert "optimizer" not in cfg and "scheduler" not in cfg  # ours, not DeepSpeed's
    assert "checkpoint" not in cfg


def test_fp16_uses_dynamic_loss_scaling_and_fp32_neither():
    fp16 = build_ds_config(**{**BASE, "precision": "fp16"})
    assert fp16["fp16"]["enabled"] and fp16["fp16"]["loss_scale"] == 0  # 0 = dynamic
    fp32 = build_ds_config(**{**BASE, "precision": "fp32"})
    assert not fp32["fp16"]["enabled"] and not fp32["bf16"]["enabled"]
    assert fp32["gradient_clipping"] == 0.0


def test_offload_and_zero3():
    cfg = build_ds_config(**{**BASE, "zero_stage": 3}, offload="cpu", offload_params=True)
    zero = cfg["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == "cpu"
    assert zero["offload_param"]["device"] == "cpu"
    assert build_ds_config(**BASE, load_universal=True)["checkpoint"] == {"load_universal": True}
    assert build_ds_config(**{**BASE, "zero_stage": 0})["zero_optimization"] == {"stage": 0}


@pytest.mark.parametrize("change, needle", [
    (dict(micro_batch=0), "train.micro_batch"),
    (dict(grad_accum=0), "train.grad_accum"),
    (dict(zero_stage=4), "train.zero_stage"),
    (dict(precision="fp8"), "train.precision"),
    (dict(offload="nvme"), "train.offload"),
    (dict(zero_stage=0, offload="cpu"), "needs ZeRO"),
    (dict(offload="cpu", offload_params=True), "train.offload_params"),
    (dict(clip_grad=0.0), "optim.clip_grad"),
])
def test_impossible_combinations_name_the_key(change, needle):
    with pytest.raises(ValueError, match=needle):
        build_ds_config(**{**BASE, **change})
