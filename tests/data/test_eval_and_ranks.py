"""The eval stream (each video once over all ranks), real pack output, and two real gloo ranks that
step in lockstep over uneven shards without hanging."""
from __future__ import annotations

import datetime
import json

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ppma_scale.data.evalstream import build_eval_stream
from ppma_scale.data.loader import build_train_stream

from .conftest import TINY_CLIP

EVAL_CLIP = dict(num_frames=4, sampling="stride", stride=2, img_size=16, short_side=20)


def test_every_video_once_over_ranks_with_equal_batch_counts(make_shards):
    manifest = make_shards("val", [4, 3, 3], bad={5: "garbage"})  # 10 videos over 3 ranks
    seen, counts = [], []
    for rank in range(3):
        stream = build_eval_stream([manifest], rank=rank, world_size=3, videos_per_batch=2, test_clips=2,
                                   test_crops=3, num_workers=2, **EVAL_CLIP)
        batches = list(stream)
        counts.append(len(batches))
        assert len(batches) == stream.num_batches
        for batch in batches:
            assert batch["video"].shape == (2, 6, 3, 4, 16, 16) and batch["video"].dtype == torch.uint8
            for valid, index, label, key in zip(batch["valid"], batch["index"], batch["label"], batch["key"]):
                if valid:
                    seen.append(int(index))
                    assert key == f"val_{int(index):04d}" and int(label) == int(index) % 4
        if rank == 1:
            assert stream.stats()["failed"][0]["key"] == "val_0005"
    assert counts == [2, 2, 2]  # ceil(10 / 3) = 4 videos per rank, 2 per batch
    assert sorted(seen) == [i for i in range(10) if i != 5]  # each once; the undecodable one is flagged


def test_streams_read_real_pack_output(tiny_shards):
    train = build_train_stream([str(tiny_shards["synthetic"]), str(tiny_shards["nohuman"])], micro_batch=4,
                               num_workers=2, repeat_aug=2, **TINY_CLIP)
    batch = next(iter(train))
    assert batch["video"].shape == (8, 3, 4, 16, 16) and set(batch["dataset"]) <= {"synthetic", "nohuman"}
    assert train.classes == json.loads(tiny_shards["synthetic"].read_text())["classes"]
    val = build_eval_stream([str(tiny_shards["downstream_val"])], classes=train.classes, videos_per_batch=4,
                            num_workers=1, test_clips=1, test_crops=1, **EVAL_CLIP)
    indices = sorted(int(i) for b in val for i, v in zip(b["index"], b["valid"]) if v)
    assert indices == list(range(val.num_videos)) and val.stats()["decode_failures"] == 0


def _rank_main(rank: int, manifest: str, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    stream = build_train_stream([manifest], rank=rank, world_size=2, micro_batch=2, num_workers=2,
                                shuffle_buffer=4, **TINY_CLIP)
    keys = []
    for step, batch in enumerate(stream):
        total = torch.tensor([len(batch["key"])])
        dist.all_reduce(total)  # a collective every step, as training does: a missing batch would hang here
        keys.append(batch["key"])
        if step + 1 == 2 * stream.steps_per_epoch:
            break
    gathered = [None, None]
    dist.all_gather_object(gathered, {"keys": keys, "steps": stream.steps_per_epoch, "state": stream.state_dict()})
    if rank == 0:
        with open(f"{out_dir}/result.json", "w") as handle:
            json.dump(gathered, handle)
    dist.destroy_process_group()


def test_two_gloo_ranks_over_three_uneven_shards_finish_two_epochs(make_shards, tmp_path):
    manifest = make_shards("a", [6, 3, 2])  # 3 shards over 2 ranks, 11 samples -> 2 steps of 2 per rank
    mp.start_processes(_rank_main, args=(str(manifest), str(tmp_path / "init"), str(tmp_path)), nprocs=2,
                       start_method="fork", join=True)
    result = json.loads((tmp_path / "result.json").read_text())
    assert [r["steps"] for r in result] == [2, 2]
    for epoch in range(2):
        keys = [k for r in result for batch in r["keys"][2 * epoch:2 * epoch + 2] for k in batch]
        assert len(keys) == len(set(keys)) == 8  # disjoint over ranks within the epoch
    assert [r["state"]["step"] for r in result] == [4, 4]
