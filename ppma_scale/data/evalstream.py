"""The test-time stream: every video exactly once over all ranks, as C clips x K crops.

Videos are numbered in manifest order (datasets in order, shards in order, samples in order); rank
r takes a contiguous share, and every rank yields the same number of batches (the last padded with
`valid=False` rows) so a model that runs collectives in its forward (ZeRO-3) never waits on a rank
that finished early. A batch is

    {"video": uint8 (B, C*K, 3, T, S, S), "label": (B,), "index": (B,), "key": [B], "valid": bool (B,)}

with views ordered clip-major. A video that cannot be read or decoded comes back with valid=False
and is counted and named in `stats()`; a pass that evaluated none of its rank's videos, or skipped
more than `max_decode_failures` of them (judged from 100 videos on, as in training), raises instead
of reporting metrics over a remnant.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ppma_scale.data.clips import ClipSpec, test_indices
from ppma_scale.data.consumer import ignore_stop_signals, loader_generator, parse_sample
from ppma_scale.data.decode import DecodeError, EncodedClip, choose_decoder, make_decoder
from ppma_scale.data.shards import ShardSet, open_sources
from ppma_scale.data.stats import Stats, StatsLog
from ppma_scale.data.tarread import ShardReader
from ppma_scale.data.transforms import render_views, test_boxes

log = logging.getLogger(__name__)


@dataclass
class EvalContext:
    datasets: list[ShardSet]
    rank: int
    world_size: int
    batch: int  # videos per batch
    clip: ClipSpec
    num_clips: int
    num_crops: int
    img_size: int
    short_side: int
    decoder: str
    max_failure_share: float | None = 0.01  # data.max_decode_failures: skipped share that fails a pass

    @property
    def num_videos(self) -> int:
        return sum(d.num_samples for d in self.datasets)

    @property
    def per_rank(self) -> int:
        return math.ceil(self.num_videos / self.world_size)

    @property
    def num_batches(self) -> int:
        return max(1, math.ceil(self.per_rank / self.batch))

    @property
    def rank_videos(self) -> int:
        """Videos this rank evaluates (the last ranks may get fewer, or none)."""
        return max(0, min((self.rank + 1) * self.per_rank, self.num_videos) - self.rank * self.per_rank)

    @property
    def views(self) -> int:
        return self.num_clips * self.num_crops


class _EvalConsumer(IterableDataset):
    def __init__(self, ctx: EvalContext):
        super().__init__()
        self.ctx = ctx

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        ctx = self.ctx
        shards = [(d, u, n) for d, ds in enumerate(ctx.datasets) for u, n in zip(ds.urls, ds.counts)]
        ends = np.cumsum([n for _, _, n in shards])
        reader = ShardReader({u: n for _, u, n in shards})
        decoder = make_decoder(ctx.decoder, batch_size=1)
        stats = Stats()
        first, last = ctx.rank * ctx.per_rank, min((ctx.rank + 1) * ctx.per_rank, ctx.num_videos)
        for j in range(worker, ctx.num_batches, workers):
            rows = []
            for index in range(first + j * ctx.batch, first + (j + 1) * ctx.batch):
                rows.append(self._video(index, shards, ends, reader, decoder, stats) if index < last else None)
            yield self._collate(rows, stats.take(reader.problems))

    def _video(self, index: int, shards, ends, reader: ShardReader, decoder, stats: Stats):
        ctx = self.ctx
        s = int(np.searchsorted(ends, index, side="right"))
        dataset, url, _ = shards[s]
        ds = ctx.datasets[dataset]
        raw = reader.read(url, index - (int(ends[s - 1]) if s else 0))
        if raw is None:
            stats.unreadable += 1
            return None
        try:
            parsed = parse_sample(raw, ds, dataset, url)
            clips = test_indices(ctx.clip, parsed.frames, parsed.fps, ctx.num_clips)
            (frames,) = decoder.decode([EncodedClip(parsed.data, np.concatenate(clips), parsed.key)])
            if isinstance(frames, Exception):
                raise frames
        except DecodeError as exc:
            stats.fail(raw.get("__key__", "?"), ds.name, str(exc), url)
            return None
        stats.samples += 1
        t = ctx.clip.num_frames
        boxes = test_boxes(frames.shape[1], frames.shape[2], ctx.img_size, ctx.short_side, ctx.num_crops)
        views = [render_views(frames[c * t:(c + 1) * t], [(box, False) for box in boxes], ctx.img_size)
                 for c in range(ctx.num_clips)]
        return torch.cat(views), parsed.label, index, parsed.key

    def _collate(self, rows, stats: dict[str, Any]) -> dict[str, Any]:
        ctx = self.ctx
        size = ctx.img_size
        video = torch.zeros((len(rows), ctx.views, 3, ctx.clip.num_frames, size, size), dtype=torch.uint8)
        label = torch.full((len(rows),), -1, dtype=torch.int64)
        index = torch.full((len(rows),), -1, dtype=torch.int64)
        keys = [""] * len(rows)
        for i, row in enumerate(rows):
            if row is not None:
                video[i], label[i], index[i], keys[i] = row
        return {"video": video, "label": label, "index": index, "key": keys, "valid": index >= 0,
                "__stats__": stats}


class EvalStream:
    """One pass over the evaluation videos per `iter()`; the same number of batches on every rank."""

    def __init__(self, ctx: EvalContext, classes: list[str], decoder_reason: str, num_workers: int,
                 prefetch: int, pin_memory: bool):
        self.ctx, self.classes, self.decoder_reason = ctx, classes, decoder_reason
        self.num_workers, self.prefetch, self.pin_memory = num_workers, prefetch, pin_memory
        self._log = StatsLog(ctx.decoder, ctx.max_failure_share)

    @property
    def num_videos(self) -> int:
        return self.ctx.num_videos

    @property
    def num_batches(self) -> int:
        return self.ctx.num_batches

    @property
    def views_per_video(self) -> int:
        return self.ctx.views

    def __len__(self) -> int:
        return self.ctx.num_batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        workers = min(self.num_workers, self.ctx.num_batches)
        loader = DataLoader(_EvalConsumer(self.ctx), batch_size=None, num_workers=workers,
                            prefetch_factor=self.prefetch if workers else None, pin_memory=self.pin_memory,
                            worker_init_fn=ignore_stop_signals, generator=loader_generator(0, self.ctx.rank))
        before = self._log.counts()
        for batch in loader:
            self._log.merge(batch.pop("__stats__"))
            yield batch
        self._check_pass(before)

    def _check_pass(self, before: dict[str, int]) -> None:
        """A finished pass must have evaluated videos, and not skipped more than the limit allows:
        metrics over none, or over a remnant, would read as a (bad) result instead of an error."""
        done = {name: count - before[name] for name, count in self._log.counts().items()}
        if self.ctx.rank_videos and done["samples"] == 0:
            problems = [f"{p['url']}: {p['reason']}" for p in self._log.totals["shard_problems"][:3]]
            failed = [f"{f['key']}: {f['reason']}" for f in self._log.totals["failed"][-3:]]
            raise RuntimeError(f"evaluation (rank {self.ctx.rank}) read none of its {self.ctx.rank_videos} videos "
                               f"({done['unreadable']} unreadable, {done['decode_failures']} undecodable): "
                               f"shards {problems}; samples {failed}")
        self._log.check(since=before)  # as in training, judged from 100 videos on

    def stats(self) -> dict[str, Any]:
        return self._log.snapshot()


def build_eval_stream(
    datasets: Sequence[Any], *, rank: int = 0, world_size: int = 1, videos_per_batch: int = 4,
    num_frames: int = 16, sampling: str = "window", stride: int = 4, window_s: float = 2.7,
    img_size: int = 224, short_side: int = 256, test_clips: int = 2, test_crops: int = 3,
    decoder: str = "auto", device: str = "cpu", num_workers: int = 2, prefetch: int = 2,
    classes: str | Sequence[str] | None = None, require_labels: bool = True, allow_pipe: bool = False,
    max_decode_failures: float | None = 0.01,
) -> EvalStream:
    """The evaluation stream of one rank (see the module docstring). Decoding happens in the
    workers (PyAV, or DALI cpu on VP9 shards); `classes` must be the training label space;
    `max_decode_failures`: the share of skipped videos that fails a pass (as in training)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} / world size {world_size} is not a valid placement")
    if videos_per_batch < 1 or num_workers < 0 or prefetch < 1:
        raise ValueError("videos_per_batch and data.prefetch must be >= 1 and data.num_workers >= 0")
    if test_clips < 1 or test_crops < 1:
        raise ValueError(f"data.test_clips and data.test_crops must be >= 1, got {test_clips}, {test_crops}")
    sets, space = open_sources(datasets, allow_pipe=allow_pipe, classes=classes, require_labels=require_labels,
                               what="data.val")
    try:  # evaluation decodes in the workers, so only CPU backends apply
        kind, reason = choose_decoder(decoder, [s.codec for s in sets], on_gpu=False)
    except ValueError:
        if decoder != "dali":
            raise
        kind, reason = "pyav", "evaluation decodes on the CPU and DALI's CPU decoder cannot read these shards"
    log.info("eval stream: decoder %s (%s)", kind, reason)
    ctx = EvalContext(sets, rank, world_size, videos_per_batch,
                      ClipSpec(num_frames, sampling, stride, window_s), test_clips, test_crops, img_size, short_side,
                      kind, max_decode_failures)
    return EvalStream(ctx, space, reason, num_workers, prefetch,
                      pin_memory=torch.device(device).type == "cuda")
