"""Our collectives over two real gloo ranks started from env:// variables alone.

Work done once by rank 0 for every rank (`dist.computed_on_rank0`): its result or its error reaches
both ranks, and with a heartbeat the others wait past the collective timeout (a universal-checkpoint
conversion of a large model takes minutes). The linear probe's feature cache (`gather_features`):
every rank gets every rank's rows, in chunks, uneven counts and an empty rank included."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

WORKER = Path(__file__).parent / "helpers" / "collectives_worker.py"

pytestmark = pytest.mark.distributed


def outcomes(tmp_path: Path, case: str, two_ranks_without_launcher) -> list[dict]:
    done = two_ranks_without_launcher([str(WORKER), case, str(tmp_path)], timeout=90)
    assert all(d.returncode == 0 for d in done), [d.stderr[-2000:] for d in done]
    return [json.loads((tmp_path / f"{case}_{rank}.json").read_text()) for rank in range(2)]


def test_rank_0s_result_reaches_every_rank(tmp_path, two_ranks_without_launcher):
    r0, r1 = outcomes(tmp_path, "ok", two_ranks_without_launcher)
    assert r0["value"] == r1["value"] == {"answer": 42, "by": 0}


def test_an_expected_error_is_the_same_error_on_every_rank(tmp_path, two_ranks_without_launcher):
    r0, r1 = outcomes(tmp_path, "expected", two_ranks_without_launcher)
    assert r0["error"] == r1["error"] == "ValueError: the saved states do not fit"


def test_an_unexpected_error_is_named_to_the_other_ranks(tmp_path, two_ranks_without_launcher):
    r0, r1 = outcomes(tmp_path, "unexpected", two_ranks_without_launcher)
    assert r0["error"] == "KeyError: 'the saved states do not fit'"
    assert r1["error"].startswith("PeerFailure: rank 0 failed while answering: KeyError: 'the saved states do not fit'")


def test_a_heartbeat_lets_the_other_ranks_wait_past_the_collective_timeout(tmp_path, two_ranks_without_launcher):
    r0, r1 = outcomes(tmp_path, "long_with_beat", two_ranks_without_launcher)
    assert r0["value"] == r1["value"] == {"answer": 42, "by": 0}
    assert r1["waited_s"] >= 12  # three times the 4 s timeout
    # the same wait without the heartbeat: rank 1's broadcast times out
    r0, r1 = outcomes(tmp_path, "long_without_beat", two_ranks_without_launcher)
    assert "value" not in r1 and r1["waited_s"] < 12, r1


@pytest.mark.parametrize("case, videos", [("features_uneven", 10), ("features_one_rank_empty", 3)])
def test_every_rank_gets_every_ranks_features_in_video_order(tmp_path, two_ranks_without_launcher, case, videos):
    import torch
    r0, r1 = outcomes(tmp_path, case, two_ranks_without_launcher)
    assert r0["value"] == r1["value"]
    merged = r0["value"]
    index = sorted(merged["index"])
    assert merged["index"] == index and len(index) == videos
    expected = torch.tensor(index).float()[:, None, None] + torch.arange(6, dtype=torch.float32).view(1, 2, 3) / 10
    assert merged["features"] == expected.tolist() and merged["label"] == [i % 5 for i in index]
