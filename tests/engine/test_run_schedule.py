"""How long a run is, which data epoch each step is in, and what a stop leaves owed.

Unit tests of the trainer's schedule (epochs counted in batches; a resume on another number of ranks
continues by data epochs), then the real trainer on ToyTask (helpers/schedule_worker.py).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from ppma_scale.config import build_config
from ppma_scale.engine.metrics import read_jsonl
from ppma_scale.engine.trainer import _Schedule

WORKER = Path(__file__).parent / "helpers" / "schedule_worker.py"


def config(**train):
    return build_config({"run": {"task": "mae"}, "model": {"size": "tiny"}, "data": {"train": "unused"},
                         "optim": {"lr": 1e-3, "warmup_epochs": 0.5, "min_lr": 0.0},
                         "train": {"micro_batch": 4, **train}})


def test_epochs_count_batches_when_accumulation_does_not_divide_an_epoch():
    schedule = _Schedule(config(epochs=3, grad_accum=3), batches_per_epoch=8, world_size=1)
    assert schedule.total == 8 and schedule.epoch(8) == pytest.approx(3.0)  # 24 batches, not 6 steps x 3
    assert [s for s in range(1, 9) if schedule.eval_due(s, 1)] == [3, 6, 8]  # the steps that finish epochs 1, 2, 3


def test_a_resume_on_fewer_ranks_continues_an_epochs_run_by_data_epochs():
    cfg = config(epochs=2, grad_accum=1)
    two = _Schedule(cfg, batches_per_epoch=50, world_size=2)  # 2 ranks: 50 steps per epoch
    one_fresh = _Schedule(cfg, batches_per_epoch=100, world_size=1)  # 1 rank: 100
    assert two.epoch(50) == 1.0
    resumed = _Schedule(cfg, batches_per_epoch=100, world_size=1, start=50, start_epoch=two.epoch(50))
    assert resumed.total == 150  # step numbers continue: 100 more steps = the one epoch left
    assert resumed.epoch(51) == pytest.approx(1.01) and resumed.epoch(150) == pytest.approx(2.0)
    # the lr continues at the schedule's halfway point (1-rank units), not at step 50 of 200
    assert resumed.lr(50) == one_fresh.lr(100) and resumed.lr(149) == one_fresh.lr(199)
    assert resumed.eval_due(150, 1) and not resumed.eval_due(100, 1)


def test_a_resume_on_other_ranks_owes_the_evaluation_the_saving_run_was_due():
    """The saving run's steps were 2.5 batches-per-step epochs: step 3 took it from epoch 0.8 to 1.2, so
    its evaluation was due. Resumed on a quarter of the ranks (10 steps per epoch), the step before 3
    would seem to lie in epoch 1.1: without the saved `epoch_before` that owed evaluation is missed."""
    cfg = config(epochs=3, grad_accum=2)
    saving = _Schedule(cfg, batches_per_epoch=5, world_size=4)
    assert saving.eval_due(3, 1) and saving.epoch(3) == pytest.approx(1.2)
    resumed = _Schedule(cfg, batches_per_epoch=20, world_size=1, start=3, start_epoch=saving.epoch(3),
                        epoch_before_start=saving.epoch(2))
    assert resumed.eval_due(3, 1)
    assert not resumed.eval_due(3, 2)  # another train.eval_every on resume still decides
    assert [s for s in range(4, 22) if resumed.eval_due(s, 1)] == [11, 21]  # then epochs 2 and 3 as counted now
    unknown = _Schedule(cfg, batches_per_epoch=20, world_size=1, start=3, start_epoch=saving.epoch(3))
    assert not unknown.eval_due(3, 1)  # a marker without it (older runs) falls back on the new step length


def test_a_resume_on_other_ranks_keeps_a_max_steps_run_in_steps():
    cfg = config(max_steps=300)
    resumed = _Schedule(cfg, batches_per_epoch=100, world_size=1, start=50, start_epoch=1.0)
    assert resumed.total == 300 and resumed.lr(50) == _Schedule(cfg, 100, 1).lr(50)
    assert resumed.epoch(51) == pytest.approx(1.01)  # the data epoch still continues from the checkpoint's


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, run_worker):
    out = tmp_path_factory.mktemp("schedule")
    return out, run_worker(WORKER, out)



def test_the_trainer_reads_every_epoch_asked_for_under_accumulation(outcomes):
    out, results = outcomes
    assert results["accum3_epochs3"]["step"] == 8 and results["accum3_epochs3"]["batches"] == 24
    epochs = [m["epoch"] for m in read_jsonl(out / "accum" / "metrics.jsonl")]
    assert epochs[-1] == 3.0 and epochs[0] == pytest.approx(3 / 8, abs=1e-4)


def test_a_stop_logs_the_steps_since_the_last_record(outcomes):
    out, results = outcomes
    assert results["stop_mid_window"]["stopped_by"] == "SIGTERM" and results["stop_mid_window"]["step"] == 5
    assert [m["step"] for m in read_jsonl(out / "window" / "metrics.jsonl")] == [4, 5, 6]


def test_a_run_stopped_before_its_final_evaluation_evaluates_on_resume(outcomes):
    out, results = outcomes
    assert results["stop_at_end"]["step"] == 4 and results["stop_at_end"]["stopped_by"] == "SIGTERM"
    assert results["stop_at_end"]["evaluated"] == []  # the signal skips the evaluation to save in time
    assert results["stop_at_end_resumed"]["evaluated"] == [4]
    assert results["stop_at_end_resumed_again"]["evaluated"] == []  # owed once, not on every restart
    events = [e["event"] for e in read_jsonl(out / "final" / "events.jsonl")]
    assert events.count("eval") == 1 and "eval_pending" in events


def test_a_fresh_start_keeps_the_config_and_records_of_an_attempt_that_saved_no_checkpoint(outcomes):
    out, results = outcomes
    run_dir = out / "crashed"
    assert results["fresh_after_crash"]["step"] == 2
    assert (run_dir / "config.after-step_0.yaml").read_text() == "an: earlier attempt's config\n"
    assert "earlier attempt" not in (run_dir / "config.yaml").read_text() and "task: mae" in (run_dir / "config.yaml").read_text()
    assert read_jsonl(run_dir / "metrics.after-step_0.jsonl") == [{"step": 1, "loss": 9.0}]
    assert [m["step"] for m in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2]


def test_a_complete_tag_in_the_way_of_a_save_is_set_aside_not_deleted(outcomes):
    import torch
    out, _ = outcomes
    root = out / "in_way" / "checkpoints"
    moved, new = root / "step_00000002.replaced", root / "step_00000002"
    assert "saved" not in torch.load(moved / "rank_00000.pt", weights_only=True)  # the trainer's own save
    assert (moved / "ppma_complete.json").is_file() and (moved / "mp_rank_00_model_states.pt").is_file()
    assert torch.load(new / "rank_00000.pt", weights_only=True) == {"saved": "again"}
    assert (new / "ppma_complete.json").is_file()
