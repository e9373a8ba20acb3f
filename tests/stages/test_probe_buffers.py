"""Evaluation spread over ranks scores the model a checkpoint keeps: rank 0's BatchNorm statistics."""
import datetime
import json

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ppma_scale.engine.classify import share_buffers_from_rank0


def _rank_main(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool (it would hang)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    head = torch.nn.Sequential(torch.nn.BatchNorm1d(4, affine=False), torch.nn.Linear(4, 3))
    torch.manual_seed(0)
    head[1].reset_parameters()
    head.register_buffer("frozen", torch.full((3,), float(rank)))  # like a blend's source trunks: never trained
    head.train()
    head(torch.randn(16, 4) + 3.0 * rank)  # each rank's batches move its own running statistics
    before = [head[0].running_mean.tolist(), head[0].running_var.tolist()]
    share_buffers_from_rank0(head)
    after = [head[0].running_mean.tolist(), head[0].running_var.tolist()]
    gathered = [None, None]
    dist.all_gather_object(gathered, {"before": before, "after": after, "frozen": head.frozen.tolist()})
    if rank == 0:
        with open(f"{out_dir}/result.json", "w") as handle:
            json.dump(gathered, handle)
    dist.destroy_process_group()


def test_every_rank_evaluates_with_rank_zeros_batchnorm_statistics(tmp_path):
    mp.start_processes(_rank_main, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="fork",
                       join=True)
    rank0, rank1 = json.loads((tmp_path / "result.json").read_text())
    assert rank0["before"] != rank1["before"]  # without sharing, the ranks would score different models
    assert rank0["after"] == rank1["after"] == rank0["before"]
    assert rank1["frozen"] == [1.0] * 3  # only BatchNorm statistics travel (a blend's trunks are hundreds of MB)
