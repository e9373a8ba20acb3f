"""A rank that cannot write its DeepSpeed checkpoint files (a full disk) stops the job on every rank
with that error named, instead of leaving its peers in DeepSpeed's closing barrier. Two real ranks
(gloo, DeepSpeed ZeRO), no launcher to kill the survivor: helpers/save_fail_worker.py."""
import json
from pathlib import Path

WORKER = Path(__file__).parent / "helpers" / "save_fail_worker.py"


def test_a_rank_whose_deepspeed_write_fails_stops_every_rank_naming_it(tmp_path, two_ranks_without_launcher):
    done = two_ranks_without_launcher([str(WORKER), str(tmp_path)], timeout=150)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [d.returncode for d in done] == [1, 1], [d.stderr[-1500:] for d in done]
    assert results[1]["error"].startswith("OSError: [Errno 28] No space left on device")
    assert results[0]["error"].startswith("PeerFailure: rank 1 failed while writing its files of checkpoint")
    assert "No space left on device" in results[0]["error"]
    assert max(r["seconds"] for r in results) < 50  # agreed at once, not a 60 s collective timeout
    checkpoints = tmp_path / "run" / "checkpoints"
    assert not (checkpoints / "step_00000002" / "ppma_complete.json").exists()


def test_torchs_own_full_disk_error_is_a_write_failure_every_rank_agrees_on(tmp_path, two_ranks_without_launcher):
    """torch.save raises a RuntimeError, not an OSError, on a full disk: it went past the agreement
    (rank 1 died with it, rank 0 with gloo's "Connection closed by peer")."""
    done = two_ranks_without_launcher([str(WORKER), str(tmp_path), "torch"], timeout=150)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [d.returncode for d in done] == [1, 1], [d.stderr[-1500:] for d in done]
    assert results[1]["error"].startswith("OSError: writing checkpoint files in ") and \
        "step_00000002 failed ([enforce fail at inline_container.cc:672] . unexpected pos" in results[1]["error"]
    assert "MiB free there: a full disk or quota?" in results[1]["error"]
    assert results[0]["error"].startswith("PeerFailure: rank 1 failed while writing its files of checkpoint")
    assert max(r["seconds"] for r in results) < 50
