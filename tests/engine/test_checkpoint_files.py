"""Checkpoint bookkeeping on disk: which tag is complete, what `latest` names, what rotation deletes.

The DeepSpeed side of saving and loading runs for real in test_engine_matrix.py and tests/e2e.
"""
import json

import pytest
import torch

from ppma_scale.engine.checkpoint import (LATEST, MARKER, CheckpointManager, find_resume_checkpoint,
                                          latest_checkpoint, read_checkpoint, tag_for)
from ppma_scale.engine.dist import DistInfo

SOLO = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="gloo")


def make_tag(root, step, complete=True, world_size=2):
    path = root / tag_for(step)
    path.mkdir(parents=True)
    names = ["mp_rank_00_model_states.pt"] + [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(world_size)]
    for name in names + [f"rank_{r:05d}.pt" for r in range(world_size)]:  # real torch files: resume checks them
        torch.save({}, path / name)
    if complete:
        (path / MARKER).write_text(json.dumps({"step": step, "world_size": world_size, "zero_stage": 2}))
    return path


def test_incomplete_tag_is_never_latest(tmp_path):
    root = tmp_path / "checkpoints"
    make_tag(root, 4)
    make_tag(root, 6, complete=False)  # a save killed half-way
    (root / LATEST).write_text(tag_for(4))
    assert latest_checkpoint(root).step == 4
    assert read_checkpoint(root / tag_for(6)) is None
    # `latest` pointing at an unfinished tag (e.g. it was being re-saved) falls back to the newest complete one
    (root / LATEST).write_text(tag_for(6))
    assert latest_checkpoint(root).step == 4
    (root / LATEST).unlink()
    assert latest_checkpoint(root).step == 4


def test_resume_argument_forms(tmp_path):
    run = tmp_path / "run"
    make_tag(run / "checkpoints", 2)
    make_tag(run / "checkpoints", 8)
    (run / "checkpoints" / LATEST).write_text(tag_for(8))
    assert find_resume_checkpoint("auto", run).step == 8
    assert find_resume_checkpoint("off", run) is None
    assert find_resume_checkpoint(str(run), tmp_path / "other").step == 8
    assert find_resume_checkpoint(str(run / "checkpoints"), tmp_path).step == 8
    assert find_resume_checkpoint(str(run / "checkpoints" / tag_for(2)), tmp_path).step == 2
    assert find_resume_checkpoint("auto", tmp_path / "fresh") is None
    with pytest.raises(FileNotFoundError, match="no such file"):
        find_resume_checkpoint(str(tmp_path / "missing"), run)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        find_resume_checkpoint(str(tmp_path / "empty"), run)


def test_rotation_keeps_last_k_and_the_latest(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (2, 4, 6, 8):
        make_tag(root, step)
    make_tag(root, 3, complete=False)  # an old leftover
    make_tag(root, 10, complete=False)  # newer than everything complete: kept for the next save to replace
    (root / LATEST).write_text(tag_for(8))
    removed = CheckpointManager(root, SOLO, keep_last=2).rotate()
    assert sorted(p.name for p in removed) == [tag_for(2), tag_for(3), tag_for(4)]
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [tag_for(6), tag_for(8), tag_for(10)]


def test_keep_last_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="train.keep_last"):
        CheckpointManager(tmp_path, SOLO, keep_last=0)
