"""LossWindow.means over two real gloo ranks: every rank logs the mean over all ranks' applied steps,
not its own (rank 0 writes the log, so a rank-local mean would report one rank's share of the data)."""
from __future__ import annotations

import datetime
import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ppma_scale.engine.metrics import LossWindow

# per rank: the (loss, extras) of each step it applied; rank 1 applies fewer steps than rank 0
STEPS = {
    0: [(1.0, {"acc": 0.25, "tokens": 10}), (3.0, {"acc": 0.75, "tokens": 30})],
    1: [(11.0, {"acc": 1.0, "tokens": 50})],
}


def _rank_main(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    try:
        window = LossWindow(torch.device("cpu"))
        for loss, extras in STEPS[rank]:
            window.add(torch.tensor(loss), {"acc": torch.tensor(extras["acc"]), "tokens": extras["tokens"]})
        first = window.means()
        window.reset()
        if rank == 1:  # a window in which only rank 1 applied a step (rank 0 skipped a non-finite one)
            window.add(torch.tensor(5.0), {"acc": 0.5, "tokens": 7})
        else:
            window.extras = {"acc": torch.zeros(()), "tokens": torch.zeros(())}  # same names, nothing added
        second = window.means()
        with open(f"{out_dir}/rank{rank}.json", "w") as handle:
            json.dump({"first": first, "second": second}, handle)
    finally:
        dist.destroy_process_group()


def test_loss_window_means_are_global_over_ranks(tmp_path):
    mp.start_processes(_rank_main, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="fork",
                       join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    steps = [s for r in (0, 1) for s in STEPS[r]]
    expected = {"loss": sum(loss for loss, _ in steps) / 3, "acc": sum(e["acc"] for _, e in steps) / 3,
                "tokens": sum(e["tokens"] for _, e in steps) / 3}  # 5.0, 2/3, 30.0 over the 3 steps of both
    for rank, result in enumerate(results):
        assert result["first"] == pytest.approx(expected), rank
        local = sum(loss for loss, _ in STEPS[rank]) / len(STEPS[rank])
        assert result["first"]["loss"] != pytest.approx(local)  # neither rank's own mean (2.0 / 11.0)
        assert result["second"] == pytest.approx({"loss": 5.0, "acc": 0.5, "tokens": 7.0}), rank  # 1 step in all
