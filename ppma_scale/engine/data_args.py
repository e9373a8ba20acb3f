"""The one place where config sections become the data layer's plain arguments (every task uses it)."""
from __future__ import annotations

from typing import Any

from ..config import Config
from .dist import DistInfo


def train_stream_args(cfg: Config, dist: DistInfo, require_labels: bool) -> dict[str, Any]:
    """Keyword arguments of `ppma_scale.data.build_train_stream` for this rank."""
    data, aug = cfg.data, cfg.augment
    return dict(
        datasets=data.train, rank=dist.rank, world_size=dist.world_size, micro_batch=cfg.train.micro_batch,
        seed=cfg.run.seed, num_frames=data.num_frames, sampling=data.sampling, stride=data.stride,
        window_s=data.window_s, img_size=data.img_size, short_side=data.short_side, repeat_aug=data.repeat_aug,
        crop=aug.crop, scale=aug.scale, ratio=aug.ratio, flip=aug.flip, randaugment=aug.randaugment, mean=aug.mean,
        decoder=data.decoder, device=str(dist.device), num_workers=data.num_workers, prefetch=data.prefetch,
        shuffle_buffer=data.shuffle_buffer, mix=data.mix, steps_per_epoch=cfg.train.steps_per_epoch,
        classes=data.classes, require_labels=require_labels, allow_pipe=data.allow_pipe,
        max_decode_failures=data.max_decode_failures)


def stream_batches_per_epoch(cfg: Config, samples: list[int], world_size: int) -> int:
    """Batches per rank per epoch of the training stream on `world_size` ranks (train.steps_per_epoch,
    else every sample of every dataset once: ppma_scale.data.schedule.default_steps)."""
    from ..data.schedule import Layout, steps_per_epoch
    layout = Layout(world_size, max(1, cfg.data.num_workers), cfg.train.micro_batch, cfg.data.mix)
    return steps_per_epoch(samples, layout, cfg.train.steps_per_epoch)


def build_stream_from_config(cfg: Config, dist: DistInfo, require_labels: bool = False):
    """This rank's training stream as the config describes it."""
    from ..data.loader import build_train_stream
    return build_train_stream(**train_stream_args(cfg, dist, require_labels))


def skipped_samples(stats: dict[str, Any]) -> int:
    """Samples dropped so far (undecodable or unreadable), from a stream's `stats()`."""
    return int(stats.get("decode_failures", 0) or 0) + int(stats.get("unreadable", 0) or 0)
