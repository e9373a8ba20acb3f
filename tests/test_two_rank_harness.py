"""The harness that starts two ranks without a launcher (`two_ranks_without_launcher`, conftest.py):
a chatty rank must not stall its peer, and a rank that hangs is reported with its stack."""
from __future__ import annotations

import pytest

# Rank 1 writes 1 MiB to stderr, then tells rank 0 it is done; rank 0 waits for that, as a rank
# waits for its peer in a collective. Read through pipes one rank after the other, rank 1 blocked
# on its full stderr pipe and rank 0 never ended.
CHATTY = """
import os, pathlib, sys, time
flag = pathlib.Path(sys.argv[1]) / "rank1_done"
if os.environ["RANK"] == "1":
    sys.stderr.write("x" * (1 << 20))
    sys.stderr.flush()
    flag.touch()
else:
    deadline = time.monotonic() + 20
    while not flag.exists():
        assert time.monotonic() < deadline, "rank 1 never got its output out"
        time.sleep(0.05)
    print("rank 0 saw rank 1 finish")
"""

HANGING = """
import os, time
def waiting_for_a_peer():
    time.sleep(600)
if os.environ["RANK"] == "1":
    waiting_for_a_peer()
"""


def test_a_rank_writing_a_lot_does_not_stall_its_peer(tmp_path, two_ranks_without_launcher):
    done = two_ranks_without_launcher(["-c", CHATTY, str(tmp_path)], timeout=30)
    assert [d.returncode for d in done] == [0, 0], done[0].stderr[-2000:]
    assert done[0].stdout.strip() == "rank 0 saw rank 1 finish"
    assert len(done[1].stderr) == 1 << 20


def test_a_rank_that_does_not_end_is_reported_with_its_stack(two_ranks_without_launcher):
    with pytest.raises(AssertionError) as failure:
        two_ranks_without_launcher(["-c", HANGING], timeout=3)
    message = str(failure.value)
    assert "did not end in 3 s" in message
    assert "--- rank 1 stderr (end) ---" in message and "waiting_for_a_peer" in message, message
