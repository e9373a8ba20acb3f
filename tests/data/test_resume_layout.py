"""A resume reads the data it was saved on: the same dataset name and size in other shards (a re-pack)
is refused, while a copy of the same shards in another folder resumes."""
from __future__ import annotations

import shutil

import pytest

from ppma_scale.data.loader import build_train_stream

from .conftest import TINY_CLIP, take_keys


def stream(manifest):
    return build_train_stream([manifest], **dict(TINY_CLIP, micro_batch=2, num_workers=0, prefetch=2,
                                                  shuffle_buffer=4, seed=5))


def test_a_re_packed_dataset_is_refused_and_a_copied_one_resumes(make_shards, tmp_path):
    original = make_shards("d", [4, 4])
    reference = take_keys(stream(original), 6)
    first = stream(original)
    take_keys(first, 3)
    state = first.state_dict()
    rest = reference[6:]  # 3 batches of 2 clips: what the interrupted run would have read next

    copied = tmp_path / "elsewhere"
    shutil.copytree(original.parent, copied)
    moved = stream(copied / original.name)
    moved.load_state_dict(state)
    assert take_keys(moved, 3) == rest  # the same samples follow, wherever the shards now live

    repacked = make_shards("d", [3, 5], folder=tmp_path / "repacked")  # same name, same 8 samples, other shards
    with pytest.raises(ValueError, match=r"dataset\(s\) \['d'\] hold the same number of samples .* other shards"):
        stream(repacked).load_state_dict(state)
