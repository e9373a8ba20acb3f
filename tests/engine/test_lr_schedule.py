import math

import pytest

from ppma_scale.engine.lr_schedule import WarmupCosine, apply_lr, peak_lr


def test_peak_lr_scales_with_global_batch_once():
    assert peak_lr(None, 1.5e-4, 256, 512) == pytest.approx(3e-4)
    assert peak_lr(None, 1.5e-4, 256, 64) == pytest.approx(3.75e-5)
    assert peak_lr(2e-3, 1.5e-4, 256, 64) == 2e-3  # an absolute lr wins


@pytest.mark.parametrize("batch", [64, 256, 1024])
def test_cosine_phase_starts_at_the_peak_whatever_the_batch(batch):
    # The reference divides by the batch scale twice and starts its cosine at half the peak.
    peak = peak_lr(None, 1e-3, 256, batch)
    sched = WarmupCosine(peak=peak, total_steps=100, warmup_steps=10, min_lr=1e-6)
    assert sched(9) == pytest.approx(peak)  # last warmup step reaches the peak
    assert sched(10) == pytest.approx(peak)  # cosine starts there
    assert max(sched(s) for s in range(100)) == pytest.approx(peak)


def test_warmup_is_linear_and_cosine_ends_at_min_lr():
    sched = WarmupCosine(peak=1.0, total_steps=110, warmup_steps=10, min_lr=0.1)
    assert [sched(s) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert sched(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert sched(110) == pytest.approx(0.1)
    assert sched(500) == pytest.approx(0.1)
    values = [sched(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_no_warmup_starts_at_peak():
    sched = WarmupCosine(peak=2.0, total_steps=4)
    assert sched(0) == 2.0


def test_apply_lr_honours_layer_scale():
    groups = [{"lr_scale": 1.0}, {"lr_scale": 0.25}, {}]
    apply_lr(groups, 0.4)
    assert [g["lr"] for g in groups] == pytest.approx([0.4, 0.1, 0.4])


@pytest.mark.parametrize("kwargs, needle", [
    (dict(peak=1.0, total_steps=0), "train.max_steps"),
    (dict(peak=1.0, total_steps=5, min_lr=2.0), "optim.min_lr"),
    (dict(peak=1.0, total_steps=5, warmup_steps=-1), "warmup"),
])
def test_bad_schedules_are_named(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        WarmupCosine(**kwargs)


def test_bad_lr_inputs_are_named():
    with pytest.raises(ValueError, match="optim.lr_ref_batch"):
        peak_lr(None, 1e-3, 0, 8)
    with pytest.raises(ValueError, match="optim.lr "):
        peak_lr(-1.0, 1e-3, 256, 8)
