"""Scale-review fixes in the checkpoint path.

1. A run directory the nodes do not share (node-local disk) is refused at start-up, on every rank,
   naming the ranks and hosts that could not see it (engine/run_dir_check.py). Without the check
   each node wrote its own checkpoint files and the first resume was the first thing to notice.
2. Each rank fsyncs the checkpoint files it wrote, and only those, before the marker calls the
   checkpoint complete; rank 0 also syncs the tag directory. Before, only the marker was synced, so
   after a node crash a "complete" checkpoint could lack data that was still in a write-back cache.

Two ranks are started directly from env:// variables (helpers/run_dir_check_worker.py).
"""
import json
import re
import socket
from pathlib import Path

import pytest
import torch

from ppma_scale.engine.dist import DistInfo
from ppma_scale.engine.run_dir_check import check_shared_run_dir

WORKER = Path(__file__).parent / "helpers" / "run_dir_check_worker.py"
SOLO = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="gloo")


def test_a_single_process_run_is_not_checked(tmp_path):
    check_shared_run_dir(tmp_path / "run", SOLO)  # no process group needed, nothing written
    assert list(tmp_path.iterdir()) == []


@pytest.mark.distributed
def test_a_run_directory_only_rank_0_sees_is_refused_on_every_rank(tmp_path, two_ranks_without_launcher):
    done = two_ranks_without_launcher([str(WORKER), "check", str(tmp_path)], timeout=120)
    assert all(d.returncode == 0 for d in done), [d.stderr[-3000:] for d in done]
    r0, r1 = (json.loads((tmp_path / f"check_{rank}.json").read_text()) for rank in range(2))
    assert r0["shared"] == r1["shared"] == {"error": None}
    assert (tmp_path / "shared" / "run").is_dir()
    # rank 1 looks in a directory rank 0 never wrote to: both ranks raise the same error naming it
    assert r0["unshared"] == r1["unshared"]
    error = r0["unshared"]["error"]
    assert error.startswith(f"ConfigError: the run directory {tmp_path / 'node0' / 'run'} is not shared by every rank")
    host = socket.gethostname()
    assert f"rank 1 on host {host} (it looked in {tmp_path / 'node1' / 'run'}): the file is not there" in error
    assert f"rank 0 (host {host})" in error and "1 of 2 ranks" in error
    assert "filesystem every node shares" in error and "--output" in error
    assert not re.search(r"ranks? 0 on host", error)  # rank 0 is the reference, never listed as missing
    assert not r1["rank1_dir_created"]  # a rank that cannot see the directory does not create its own
    # rank 0 cannot write there: every rank raises, rank 0's error named
    assert r0["rank0_cannot_write"] == r1["rank0_cannot_write"]
    assert r0["rank0_cannot_write"]["error"].startswith(
        f"ConfigError: rank 0 (host {host}) could not create its check file in the run directory "
        f"{tmp_path / 'a_file' / 'run'}: ")
    assert r0["after"] == r1["after"] == {"error": None}  # the ranks stayed in step
    assert r0["left_behind"] == r1["left_behind"] == []  # every token file was removed


@pytest.mark.distributed
def test_each_rank_fsyncs_exactly_the_checkpoint_files_it_wrote(tmp_path, two_ranks_without_launcher):
    done = two_ranks_without_launcher([str(WORKER), "fsync", str(tmp_path)], timeout=300)
    assert all(d.returncode == 0 for d in done), [d.stderr[-3000:] for d in done]
    r0, r1 = (json.loads((tmp_path / f"fsync_{rank}.json").read_text()) for rank in range(2))
    expected_names = {
        "z2_bf16": {"mp_rank_00_model_states.pt", "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
                    "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"},
        "z3_fp32": {"zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_model_states.pt",
                    "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"},
    }
    for case, deepspeed_files in expected_names.items():
        tags = r0[case]["tags"]
        assert sorted(tags) == ["step_00000001", "step_00000002"]
        synced = {0: r0[case]["synced"], 1: r1[case]["synced"]}
        for tag, files in tags.items():
            data = set(files) - {"ppma_complete.json"}
            assert data == deepspeed_files | {"rank_00000.pt", "rank_00001.pt"}  # the names fsync'd are DeepSpeed's
            mine = {rank: [p.split("/", 1)[1] for p in paths if p.startswith(tag + "/")]
                    for rank, paths in synced.items()}
            markers = [n for n in mine[0] if n.startswith(".ppma_complete.json.tmp")]  # atomic write's temp name
            assert len(markers) == 1 and not [n for n in mine[1] if n.startswith(".ppma_complete")]
            written = {0: [n for n in mine[0] if n not in markers], 1: mine[1]}
            # every data file synced once, by the rank that wrote it; no rank syncs another's files
            assert sorted(written[0] + written[1]) == sorted(data), (case, tag, written)
            for rank in (0, 1):
                other = 1 - rank
                assert f"rank_{rank:05d}.pt" in written[rank]
                assert not [n for n in written[rank] if f"rank_{other}_" in n or f"rank_{other:05d}" in n], written
            if case == "z2_bf16":
                assert "mp_rank_00_model_states.pt" in written[0]  # stages 0-2: rank 0 writes the model states
            # rank 0 syncs the tag directory after every rank's files and before the marker, and again
            # after the marker; rank 1 never syncs the directory
            order = synced[0]
            dir_syncs = [i for i, p in enumerate(order) if p == tag]
            assert len(dir_syncs) == 2 and tag not in synced[1]
            assert max(order.index(f"{tag}/{n}") for n in written[0]) < dir_syncs[0]
            assert dir_syncs[0] < order.index(f"{tag}/{markers[0]}") < dir_syncs[1]
