"""One consumer (a DataLoader worker of one rank): read its samples, decode, augment, batch.

Each batch carries the consumer's cursor *after* that batch and the statistics since the previous
one; the main process keeps the cursor of the last batch it actually handed to training, so
prefetched batches never count as consumed. A sample that cannot be read or decoded is skipped
and the next sample of the same dataset takes its place, so batches stay full and every rank
still yields the same number of batches. A sample whose json names another class than the
manifest gives its label id stops the run (when labels are trained on): the manifest is wrong.
"""
from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ppma_scale.data.clips import ClipSpec, train_indices
from ppma_scale.data.decode import DecodeError, EncodedClip, make_decoder, probe
from ppma_scale.data.manifest import SAMPLE_VIDEO_EXTENSIONS
from ppma_scale.data.schedule import (DatasetPasses, EpochPlan, Layout, next_plan, quotas, segment_order,
                                      slot_datasets, worker_steps)
from ppma_scale.data.shards import ShardSet, is_local
from ppma_scale.data.stats import Stats
from ppma_scale.data.tarread import Sample, ShardReader
from ppma_scale.data.transforms import ClipRandAugment, TrainAugment, render_views, train_views

_TAG_AUGMENT = 21


@dataclass
class StreamContext:
    """Everything a consumer needs, picklable, identical on every rank except `rank`."""

    datasets: list[ShardSet]
    layout: Layout
    rank: int
    seed: int
    block: int
    steps: int  # batches per rank per regular epoch
    clip: ClipSpec
    augment: TrainAugment
    decoder: str  # 'pyav' | 'dali_cpu' | 'dali_mixed'
    decode_in_main: bool = False  # workers only read and pick frames; the main process decodes (GPU decode)
    randaug: ClipRandAugment | None = None  # built in the main process: workers inherit timm, not import it
    max_unreadable_run: int = 10_000  # consecutive unreadable samples before giving up (all shards gone)

    @property
    def sizes(self) -> list[int]:
        return [d.num_samples for d in self.datasets]

    @property
    def weights(self) -> list[float]:
        return [d.weight for d in self.datasets]


def fresh_cursor(plan: EpochPlan) -> dict[str, Any]:
    return {"epoch": plan.epoch, "done": 0, "taken": [0] * len(plan.chunks)}


@dataclass
class ParsedSample:
    key: str
    dataset: int
    data: bytes
    label: int
    frames: int
    fps: float
    shard: str = ""  # where the sample came from, to name it when it fails later


class LabelMismatch(ValueError):
    """A sample's json names another class than the manifest gives its label id: a wrong manifest
    (every sample is mislabelled), so the run stops instead of skipping."""


def _sample_meta(sample: Sample) -> dict[str, Any]:
    """The sample's json as a dict ({} when absent or not JSON); DecodeError if it is JSON of another kind."""
    if "json" not in sample:
        return {}
    try:
        meta = json.loads(sample["json"])
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    if not isinstance(meta, dict):
        raise DecodeError(f"json metadata is {json.dumps(meta)[:40]}, not an object")
    return meta


def _sample_label(sample: Sample, meta: dict[str, Any]) -> int:
    """The label id from `.cls`, else the json's `label`; DecodeError when neither is an integer."""
    raw = sample["cls"].decode(errors="replace").strip() if "cls" in sample else meta.get("label")
    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
        raise DecodeError(f"no readable label (cls / json label): no .cls and json label is {raw!r}")
    try:
        return int(raw)
    except ValueError:
        raise DecodeError(f"no readable label (cls / json label): {raw!r} is not an integer") from None


def check_label_name(meta: dict[str, Any], own: int, dataset: ShardSet, key: str, shard: str) -> None:
    """When labels are trained on, the json's label_name must be the manifest's name for the id."""
    name = meta.get("label_name")
    if not dataset.require_labels or name is None or name == dataset.classes[own]:
        return
    raise LabelMismatch(f"dataset {dataset.name}: sample {key} in {shard or '?'} has label {own} named {name!r} in "
                        f"its json, but manifest {dataset.manifest or '?'} names class {own} {dataset.classes[own]!r}: "
                        "the manifest's class list does not match its shards (copied from another pack?)")


def parse_sample(sample: Sample, dataset: ShardSet, index: int, shard: str = "") -> ParsedSample:
    """Fields of a shard sample -> what decoding needs; DecodeError names what is wrong."""
    ext = next((e for e in SAMPLE_VIDEO_EXTENSIONS if e in sample), None)
    if ext is None:
        raise DecodeError(f"no video field ({'/'.join(SAMPLE_VIDEO_EXTENSIONS)}); fields: {sorted(sample)}")
    meta = _sample_meta(sample)
    own = _sample_label(sample, meta)
    if not 0 <= own < len(dataset.label_map):
        raise DecodeError(f"label id {own} is outside the manifest's {len(dataset.label_map)} classes")
    check_label_name(meta, own, dataset, sample.get("__key__", "?"), shard)
    frames, fps = meta.get("frames"), meta.get("fps")
    if not (isinstance(frames, int) and frames > 0 and isinstance(fps, (int, float)) and fps > 0):
        frames, fps = probe(sample[ext])
    return ParsedSample(sample["__key__"], index, sample[ext], int(dataset.label_map[own]), int(frames), float(fps),
                        shard)


class ConsumerStream(IterableDataset):
    """The batches of one rank's consumers; each DataLoader worker iterates its own share."""

    def __init__(self, ctx: StreamContext, plan: EpochPlan, cursors: list[dict[str, Any]]):
        super().__init__()
        self.ctx, self.plan, self.cursors = ctx, plan, cursors

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        return _Consumer(self.ctx, worker).batches(self.plan, self.cursors[worker])


class _Consumer:
    """The work of one (rank, worker): its segments, its reader and decoder, its running counts."""

    def __init__(self, ctx: StreamContext, worker: int):
        self.ctx, self.worker = ctx, worker
        self.consumer = ctx.rank * ctx.layout.workers + worker
        expected = {u: n for d in ctx.datasets for u, n in zip(d.urls, d.counts)}
        self.reader = ShardReader(expected)
        self.passes = [DatasetPasses(d.counts, ctx.seed, i) for i, d in enumerate(ctx.datasets)]
        self.decoder = None if ctx.decode_in_main else make_decoder(ctx.decoder, ctx.layout.batch)
        self.randaug = ctx.randaug
        self.stats = Stats()
        self.unreadable_run = 0
        self.streamed = [not all(is_local(u) for u in d.urls) for d in ctx.datasets]
        self.read_ahead: dict[int, tuple] = {}  # dataset -> (its segment order's key, block) read ahead

    def batches(self, plan: EpochPlan, cursor: dict[str, Any]) -> Iterator[dict[str, Any]]:
        ctx, layout = self.ctx, self.ctx.layout
        if cursor["epoch"] != plan.epoch:
            cursor = fresh_cursor(plan)
        while True:
            steps = worker_steps(plan, layout, self.worker)
            if cursor["done"] < len(steps):
                q = quotas(plan, layout, ctx.seed)
                orders = [segment_order(plan, d, self.consumer, q, layout, ctx.seed, ctx.block)
                          for d in range(len(ctx.datasets))]
                slots = slot_datasets(plan, self.consumer, q, ctx.seed)
                taken = list(cursor["taken"])
                per_batch = layout.batch // layout.unit
                for j in range(cursor["done"], len(steps)):
                    units = slots[j * per_batch:(j + 1) * per_batch]
                    wanted = [int(d) for d in np.repeat(units, layout.unit)]
                    rng = np.random.default_rng([ctx.seed, _TAG_AUGMENT, plan.epoch, plan.start_step,
                                                 self.consumer, j])
                    batch = self._batch(wanted, orders, taken, rng)
                    batch.update({"__step__": steps[j], "__worker__": self.worker,
                                  "__cursor__": {"epoch": plan.epoch, "done": j + 1, "taken": list(taken)},
                                  "__stats__": self._take_stats()})
                    yield batch
            plan = next_plan(plan, ctx.steps, ctx.sizes, ctx.weights, layout)
            cursor = fresh_cursor(plan)

    def _take_stats(self) -> dict[str, Any]:
        return self.stats.take(self.reader.problems)

    def _next_sample(self, dataset: int, orders, taken: list[int], rng) -> tuple[ParsedSample, EncodedClip]:
        """The next readable, parseable sample of `dataset` from this consumer's segment."""
        ds = self.ctx.datasets[dataset]
        while True:
            if self.streamed[dataset]:
                self._read_block_ahead(dataset, orders[dataset], taken[dataset])
            position = orders[dataset].position(taken[dataset])
            taken[dataset] += 1
            shard, index = self.passes[dataset].locate(position)
            raw = self.reader.read(ds.urls[shard], index)
            if raw is None:
                self.stats.unreadable += 1
                self.unreadable_run += 1
                if self.unreadable_run > self.ctx.max_unreadable_run:
                    raise RuntimeError(f"dataset {ds.name}: {self.unreadable_run} samples in a row could not be read; "
                                       f"its shards are missing or truncated: {self.reader.problems[:3]}")
                continue
            self.unreadable_run = 0
            try:
                parsed = parse_sample(raw, ds, dataset, ds.urls[shard])
                if self.decoder is None:
                    probe(parsed.data)  # decoding happens later, elsewhere: catch unreadable containers here
            except DecodeError as exc:
                self.stats.fail(raw.get("__key__", "?"), ds.name, str(exc), ds.urls[shard])
                continue
            indices = train_indices(self.ctx.clip, parsed.frames, parsed.fps, rng)
            return parsed, EncodedClip(parsed.data, indices, parsed.key)

    def _read_block_ahead(self, dataset: int, order, k: int) -> None:
        """From a stream, read the rest of take k's shuffle block at once, in file order."""
        block = (k % order.length) // order.block
        if self.read_ahead.get(dataset) == (order.key, block):
            return
        self.read_ahead[dataset] = (order.key, block)
        end = min((block + 1) * order.block, order.length)
        urls = self.ctx.datasets[dataset].urls
        located = [self.passes[dataset].locate(order.position(j)) for j in range(k % order.length, end)]
        self.reader.prefetch([(urls[shard], index) for shard, index in located], group=dataset)

    def _batch(self, wanted: list[int], orders, taken: list[int], rng: np.random.Generator) -> dict[str, Any]:
        aug = self.ctx.augment
        done: dict[int, tuple[ParsedSample, Any]] = {}
        pending = list(range(len(wanted)))
        while pending:
            picked = [self._next_sample(wanted[slot], orders, taken, rng) for slot in pending]
            if self.decoder is None:  # GPU decode happens in the main process: ship the request
                for slot, (parsed, clip) in zip(pending, picked):
                    done[slot] = (parsed, clip)
                break
            decoded = self.decoder.decode([clip for _, clip in picked])
            retry = []
            for slot, (parsed, _), frames in zip(pending, picked, decoded):
                if isinstance(frames, Exception):
                    self.stats.fail(parsed.key, self.ctx.datasets[parsed.dataset].name, str(frames), parsed.shard)
                    retry.append(slot)
                    continue
                views = train_views(frames.shape[1], frames.shape[2], aug, rng)
                rendered = render_views(frames, views, aug.img_size)
                if self.randaug is not None:
                    seeds = rng.integers(0, 2**31, size=len(rendered))
                    rendered = torch.stack([self.randaug(v, int(s)) for v, s in zip(rendered, seeds)])
                done[slot] = (parsed, rendered)
            pending = retry
        samples = [done[slot][0] for slot in range(len(wanted))]
        self.stats.samples += len(samples)
        names = [self.ctx.datasets[s.dataset].name for s in samples]
        repeat = aug.repeat
        batch = {"label": torch.tensor([s.label for s in samples], dtype=torch.int64).repeat_interleave(repeat),
                 "key": [s.key for s in samples for _ in range(repeat)],
                 "dataset": [n for n in names for _ in range(repeat)]}
        if self.decoder is None:
            clips = [done[slot][1] for slot in range(len(wanted))]
            batch["__encoded__"] = [(c.data, c.indices) for c in clips]
            batch["__view_seed__"] = int(rng.integers(0, 2**63))
        else:
            batch["video"] = torch.cat([done[slot][1] for slot in range(len(wanted))])
        return batch


def loader_generator(seed: int, rank: int) -> torch.Generator:
    """A DataLoader's own generator. Starting its iterator draws the workers' base seed (the workers
    seed themselves from the stream's seed anyway); drawn from the global RNG, which a resume restores
    and then starts a new iterator, that one extra draw shifted every later drop-path and erasing
    mask of the resumed run."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, rank]).generate_state(1)[0]))


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: leave stop signals to the rank, which finishes its step, saves,
    and then shuts its workers down.

    SLURM's `--signal=USR1@...` / `--signal=TERM@...`, `scancel`, a launcher stopping its process
    tree (DeepSpeed's, torchrun's) and Ctrl-C all signal the workers too. By default SIGUSR1 and
    SIGTERM would kill a worker and SIGINT end its loop, and the rank, which still needs batches for
    the step it finishes before saving, would then fail without saving. So SIGUSR1 and SIGINT are
    ignored here, and SIGTERM is ignored while the worker's rank lives; once the rank is gone, a
    SIGTERM ends the worker as it would have."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    rank_pid = os.getppid()

    def on_sigterm(signum: int, frame: Any) -> None:
        if os.getppid() != rank_pid:  # orphaned: nobody will shut this worker down
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)
