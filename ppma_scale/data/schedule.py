"""Which samples each consumer reads, as a pure function of the seed, an epoch plan and the layout.

Terms. A *consumer* is one DataLoader worker of one rank (`c = rank * workers + worker`). Every rank
yields `steps` batches per epoch, so no rank waits at an epoch end for another. Batch `g` of a rank
(counted from the start of training, the same on every rank) comes from worker `g % workers`: the
DataLoader's round robin is the order, and the stream restores it after a resume.

A dataset's samples are addressed by a *sequence position*: pass `p` over a dataset of `N`
samples visits its shards in an order seeded by (seed, dataset, p); position `p * N + o` is the
`o`-th sample of that pass. An epoch reads, per dataset, a *chunk* of positions (intervals) whose
size follows the mixing weights; the chunk is cut into one contiguous *segment* per consumer, sized
by that consumer's quota; a consumer reads its segment in blocks of `block` samples, each block in
a seeded random order (a shuffle buffer whose state is just "how many taken"). So a consumer's
whole state is (epoch, batches done, samples taken per dataset) and resuming is exact.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

# tags that keep the random streams of different decisions apart
_TAG_SHARDS, _TAG_QUOTA, _TAG_SLOTS, _TAG_BLOCK = 11, 12, 13, 14


@dataclass(frozen=True)
class Layout:
    """How work is split: ranks, consumers per rank, samples per batch, mixing granularity."""

    world_size: int
    workers: int
    batch: int
    mix: str = "sample"  # 'sample': any dataset per sample; 'batch': one dataset per batch

    @property
    def consumers(self) -> int:
        return self.world_size * self.workers

    @property
    def unit(self) -> int:
        """Samples per quota unit: a sample, or a whole batch when mixing per batch."""
        return self.batch if self.mix == "batch" else 1


@dataclass
class EpochPlan:
    """One epoch: where it starts (in batches), how long it is, and the positions it reads."""

    epoch: int
    start_step: int
    steps: int
    chunks: list[list[list[int]]]  # per dataset: intervals [a, b) of sequence positions
    next_cursor: list[int]  # per dataset: the position the following epoch starts from

    @property
    def end_step(self) -> int:
        return self.start_step + self.steps

    def to_state(self) -> dict:
        return {"epoch": self.epoch, "start_step": self.start_step, "steps": self.steps,
                "chunks": [[list(map(int, iv)) for iv in ch] for ch in self.chunks],
                "next_cursor": [int(c) for c in self.next_cursor]}

    @classmethod
    def from_state(cls, state: dict) -> "EpochPlan":
        return cls(int(state["epoch"]), int(state["start_step"]), int(state["steps"]),
                   [[list(iv) for iv in ch] for ch in state["chunks"]], list(state["next_cursor"]))


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


def apportion(total: int, weights: Sequence[float], caps: Sequence[int] | None = None) -> list[int]:
    """Split `total` into integers proportional to `weights` (largest remainder), within `caps`."""
    w = np.asarray(weights, dtype=np.float64)
    caps_arr = np.full(len(w), total, np.int64) if caps is None else np.asarray(caps, np.int64)
    total = int(min(total, caps_arr.sum()))
    out = np.zeros(len(w), np.int64)
    while out.sum() < total:
        open_ = out < caps_arr
        share = np.where(open_, w, 0.0)
        left = total - out.sum()
        ideal = share / share.sum() * left
        add = np.minimum(np.floor(ideal).astype(np.int64), caps_arr - out)
        if add.sum() == 0:  # hand out the remainder one at a time, largest fraction first
            frac = np.where(open_, ideal - np.floor(ideal), -1.0)
            add = np.zeros_like(out)
            add[int(np.argmax(frac))] = 1
        out += add
    return out.tolist()


def default_steps(sizes: Sequence[int], layout: Layout) -> int:
    """Batches per rank per epoch: every sample of every dataset once, dropping the last partial step."""
    return int(sum(sizes)) // (layout.world_size * layout.batch)


def steps_per_epoch(sizes: Sequence[int], layout: Layout, override: int | None = None) -> int:
    """Batches per rank per epoch of a training stream: `override` (train.steps_per_epoch) if given,
    else `default_steps`. The stream and the launch's dry run both count by this."""
    if override is not None and override < 1:
        raise ValueError(f"train.steps_per_epoch must be >= 1 (or null: from the manifests), got {override}")
    return override if override is not None else default_steps(sizes, layout)


def make_plan(epoch: int, start_step: int, steps: int, cursors: Sequence[int], sizes: Sequence[int],
              weights: Sequence[float], layout: Layout) -> EpochPlan:
    """A regular epoch: each dataset reads its weighted share onwards from its cursor.

    A pass is never continued when what is left of it is smaller than the epoch needs: the rest is
    dropped and a fresh pass begins, so within an epoch no sample repeats unless the epoch needs
    more samples of a dataset than it holds (a small dataset weighted up).
    """
    units = apportion(steps * layout.world_size * layout.batch // layout.unit, weights)
    chunks, next_cursor = [], []
    for n, cursor, u in zip(sizes, cursors, units):
        need = u * layout.unit
        offset = cursor % n
        if offset and offset + need > n:
            cursor += n - offset
        chunks.append([[cursor, cursor + need]] if need else [])
        next_cursor.append(cursor + need)
    return EpochPlan(epoch, start_step, steps, chunks, next_cursor)


def next_plan(plan: EpochPlan, steps: int, sizes: Sequence[int], weights: Sequence[float],
              layout: Layout) -> EpochPlan:
    return make_plan(plan.epoch + 1, plan.end_step, steps, plan.next_cursor, sizes, weights, layout)


def worker_steps(plan: EpochPlan, layout: Layout, worker: int) -> range:
    """The rank-level batch indices this worker produces in the epoch (round robin over workers)."""
    first = plan.start_step + (worker - plan.start_step) % layout.workers
    return range(first, plan.end_step, layout.workers)


def quotas(plan: EpochPlan, layout: Layout, seed: int) -> np.ndarray:
    """Units per (consumer, dataset): each consumer's units drawn without replacement from the epoch's."""
    per_worker = [len(worker_steps(plan, layout, w)) * (layout.batch // layout.unit) for w in range(layout.workers)]
    remaining = np.array([_length(ch) // layout.unit for ch in plan.chunks], dtype=np.int64)
    out = np.zeros((layout.consumers, len(remaining)), dtype=np.int64)
    rng = _rng(seed, _TAG_QUOTA, plan.epoch, plan.start_step)
    for c in range(layout.consumers):
        want = per_worker[c % layout.workers]
        if len(remaining) == 1 or want == remaining.sum():
            take = np.minimum(remaining, want) if len(remaining) == 1 else remaining.copy()
        else:
            take = rng.multivariate_hypergeometric(remaining, want)
        out[c] = take
        remaining -= take
    return out


def segment(plan: EpochPlan, dataset: int, consumer: int, quota: np.ndarray, layout: Layout) -> list[list[int]]:
    """The consumer's contiguous slice of the dataset's chunk (intervals of sequence positions)."""
    start = int(quota[:consumer, dataset].sum()) * layout.unit
    return _slice(plan.chunks[dataset], start, start + int(quota[consumer, dataset]) * layout.unit)


def segment_order(plan: EpochPlan, dataset: int, consumer: int, quota: np.ndarray, layout: Layout,
                  seed: int, block: int) -> "SegmentOrder":
    """The order in which the consumer takes its segment of the dataset (the same key everywhere)."""
    return SegmentOrder(segment(plan, dataset, consumer, quota, layout), block,
                        (seed, plan.epoch, plan.start_step, consumer, dataset))


def slot_datasets(plan: EpochPlan, consumer: int, quota: np.ndarray, seed: int) -> np.ndarray:
    """Which dataset fills each unit of this consumer's epoch, in a seeded random order."""
    slots = np.repeat(np.arange(quota.shape[1]), quota[consumer])
    return _rng(seed, _TAG_SLOTS, plan.epoch, plan.start_step, consumer).permutation(slots)


class SegmentOrder:
    """The k-th sample a consumer takes from its segment: block-wise seeded shuffle, wrapping at the end."""

    def __init__(self, intervals: list[list[int]], block: int, key: tuple[int, ...]):
        self.intervals = intervals
        self.block = max(1, block)
        self.key = key
        lengths = [b - a for a, b in intervals]
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.length = int(self.offsets[-1])
        self._cached: tuple[int, np.ndarray] | None = None

    def block_perm(self, b: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != b:
            n = min(self.block, self.length - b * self.block)
            self._cached = (b, _rng(*self.key, _TAG_BLOCK, b).permutation(n))
        return self._cached[1]

    def offset(self, k: int) -> int:
        """Offset within the segment of the k-th take (k wraps: a short segment repeats)."""
        k %= self.length
        b, i = divmod(k, self.block)
        return b * self.block + int(self.block_perm(b)[i])

    def position(self, k: int) -> int:
        return self.position_of(self.offset(k))

    def position_of(self, offset: int) -> int:
        i = int(np.searchsorted(self.offsets, offset, side="right")) - 1
        return self.intervals[i][0] + offset - int(self.offsets[i])

    def untaken(self, taken: int) -> list[list[int]]:
        """Positions not yet taken after `taken` takes, as sorted intervals (for a layout change)."""
        if taken >= self.length:
            return []
        b, i = divmod(taken, self.block)
        start = b * self.block
        partial = sorted(self.position_of(start + int(j)) for j in self.block_perm(b)[i:])
        rest = _slice(self.intervals, start + len(self.block_perm(b)), self.length)
        return _merge([[p, p + 1] for p in partial] + rest)


class DatasetPasses:
    """Sequence position -> (shard, index in shard), with one seeded shard order per pass."""

    def __init__(self, counts: Sequence[int], seed: int, dataset: int):
        self.counts = np.asarray(counts, dtype=np.int64)
        self.total = int(self.counts.sum())
        self.seed, self.dataset = seed, dataset
        self._passes: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def shard_order(self, p: int) -> tuple[np.ndarray, np.ndarray]:
        if p not in self._passes:
            if len(self._passes) > 4:
                self._passes.clear()
            order = _rng(self.seed, _TAG_SHARDS, self.dataset, p).permutation(len(self.counts))
            self._passes[p] = (order, np.cumsum(self.counts[order]))
        return self._passes[p]

    def locate(self, position: int) -> tuple[int, int]:
        p, o = divmod(int(position), self.total)
        order, ends = self.shard_order(p)
        j = int(np.searchsorted(ends, o, side="right"))
        return int(order[j]), o - (int(ends[j - 1]) if j else 0)


def continue_plan(plan: EpochPlan, old: Layout, consumer_taken: dict[int, list[int]], step: int,
                  new: Layout, seed: int, block: int) -> EpochPlan | None:
    """The rest of `plan`'s epoch for a new layout: the positions no old consumer took, re-split.

    `consumer_taken` maps each old consumer to its samples taken per dataset in this epoch.
    Returns None when what is left does not fill one step of the new layout (the epoch is over).
    """
    q = quotas(plan, old, seed)
    left: list[list[list[int]]] = []
    for d in range(len(plan.chunks)):
        pieces = []
        for c in range(old.consumers):
            order = segment_order(plan, d, c, q, old, seed, block)
            if order.length:
                pieces.extend(order.untaken(consumer_taken.get(c, [0] * len(plan.chunks))[d]))
        left.append(_merge(pieces))
    sizes = [_length(ch) for ch in left]
    units_left = [s // new.unit for s in sizes]
    steps = sum(units_left) * new.unit // (new.world_size * new.batch)
    if steps == 0:
        return None
    units = apportion(steps * new.world_size * new.batch // new.unit, sizes, caps=units_left)
    chunks = [_slice(ch, 0, u * new.unit) for ch, u in zip(left, units)]
    return EpochPlan(plan.epoch, step, steps, chunks, list(plan.next_cursor))


def _length(intervals: list[list[int]]) -> int:
    return int(sum(b - a for a, b in intervals))


def _slice(intervals: list[list[int]], start: int, stop: int) -> list[list[int]]:
    """Offsets [start, stop) of the concatenated intervals, as intervals."""
    out, offset = [], 0
    for a, b in intervals:
        lo, hi = max(start, offset), min(stop, offset + b - a)
        if lo < hi:
            out.append([a + lo - offset, a + hi - offset])
        offset += b - a
        if offset >= stop:
            break
    return out


def _merge(intervals: list[list[int]]) -> list[list[int]]:
    out: list[list[int]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out
