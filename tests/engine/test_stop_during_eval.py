"""A stop signal during an evaluation inside training: every rank abandons it at the same batch, the
step is saved, the run stops (exit 0), and the resumed run evaluates that step before training on.

SLURM's SIGUSR1 comes 10 minutes before the time limit; a multi-view evaluation of a large test set
takes longer, and used to run to its end (or the kill) before the stop was looked at. Three attempts
of one real two-rank classification run (helpers/eval_stop_worker.py), each started afresh like a
requeued job:
1. rank 1 is signalled while scoring its first evaluation batch of step 4 (no checkpoint due there);
2. the resume evaluates step 4 first, trains steps 5-6, saves step 6 and is signalled in its final
   evaluation (the checkpoint was saved before it);
3. the resume owes only that final evaluation.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ppma_scale.engine.metrics import read_jsonl

WORKER = Path(__file__).parent / "helpers" / "eval_stop_worker.py"
BATCHES = 4  # evaluation batches per rank: 8 test videos, 2 ranks, 1 video per batch

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def attempts(tmp_path_factory, tiny_shards, two_ranks_without_launcher) -> tuple[Path, list[dict]]:
    """Per attempt: each rank's outcome, and the run directory's events, eval files and tags after it."""
    work = tmp_path_factory.mktemp("stop_during_eval")
    run_dir, seen, results = work / "run", 0, []
    for number, signal_at in enumerate((4, 6, -1)):
        out = work / f"attempt_{number}"
        out.mkdir()
        done = two_ranks_without_launcher([str(WORKER), str(out), str(run_dir), str(tiny_shards["downstream_train"]),
                                           str(tiny_shards["downstream_val"]), str(signal_at)], timeout=300)
        assert [d.returncode for d in done] == [0, 0], [d.stderr[-3000:] for d in done]
        events, latest = read_jsonl(run_dir / "events.jsonl"), run_dir / "checkpoints" / "latest"
        results.append({"ranks": [json.loads((out / f"outcome_{rank}.json").read_text()) for rank in range(2)],
                        "events": events[seen:], "eval_files": sorted(p.name for p in (run_dir / "eval").glob("*")),
                        "tags": sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")),
                        "latest": latest.read_text().strip() if latest.is_file() else None})
        seen = len(events)
    return run_dir, results


def named(events: list[dict], *names: str) -> list[tuple]:
    return [(e["event"], e.get("step"), e.get("signal")) for e in events if e["event"] in names]


def test_every_rank_abandons_the_evaluation_at_the_same_batch_and_stops_saved(attempts):
    run_dir, results = attempts
    first = results[0]
    for rank in first["ranks"]:
        assert rank["stopped_by"] == "SIGUSR1" and rank["step"] == 4
        # one batch scored of 4, on rank 0 too: it was never signalled, it learned at the next fetch
        assert rank["done"] == [["train", s] for s in range(4)] + [["eval", 4]]
    assert named(first["events"], "checkpoint", "eval", "eval_interrupted", "stop") == [
        ("eval_interrupted", 4, "SIGUSR1"), ("checkpoint", 4, None), ("stop", 4, "SIGUSR1")]
    assert first["eval_files"] == []  # nothing that reads as a result, no partial file either
    assert first["tags"] == ["step_00000004"] and first["latest"] == "step_00000004"
    assert (run_dir / "checkpoints" / "step_00000004" / "ppma_complete.json").is_file()


def test_a_stop_logs_the_steps_since_the_last_record_also_during_an_evaluation(attempts):
    run_dir, _ = attempts
    assert [m["step"] for m in read_jsonl(run_dir / "metrics.jsonl")] == [4, 5, 6]  # log_every 5: 4 by the stop


def test_the_resume_evaluates_the_abandoned_step_once_before_training_on(attempts):
    _, results = attempts
    second = results[1]
    for rank in second["ranks"]:
        assert rank["done"] == [["eval", 4]] * BATCHES + [["train", 4], ["train", 5], ["eval", 6]]
        assert rank["stopped_by"] == "SIGUSR1" and rank["step"] == 6
    assert named(second["events"], "eval_pending", "checkpoint", "eval", "eval_interrupted", "stop") == [
        ("eval_pending", 4, None), ("eval", 4, None), ("checkpoint", 6, None), ("eval_interrupted", 6, "SIGUSR1"),
        ("stop", 6, "SIGUSR1")]  # step 6 was saved before its evaluation: not saved twice
    assert second["eval_files"] == ["step_00000004.json"] and second["latest"] == "step_00000006"
    step4 = [e for e in second["events"] if e["event"] == "eval"][0]
    assert step4["top1"] is not None


def test_a_run_stopped_in_its_final_evaluation_owes_only_that_evaluation(attempts):
    run_dir, results = attempts
    third = results[2]
    for rank in third["ranks"]:
        assert rank["done"] == [["eval", 6]] * BATCHES and rank["stopped_by"] is None and rank["step"] == 6
    assert named(third["events"], "eval_pending", "checkpoint", "eval", "eval_interrupted", "stop", "end") == [
        ("eval_pending", 6, None), ("eval", 6, None), ("end", 6, None)]
    assert third["eval_files"] == ["step_00000004.json", "step_00000006.json"]
    every = read_jsonl(run_dir / "events.jsonl")
    assert [e["step"] for e in every if e["event"] == "eval"] == [4, 6]  # each step evaluated exactly once
    metrics = json.loads((run_dir / "eval" / "step_00000006.json").read_text())
    assert metrics["videos"] == 8 and metrics["views_per_video"] == [2]


FEATURE_WORKER = Path(__file__).parent / "helpers" / "feature_stop_worker.py"


def test_a_stop_signal_during_the_linear_probes_feature_pass_ends_it_on_every_rank(tmp_path, tiny_shards,
                                                                                  two_ranks_without_launcher):
    """The feature pass encodes every training video before the first step (Kinetics-size: longer than
    SLURM's warning). A stop there ends it at the next batch on every rank, exit 0, nothing to save."""
    run_dir = tmp_path / "probe"
    done = two_ranks_without_launcher([str(FEATURE_WORKER), str(tmp_path), str(run_dir),
                                       str(tiny_shards["downstream_train"]), str(tiny_shards["downstream_val"])],
                                      timeout=300)
    assert [d.returncode for d in done] == [0, 0], [d.stderr[-3000:] for d in done]
    outcomes = [json.loads((tmp_path / f"outcome_{rank}.json").read_text()) for rank in range(2)]
    from ppma_scale.data.manifest import load_manifest
    videos = load_manifest(tiny_shards["downstream_train"]).num_samples
    for outcome in outcomes:
        assert outcome["stopped_by"] == "SIGUSR1" and outcome["step"] == 0 and outcome["checkpoint"] is None
        # its first batch (one video) only, rank 0 too (it was never signalled); the pass would be half the videos
        assert outcome["encoded"] == outcome["views_per_video"] and videos // 2 > 1
    assert "stopping on SIGUSR1 while preparing the training data" in done[0].stdout
    assert not (run_dir / "checkpoints").exists() or not list((run_dir / "checkpoints").glob("step_*"))
