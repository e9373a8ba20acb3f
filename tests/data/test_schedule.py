"""The epoch arithmetic: every consumer's share, disjointness, equal steps, mixing quotas, continuation."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ppma_scale.data.schedule import (DatasetPasses, Layout, apportion, continue_plan, default_steps, make_plan,
                                      next_plan, quotas, segment_order, slot_datasets, steps_per_epoch,
                                      worker_steps)

SEED = 3


def epoch_positions(plan, layout, seed=SEED, block=4, taken=None):
    """Positions each consumer takes in an epoch (all of its segment unless `taken` limits it)."""
    q = quotas(plan, layout, seed)
    out = {}
    for c in range(layout.consumers):
        for d in range(len(plan.chunks)):
            order = segment_order(plan, d, c, q, layout, seed, block)
            n = order.length if taken is None else taken.get(c, [0] * len(plan.chunks))[d]
            out[(c, d)] = [order.position(k) for k in range(n)]
    return out, q


def test_apportion_is_exact_and_proportional():
    assert apportion(10, [0.5, 0.5]) == [5, 5]
    assert apportion(10, [3, 1]) in ([8, 2], [7, 3])
    assert sum(apportion(101, [0.2, 0.3, 0.5])) == 101
    assert apportion(10, [1, 1], caps=[2, 100]) == [2, 8]


layouts = st.builds(Layout, world_size=st.integers(1, 3), workers=st.integers(1, 3), batch=st.integers(1, 4),
                    mix=st.sampled_from(["sample", "batch"]))


@settings(max_examples=40, deadline=None)
@given(layout=layouts, sizes=st.lists(st.integers(8, 60), min_size=1, max_size=3),
       weights=st.lists(st.floats(0.1, 5.0), min_size=3, max_size=3), epoch_steps=st.integers(0, 3))
def test_epoch_splits_disjointly_and_every_rank_gets_the_same_steps(layout, sizes, weights, epoch_steps):
    weights = weights[:len(sizes)]
    steps = max(1, default_steps(sizes, layout)) + epoch_steps
    plan = make_plan(0, 0, steps, [0] * len(sizes), sizes, weights, layout)
    for _ in range(2):  # this epoch and the next
        per_worker = [len(worker_steps(plan, layout, w)) for w in range(layout.workers)]
        assert sum(per_worker) == plan.steps  # each rank: exactly `steps` batches, workers in round robin
        positions, q = epoch_positions(plan, layout)
        units_per_consumer = q.sum(axis=1) * layout.unit
        for c in range(layout.consumers):
            assert units_per_consumer[c] == per_worker[c % layout.workers] * layout.batch
            slots = slot_datasets(plan, c, q, SEED)
            assert Counter(slots.tolist()) == {d: int(n) for d, n in enumerate(q[c]) if n}
        for d in range(len(sizes)):
            taken = [p for c in range(layout.consumers) for p in positions[(c, d)]]
            assert len(taken) == len(set(taken))  # no position read by two consumers
            chunk = sorted(p for a, b in plan.chunks[d] for p in range(a, b))
            assert sorted(taken) == chunk  # and none left out
        plan = next_plan(plan, steps, sizes, weights, layout)


def test_single_dataset_epochs_never_repeat_a_sample():
    layout = Layout(world_size=2, workers=2, batch=3)
    sizes = [50]
    steps = default_steps(sizes, layout)
    assert steps == 8  # 50 // (2 x 3)
    passes = DatasetPasses([20, 17, 13], seed=SEED, dataset=0)
    plan = make_plan(0, 0, steps, [0], sizes, [1.0], layout)
    for _ in range(3):
        positions, _ = epoch_positions(plan, layout)
        located = [passes.locate(p) for ps in positions.values() for p in ps]
        assert len(located) == steps * 6 == len(set(located))  # 48 distinct (shard, index) pairs
        assert all(0 <= i < [20, 17, 13][s] for s, i in located)
        plan = next_plan(plan, steps, sizes, [1.0], layout)


def test_mixing_follows_the_weights_and_a_large_dataset_continues_across_epochs():
    layout = Layout(world_size=1, workers=2, batch=4)
    sizes, weights = [40, 400], [3.0, 1.0]
    steps = 10  # 40 samples per epoch: 30 from the small set, 10 from the large one
    plan = make_plan(0, 0, steps, [0, 0], sizes, weights, layout)
    seen_large = []
    for _ in range(4):
        lengths = [sum(b - a for a, b in ch) for ch in plan.chunks]
        assert lengths == [30, 10]
        seen_large.extend(p for a, b in plan.chunks[1] for p in range(a, b))
        plan = next_plan(plan, steps, sizes, weights, layout)
    assert seen_large == list(range(40))  # the large set moves on instead of rereading its start


def test_per_batch_mixing_gives_whole_batches_to_one_dataset():
    layout = Layout(world_size=2, workers=1, batch=4, mix="batch")
    plan = make_plan(0, 0, 6, [0, 0], [30, 30], [1.0, 1.0], layout)
    q = quotas(plan, layout, SEED)
    assert (q.sum(axis=1) == 6).all()  # units are batches
    assert all(sum(b - a for a, b in ch) % 4 == 0 for ch in plan.chunks)


@settings(max_examples=25, deadline=None)
@given(old=layouts, new=layouts, sizes=st.lists(st.integers(10, 40), min_size=1, max_size=2),
       fraction=st.floats(0.0, 1.0), data=st.data())
def test_a_new_layout_continues_over_exactly_the_untaken_samples(old, new, sizes, fraction, data):
    weights = [1.0] * len(sizes)
    steps = max(1, default_steps(sizes, old))
    plan = make_plan(0, 0, steps, [0] * len(sizes), sizes, weights, old)
    q = quotas(plan, old, SEED)
    taken = {c: [data.draw(st.integers(0, int(q[c, d]) * old.unit)) for d in range(len(sizes))]
             for c in range(old.consumers)}
    consumed, _ = epoch_positions(plan, old, taken=taken)
    rest = continue_plan(plan, old, taken, step=5, new=new, seed=SEED, block=4)
    if rest is None:
        return
    assert rest.start_step == 5 and rest.epoch == 0
    again, _ = epoch_positions(rest, new)
    for d in range(len(sizes)):
        before = {p for c in range(old.consumers) for p in consumed[(c, d)]}
        after = [p for c in range(new.consumers) for p in again[(c, d)]]
        chunk = {p for a, b in plan.chunks[d] for p in range(a, b)}
        assert len(after) == len(set(after)) and not before & set(after)  # nothing repeats
        assert set(after) <= chunk - before  # only what was left of this epoch
        assert len(chunk - before) - len(after) < new.world_size * new.batch + new.unit  # at most a step dropped
    assert rest.next_cursor == plan.next_cursor


def test_shard_orders_differ_between_passes_but_not_between_calls():
    passes = DatasetPasses([5] * 8, seed=SEED, dataset=0)
    first = [passes.locate(p)[0] for p in range(0, 40, 5)]
    second = [passes.locate(p)[0] for p in range(40, 80, 5)]
    assert sorted(first) == sorted(second) == list(range(8))
    assert first != second
    assert first == [DatasetPasses([5] * 8, seed=SEED, dataset=0).locate(p)[0] for p in range(0, 40, 5)]
    assert np.all(np.diff([passes.locate(p)[1] for p in range(5)]) == 1)  # in-shard order kept


def test_a_steps_per_epoch_override_below_one_is_named():
    layout = Layout(world_size=2, workers=1, batch=2)
    assert steps_per_epoch([10], layout, 3) == 3
    for bad in (0, -5):
        with pytest.raises(ValueError, match=f"train.steps_per_epoch must be >= 1.*got {bad}"):
            steps_per_epoch([10], layout, bad)
