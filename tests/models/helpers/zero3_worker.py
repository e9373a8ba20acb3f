"""Our MAE (blocks checkpointed) under DeepSpeed ZeRO-3 + bf16: `deepspeed --num_gpus 2 zero3_worker.py OUT`.

Every parameter is partitioned (persistence threshold 0), so each block's weights are gathered on
call and again in the checkpoint recompute. Rank 0 writes OUT/result.json with every rank's
losses and the loss of the same first step computed in fp32 without DeepSpeed.
"""
import argparse
import copy
import json
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist

from ppma_scale.engine.dist import exit_rank, shutdown
from ppma_scale.models import MAE, VideoViT, resolve_size

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("--local_rank", type=int, default=0)
args = parser.parse_args()

deepspeed.init_distributed(dist_backend="gloo")
torch.manual_seed(0)
size = resolve_size("tiny", embed_dim=48, depth=3, num_heads=3, patch_size=8, decoder_dim=32)
model = MAE(VideoViT(size, num_frames=4, img_size=32, pos_embed="learned", layer_scale=0.5, act_checkpoint_every=1),
            decoder_depth=2)
reference = copy.deepcopy(model)
gen = torch.Generator().manual_seed(1)
video = torch.randn(2, 3, 4, 32, 32, generator=gen)
mask = torch.argsort(torch.rand(2, 32, generator=gen), dim=1) < 24  # 24 of 32 tokens hidden per row

config = {
    "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "bf16": {"enabled": True},
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
}
optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
partitioned = all(getattr(p, "ds_numel", 0) > 0 and p.numel() == 0 for p in engine.module.parameters())
losses = []
for _ in range(6):
    loss, _ = engine(video.to(torch.bfloat16), mask)
    engine.backward(loss)
    engine.step()
    losses.append(loss.item())
every = [None] * dist.get_world_size()
dist.all_gather_object(every, losses)
if dist.get_rank() == 0:
    ref_loss, _ = reference(video, mask)
    Path(args.out, "result.json").write_text(json.dumps(
        {"losses": every, "reference_first": ref_loss.item(), "partitioned": partitioned}))
dist.barrier()
shutdown()  # also removes DeepSpeed's CPU all-reduce segments from /dev/shm
exit_rank(0)  # as the launch scripts do: no interpreter teardown with gloo threads still running
