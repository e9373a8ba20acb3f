"""A rank whose data fails stops every rank at once, with the failed rank's error in every log.

Both processes are started directly with env:// variables and no launcher, as on the nodes of a
DeepSpeed hostfile (pdsh) job: nothing kills the healthy rank. Before the agreement it went on into
the gradient reduction and learned of the failure only from the transport (gloo: "Connection closed
by peer"; NCCL, when the failed rank does not exit: nothing until the process-group timeout)."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from ppma_scale.engine.agreement import StopAgreed, agreed
from ppma_scale.engine.signals import StopRequest

WORKER = Path(__file__).parent / "helpers" / "rank_failure_worker.py"

pytestmark = pytest.mark.distributed


def test_agreed_batches_fail_together_and_stay_in_step(tmp_path, two_ranks_without_launcher):
    done = two_ranks_without_launcher([str(WORKER), "agree", str(tmp_path)], timeout=90)
    assert all(d.returncode == 0 for d in done), [d.stderr[-2000:] for d in done]
    r0, r1 = (json.loads((tmp_path / f"agree_{rank}.json").read_text()) for rank in range(2))
    assert r0["clean"]["items"] == r1["clean"]["items"] == [0, 1, 2]
    # a failure mid-stream and one at the ending fetch (an evaluation pass that read nothing)
    assert r1["rank1_mid"]["error"] == "RuntimeError: rank 1 data broke at fetch 1"
    assert r0["rank1_mid"]["error"].startswith("PeerFailure: rank 1 failed while reading its training batch: "
                                               "RuntimeError: rank 1 data broke at fetch 1")
    assert r1["rank1_at_end"]["error"] == "RuntimeError: rank 1 data broke at fetch 3"
    assert r0["rank1_at_end"]["error"].startswith("PeerFailure: rank 1 failed while reading its evaluation videos")
    assert r0["both"]["error"] == "RuntimeError: rank 0 data broke at fetch 2"  # each keeps its own error
    assert r1["both"]["error"] == "RuntimeError: rank 1 data broke at fetch 2"
    assert "ran out of batches" in r0["uneven"]["error"] and "ran out of batches" in r1["uneven"]["error"]
    assert r0["after"]["items"] == r1["after"]["items"] == [0, 1]


def test_a_rank_whose_data_fails_stops_the_real_trainer_on_every_rank(tmp_path, two_ranks_without_launcher):
    done = two_ranks_without_launcher([str(WORKER), "train", str(tmp_path)])
    assert all(d.returncode == 0 for d in done), [d.stderr[-3000:] for d in done]
    r0, r1 = (json.loads((tmp_path / f"train_{rank}.json").read_text()) for rank in range(2))
    assert r1["error"].startswith("RuntimeError: dataset toy: 51 samples in a row could not be read")
    assert r0["error"].startswith("PeerFailure: rank 1 failed while reading its training batch: RuntimeError: "
                                  "dataset toy: 51 samples in a row")
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]  # rank 1's third batch failed before step 3 computed anything


def test_a_stop_signal_on_one_rank_ends_an_agreed_pass_on_every_rank_at_the_same_batch(
        tmp_path, two_ranks_without_launcher):
    """The stop rides on the fetch's agreement (no collective of its own): rank 0, never signalled,
    leaves at the same fetch as rank 1, and a pass whose batches have all been read is let finish."""
    done = two_ranks_without_launcher([str(WORKER), "stop", str(tmp_path)], timeout=90)
    assert all(d.returncode == 0 for d in done), [d.stderr[-2000:] for d in done]
    r0, r1 = (json.loads((tmp_path / f"stop_{rank}.json").read_text()) for rank in range(2))
    stopped = "StopAgreed: a stop signal reached 1 of 2 ranks while reading its evaluation videos: every rank stops"
    for r in (r0, r1):
        assert r["mid"]["items"][:2] == [0, 1] and r["mid"]["items"][2].startswith(stopped), r["mid"]
        assert len(r["mid"]["items"]) == 3
        assert r["at_end"]["items"] == [0, 1, 2, 3]
        assert r["without_stop"]["items"] == [0, 1]


def test_a_single_process_pass_stops_at_the_fetch_after_its_signal():
    got, stop = [], StopRequest()
    try:
        with pytest.raises(StopAgreed, match="a stop signal arrived while reading its evaluation videos"):
            for item in agreed(range(3), "reading its evaluation videos", stop=stop):
                got.append(item)
                os.kill(os.getpid(), signal.SIGUSR1)
    finally:
        stop.close()
    assert got == [0]
