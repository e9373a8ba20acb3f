"""The dry run's memory accounting of model states (the plan itself is checked against real runs in
tests/e2e and tests/stages)."""
from __future__ import annotations

import pytest

from ppma_scale.engine.dry_run import model_state_bytes

P = 1_000_000  # parameters, all trained


@pytest.mark.parametrize("stage, device", [
    (0, 16 * P),  # 2 (bf16 weights) + 2 (bf16 gradients) + 12 (fp32 master, Adam m and v), all replicated
    (1, 4 * P + 12 * P / 8),  # the optimizer state partitioned over 8 ranks
    (2, 2 * P + 14 * P / 8),  # and the gradients
    (3, 16 * P / 8),  # and the weights
])
def test_zero_partitions_the_model_states_stage_by_stage(stage, device):
    states = model_state_bytes(P, P, "bf16", stage, world_size=8)
    assert states.device == pytest.approx(device) and states.host == 0


def test_fp32_keeps_a_master_copy_only_where_deepspeed_clones_one_and_frozen_weights_have_no_optimizer_state():
    assert model_state_bytes(P, P, "fp32", 0, 1).device == 16 * P  # 4 + 4 + 8 (Adam m and v)
    assert model_state_bytes(P, P, "fp32", 2, 2).optimizer == 12 * P / 2  # ZeRO-1/2 clone their fp32 partition
    assert model_state_bytes(P, P, "fp32", 3, 2).optimizer == 8 * P / 2  # ZeRO-3 steps fp32 weights in place
    assert model_state_bytes(10 * P, P, "bf16", 0, 1).device == 20 * P + 2 * P + 12 * P  # a frozen trunk


def test_offload_moves_the_optimizer_state_and_with_offload_params_the_weights_to_the_host():
    opt = model_state_bytes(P, P, "bf16", 2, 4, offload="cpu")
    assert (opt.device, opt.host) == (pytest.approx(2 * P + 2 * P / 4), pytest.approx(12 * P / 4))
    both = model_state_bytes(P, P, "bf16", 3, 4, offload="cpu", offload_params=True)
    assert (both.device, both.host) == (pytest.approx(2 * P / 4), pytest.approx(14 * P / 4))
