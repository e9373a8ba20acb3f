"""The training stream on real tars: batches, coverage, equal steps per rank, exact resume, mixing."""
from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from ppma_scale.data.loader import build_train_stream

from .conftest import CLASSES, TINY_CLIP, take_keys


def stream(manifests, **kw):
    args = dict(TINY_CLIP, micro_batch=2, num_workers=2, prefetch=2, shuffle_buffer=4, seed=5)
    args.update(kw)
    return build_train_stream(manifests, **args)


def test_batches_have_the_contract_shape_and_one_epoch_covers_the_data(make_shards):
    manifest = make_shards("a", [5, 3, 4])  # 12 samples in uneven shards
    s = stream([manifest], repeat_aug=2, micro_batch=3)
    assert s.steps_per_epoch == 4
    batch = next(iter(s))
    assert batch["video"].shape == (6, 3, 4, 16, 16) and batch["video"].dtype == torch.uint8
    assert batch["label"].dtype == torch.int64 and batch["label"].shape == (6,)
    assert batch["key"][0] == batch["key"][1] and batch["dataset"] == ["a"] * 6  # 2 views per decoded clip
    assert batch["video"].float().std() > 0
    labels = {key: int(label) for key, label in zip(batch["key"], batch["label"])}
    assert all(labels[k] == int(k.split("_")[1]) % len(CLASSES) for k in labels)
    s = stream([manifest], micro_batch=3)
    first, second = take_keys(s, 4), take_keys(s, 4)
    assert sorted(first) == sorted(second) == [("a", f"a_{i:04d}") for i in range(12)]
    assert first != second  # a new shard order and shuffle each epoch
    assert s.epoch == 2 and s.step == 8


def test_same_seed_same_stream_other_seed_other_order(make_shards):
    manifest = make_shards("a", [6, 6])
    one, two = stream([manifest]), stream([manifest])
    batches = [b for _, b in zip(range(3), one)]
    again = [b for _, b in zip(range(3), two)]
    assert all(torch.equal(x["video"], y["video"]) and x["key"] == y["key"] for x, y in zip(batches, again))
    assert take_keys(stream([manifest], seed=6), 6) != take_keys(stream([manifest]), 6)


@pytest.mark.parametrize("workers", [0, 2])
def test_uneven_shards_give_every_rank_the_same_steps_and_no_repeats(make_shards, workers):
    manifest = make_shards("a", [7, 2, 4])  # 3 shards over 2 ranks, 13 samples
    ranks = [stream([manifest], rank=r, world_size=2, num_workers=workers) for r in range(2)]
    assert [s.steps_per_epoch for s in ranks] == [3, 3]  # 13 // (2 x 2)
    keys = [take_keys(s, 3) for s in ranks]
    assert len(keys[0]) == len(keys[1]) == 6
    assert not set(keys[0]) & set(keys[1])


def run_until(manifests, steps, state=None, **kw):
    s = stream(manifests, **kw)
    if state is not None:
        s.load_state_dict(state)
    keys = take_keys(s, steps)
    return keys, s.state_dict()


def test_resume_continues_exactly_where_the_last_yielded_batch_left(make_shards):
    manifest = make_shards("a", [5, 5, 6])
    reference, _ = run_until([manifest], 12)  # 2 epochs of 6 steps
    for stop in (1, 4, 7):  # mid-cycle of the 2 workers, and inside the second epoch
        head, state = run_until([manifest], stop)  # the workers have prefetched beyond `stop`
        assert json.loads(json.dumps(state)) == state  # plain data: fits any checkpoint
        tail, _ = run_until([manifest], 12 - stop, state=state)
        assert head + tail == reference


def test_resume_of_a_per_batch_mix_with_views_and_randaugment(make_shards):
    data = [str(make_shards("a", [6, 6])), {"manifest": str(make_shards("b", [4, 4])), "weight": 2.0}]
    kw = dict(mix="batch", repeat_aug=2, randaugment="rand-m7-n2-mstd0.5", steps_per_epoch=5)
    reference, _ = run_until(data, 8, **kw)
    head, state = run_until(data, 3, **kw)
    tail, _ = run_until(data, 5, state=state, **kw)
    assert head + tail == reference
    assert Counter(d for d, _ in reference[:10]) == {"a": 4, "b": 6}  # first epoch: 5 batches, weights 1:2


def test_two_rank_resume_no_repeat_no_gap(make_shards):
    manifest = make_shards("a", [6, 5, 5, 4])  # 20 samples -> 5 steps per rank of 2
    kw = dict(world_size=2)
    reference = [run_until([manifest], 5, rank=r, **kw)[0] for r in range(2)]
    heads, states = zip(*[run_until([manifest], 2, rank=r, **kw) for r in range(2)])
    tails = [run_until([manifest], 3, state=list(states), rank=r, **kw)[0] for r in range(2)]
    for r in range(2):
        assert heads[r] + tails[r] == reference[r]
    epoch = [k for r in range(2) for k in heads[r] + tails[r]]
    assert len(epoch) == len(set(epoch)) == 20


def test_world_size_change_continues_over_the_unconsumed_samples(make_shards):
    manifest = make_shards("a", [8, 8, 8])  # 24 samples
    heads, states = zip(*[run_until([manifest], 2, rank=r, world_size=3) for r in range(3)])  # 12 consumed
    consumed = {k for h in heads for k in h}
    one = stream([manifest], world_size=1)
    one.load_state_dict(list(states))
    assert one.epoch == 0 and one.step == 2
    rest = take_keys(one, 6)  # 12 left / batch 2 = 6 steps on one rank
    assert one.epoch == 1
    assert len(consumed) + len(rest) == 24 and not consumed & set(rest)
    with pytest.raises(ValueError, match="all 3 saved ranks"):
        stream([manifest], world_size=1).load_state_dict(states[0])


def test_one_rank_works_out_the_continuation_and_every_rank_of_the_new_layout_loads_it(make_shards):
    """What the trainer does on a layout change: rank 0 calls continued_state(all saved states) and
    broadcasts it (pickled); each new rank must then read exactly what the full list gives it."""
    import pickle
    manifest = make_shards("a", [8, 8, 8, 6])  # 30 samples
    heads, states = zip(*[run_until([manifest], 2, rank=r, world_size=3) for r in range(3)])  # 12 consumed
    consumed = {k for h in heads for k in h}
    continued = pickle.loads(pickle.dumps(stream([manifest], world_size=2).continued_state(list(states))))
    assert json.loads(json.dumps(continued)) == continued  # plain data, like every saved state
    tails = []
    for r in range(2):
        given = run_until([manifest], 4, state=continued, rank=r, world_size=2)[0]  # 18 left: 4 steps of 2 x 2
        assert given == run_until([manifest], 4, state=list(states), rank=r, world_size=2)[0]
        tails += given
    assert len(tails) == len(set(tails)) == 16 and not consumed & set(tails)
    with pytest.raises(ValueError, match="made for 2 ranks x 2 workers x batch 2, this stream is 1 x"):
        stream([manifest], world_size=1).load_state_dict(continued)


def test_state_from_other_data_is_refused(make_shards):
    a, b = make_shards("a", [4, 4]), make_shards("b", [4, 5])
    _, state = run_until([a], 1)
    with pytest.raises(ValueError, match="saved for datasets"):
        stream([b]).load_state_dict(state)
    with pytest.raises(ValueError, match="seed"):
        stream([a], seed=9).load_state_dict(state)


def test_weighted_mixing_per_sample_and_per_batch(make_shards):
    small, large = make_shards("s", [20, 20]), make_shards("l", [30, 30])
    mixed = [{"manifest": str(small), "weight": 3.0}, {"manifest": str(large), "weight": 1.0}]
    s = stream(mixed, micro_batch=4, num_workers=1, steps_per_epoch=10)
    keys = take_keys(s, 10)
    counts = Counter(d for d, _ in keys)
    assert counts == {"s": 30, "l": 10}
    assert len(set(keys)) == 40  # no sample twice within the epoch
    per_batch = stream(mixed, micro_batch=4, num_workers=1, steps_per_epoch=8, mix="batch")
    for _, batch in zip(range(8), per_batch):
        assert len(set(batch["dataset"])) == 1


def test_label_space_by_class_name(make_shards, tmp_path):
    a = make_shards("a", [4], classes=["wave", "jump", "squat", "walk"])
    b = make_shards("b", [4], classes=["walk", "squat", "jump", "wave"])  # same names, other order
    s = stream([a, b], micro_batch=4, num_workers=0, steps_per_epoch=1)
    batch = next(iter(s))
    for dataset, key, label in zip(batch["dataset"], batch["key"], batch["label"].tolist()):
        own = int(key.split("_")[1]) % 4
        name = (["wave", "jump", "squat", "walk"] if dataset == "a" else ["walk", "squat", "jump", "wave"])[own]
        assert s.classes[label] == name
    names = tmp_path / "classes.txt"
    names.write_text("jump\nwave\n")
    with pytest.raises(ValueError, match="not in the label space"):
        stream([a], classes=str(names), require_labels=True)
    c = make_shards("c", [4], classes=["run", "sit", "wave", "jump"])
    assert stream([a, c]).classes == ["wave", "jump", "squat", "walk", "run", "sit"]  # union, first set first
    d = make_shards("d", [4], classes=["Wave", "jump", "squat_down", "walk"])  # another dataset's spelling
    with pytest.raises(ValueError, match=r"spell the same classes differently.*'wave' \(a\) / 'Wave' \(d\)"):
        stream([a, d])  # it would be a 6-way head where the datasets share 2 classes
    both = tmp_path / "both.txt"
    both.write_text("wave\nWave\njump\nsquat\nsquat_down\nwalk\n")
    assert len(stream([a, d], classes=str(both)).classes) == 6  # named on purpose: kept apart


def test_close_stops_the_workers_while_a_batch_is_still_held(make_shards):
    """The trainer closes the stream when a step raises: the workers must go at once, since the
    error's traceback keeps the half-used iterator alive and the interpreter's exit would wait."""
    import multiprocessing
    before = set(multiprocessing.active_children())  # other tests' abandoned iterators may linger
    s = stream([make_shards("a", [4, 4])], num_workers=2)
    batches = iter(s)
    held = next(batches)  # noqa: F841 - a live reference, as in a failing step's frame
    assert len(set(multiprocessing.active_children()) - before) == 2
    s.close()
    assert set(multiprocessing.active_children()) - before == set()
