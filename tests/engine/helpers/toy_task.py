"""A test task around the real tiny MAE: in-memory uint8 clips, its own masks, and optional poisoned steps.

It drives the real trainer and DeepSpeed engine without shard files, so the engine tests cover the
ZeRO x precision matrix in seconds; the data layer runs for real in tests/e2e.
"""
from __future__ import annotations

import torch

from ppma_scale.config import build_config
from ppma_scale.engine.tasks import StepContext, Task
from ppma_scale.models import build_mae

FRAMES, SIZE = 4, 32


def toy_config(**train) -> object:
    return build_config({
        "run": {"task": "mae", "seed": 3},
        "model": {"size": "tiny", "embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 16},
        "mae": {"mask_ratio": 0.5, "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
        "data": {"num_frames": FRAMES, "img_size": SIZE},
        "optim": {"lr": 1e-3, "warmup_steps": 1, "clip_grad": 1.0},
        "train": {"micro_batch": 2, "log_every": 1, "keep_last": 50, **train},
    })


class ToyStream:
    """Deterministic clips by index; 8 batches per epoch per rank; its state is the next index."""

    steps_per_epoch = 8

    def __init__(self, rank: int, micro_batch: int) -> None:
        self.rank, self.micro_batch, self.index = rank, micro_batch, 0

    def __iter__(self):
        while True:
            gen = torch.Generator().manual_seed(1000 * self.rank + self.index)
            video = torch.randint(0, 256, (self.micro_batch, 3, FRAMES, SIZE, SIZE), generator=gen, dtype=torch.uint8)
            self.index += 1
            yield {"video": video}

    def state_dict(self):
        return {"index": self.index}

    def resumes_alone(self, state):
        return True

    def continued_state(self, states):  # after a world-size change: rank 0's position, given to every rank
        return states[0]

    def load_state_dict(self, state):
        self.index = state["index"]

    def stats(self):
        return {"skipped": 0}


class ToyTask(Task):
    """MAE on ToyStream; `poison` lists optimizer steps (from 0) whose loss is made NaN on rank 0."""

    name = "mae"

    def __init__(self, cfg, poison=()) -> None:
        super().__init__(cfg)
        self.poison = set(poison)

    def validate(self) -> None:
        pass

    def build_model(self, dist):
        cfg = self.cfg
        model = build_mae(cfg.model, cfg.mae, cfg.data.num_frames, cfg.data.img_size)
        self.num_tokens = model.encoder.num_patches
        return model

    def build_train_stream(self, dist, engine):
        self.engine = engine  # kept so the worker can read the live master weights after the run
        return ToyStream(dist.rank, self.cfg.train.micro_batch)

    def loss(self, engine, batch, ctx: StepContext):
        video = ((batch["video"].to(ctx.device).float() / 255 - 0.45) / 0.25).to(ctx.dtype)
        keys = torch.rand(video.shape[0], self.num_tokens, generator=ctx.generator())
        masked = int(self.cfg.mae.mask_ratio * self.num_tokens)
        mask = torch.zeros_like(keys, dtype=torch.bool)
        mask.scatter_(1, keys.argsort(dim=1)[:, :masked], True)
        loss, _ = engine(video, mask.to(ctx.device))
        if ctx.step in self.poison and ctx.dist.rank == 0:
            loss = loss * float("nan")
        return loss, {"visible_share": 1.0 - mask.float().mean()}  # an extra metric: 1 - mask_ratio
