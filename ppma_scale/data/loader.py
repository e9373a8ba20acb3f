"""The training stream: exact, resumable, the same number of batches on every rank.

    stream = build_train_stream(datasets=[...], rank=r, world_size=n, micro_batch=8, ...)
    stream.steps_per_epoch          # batches per rank per epoch, from the manifests
    for batch in stream:            # infinite; epochs advance inside
        batch["video"]              # uint8 (micro_batch * repeat_aug, C, T, H, W)
        state = stream.state_dict() # as of the last batch yielded (prefetched ones do not count)

Save `state_dict()` of every rank (gather them: DeepSpeed keeps client state of rank 0 only) and
give the list back to `load_state_dict`: with the same world size each rank resumes its own
cursors, so no sample repeats or goes missing; with another world size (or worker count, or
micro-batch) the current epoch continues over exactly the samples no rank had consumed. That
continuation is the same for every rank: one rank computes `continued_state(all states)` and every
rank loads it.
"""
from __future__ import annotations

import logging
import weakref
from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import DataLoader

from ppma_scale.data.clips import ClipSpec
from ppma_scale.data.consumer import (ConsumerStream, StreamContext, fresh_cursor, ignore_stop_signals,
                                      loader_generator)
from ppma_scale.data.decode import choose_decoder
from ppma_scale.data.evalstream import EvalStream, build_eval_stream  # noqa: F401 (CONTRACTS: loader offers both)
from ppma_scale.data.schedule import EpochPlan, Layout, continue_plan, make_plan, next_plan
from ppma_scale.data.schedule import steps_per_epoch as epoch_steps
from ppma_scale.data.shards import open_sources
from ppma_scale.data.stats import StatsLog
from ppma_scale.data.maindecode import MainProcessDecoder, run_ahead
from ppma_scale.data.transforms import ClipRandAugment, TrainAugment

log = logging.getLogger(__name__)
STATE_FORMAT = "ppma_scale.stream/1"


class TrainStream:
    """Iterate for batches; `state_dict`/`load_state_dict` for checkpoints; `stats` for metrics."""

    def __init__(self, ctx: StreamContext, classes: list[str], decoder_reason: str, num_workers: int,
                 prefetch: int, pin_memory: bool, device: str, max_decode_failures: float):
        self.ctx = ctx
        self.classes = classes
        self.decoder = ctx.decoder
        self.decoder_reason = decoder_reason
        self.num_workers, self.prefetch, self.pin_memory = num_workers, prefetch, pin_memory
        self.device = device
        self.steps_per_epoch = ctx.steps
        self._plan = make_plan(0, 0, ctx.steps, [0] * len(ctx.datasets), ctx.sizes, ctx.weights, ctx.layout)
        self._step = 0
        self._cursors = [fresh_cursor(self._plan) for _ in range(ctx.layout.workers)]
        self._log = StatsLog(ctx.decoder, max_decode_failures)

    # ----------------------------------------------------------------------------------- iteration
    @property
    def shard_layouts(self) -> list[str]:
        """Each dataset's `shards.shard_layout`, in data.train order (recorded in checkpoints)."""
        return [d.layout for d in self.ctx.datasets]

    @property
    def epoch(self) -> int:
        """The epoch of the next batch."""
        return self._plan.epoch

    @property
    def step(self) -> int:
        """Batches yielded so far (over all epochs, including those before a resume)."""
        return self._step

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.close()
        batches = self._iterate()
        # Only a weak reference: a strong one would close a cycle (the generator's frame holds
        # `self`), and a DataLoader freed by the cycle collector no longer reaches its workers
        # (measured: each worker then costs the 5 s join timeout; most likely its queues' feeder
        # threads are finalised first). Weakly held, an abandoned iteration is freed, and its
        # workers stopped, at once.
        self._batches = weakref.ref(batches)
        return batches

    def close(self) -> None:
        """Stop the iteration and its DataLoader workers now (also after an error, whose traceback
        would otherwise keep the workers alive until the interpreter exits)."""
        ref, self._batches = getattr(self, "_batches", None), None
        batches = ref() if ref is not None else None
        if batches is not None:
            batches.close()

    def _iterate(self) -> Iterator[dict[str, Any]]:
        dataset = ConsumerStream(self.ctx, self._plan, [dict(c) for c in self._cursors])
        loader = DataLoader(dataset, batch_size=None, num_workers=self.num_workers,
                            prefetch_factor=self.prefetch if self.num_workers else None,
                            pin_memory=self.pin_memory, worker_init_fn=ignore_stop_signals,
                            generator=loader_generator(self.ctx.seed, self.ctx.rank))
        items: Iterator[dict[str, Any]] = iter(loader)
        if self.ctx.decode_in_main:
            decode = MainProcessDecoder(self.decoder, self.ctx.layout.batch, self.device, self.ctx.augment)
            items = run_ahead(decode.batches(items), depth=max(1, self.prefetch))
        pending: dict[int, dict[str, Any]] = {}
        for item in items:
            pending[item.pop("__step__")] = item
            while self._step in pending:  # workers' round robin may start mid-cycle after a resume
                batch = pending.pop(self._step)
                self._account(batch)
                yield batch

    def _account(self, batch: dict[str, Any]) -> None:
        """This batch is handed to training now: its worker's cursor and statistics become ours."""
        worker = batch.pop("__worker__")
        self._cursors[worker] = batch.pop("__cursor__")
        self._log.merge(batch.pop("__stats__"))
        self._step += 1
        if self._step >= self._plan.end_step:
            self._plan = next_plan(self._plan, self.ctx.steps, self.ctx.sizes, self.ctx.weights, self.ctx.layout)

    def stats(self) -> dict[str, Any]:
        """Counts since the start: samples, decode_failures, unreadable; names of recent failures;
        shard problems (each once); the decoder used."""
        return self._log.snapshot()

    # --------------------------------------------------------------------------------------- state
    def resumes_alone(self, state: dict[str, Any]) -> bool:
        """Whether this rank's saved state alone resumes it (same ranks, workers, batch and mix);
        otherwise `load_state_dict` needs every saved rank's state."""
        return Layout(state["world_size"], state["workers"], state["batch"], state["mix"]) == self.ctx.layout

    def state_dict(self) -> dict[str, Any]:
        """This rank's position, as of the last batch yielded."""
        layout = self.ctx.layout
        cursors = [c if c["epoch"] == self._plan.epoch else fresh_cursor(self._plan) for c in self._cursors]
        return {"format": STATE_FORMAT, "rank": self.ctx.rank, "world_size": layout.world_size,
                "workers": layout.workers, "batch": layout.batch, "mix": layout.mix, "seed": self.ctx.seed,
                "block": self.ctx.block, "datasets": [[d.name, d.num_samples] for d in self.ctx.datasets],
                "layouts": [d.layout for d in self.ctx.datasets],
                "step": self._step, "plan": self._plan.to_state(), "cursors": cursors}

    def load_state_dict(self, state: dict[str, Any] | Sequence[dict[str, Any]]) -> None:
        """Resume from this rank's state, from a `continued_state`, or from the list of every saved
        rank's states (any world size)."""
        states = [state] if isinstance(state, dict) else list(state)
        if not states:
            raise ValueError("load_state_dict got an empty list of data states")
        ref = states[0]
        old = Layout(ref["world_size"], ref["workers"], ref["batch"], ref["mix"])
        if old != self.ctx.layout and not ref.get("continued"):
            self.load_state_dict(self.continued_state(states))  # which checks the saved states
            return
        self._check_compatible(states)
        if old != self.ctx.layout:
            now = self.ctx.layout
            raise ValueError(f"this continued data state was made for {old.world_size} ranks x {old.workers} "
                             f"workers x batch {old.batch}, this stream is {now.world_size} x {now.workers} x "
                             f"{now.batch}")
        plan, step = EpochPlan.from_state(ref["plan"]), int(ref["step"])
        if ref.get("continued"):  # fresh cursors over the continued epoch: the same for every rank
            self._plan, self._step = plan, step
            self._cursors = [fresh_cursor(plan) for _ in range(self.ctx.layout.workers)]
            return
        mine = [s for s in states if s["rank"] == self.ctx.rank]
        if not mine:
            raise ValueError(f"the data states given are for ranks {[s['rank'] for s in states]}, "
                             f"not for this rank {self.ctx.rank}")
        self._plan, self._step, self._cursors = plan, step, [dict(c) for c in mine[0]["cursors"]]

    def continued_state(self, states: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The state from which every rank of this stream's layout continues the epoch of `states`
        (every saved rank's, saved with another world size, worker count, batch or mix) over exactly
        the samples none of them had consumed. It is the same for every rank, so one rank works it
        out (it needs every saved rank's state: ranks x files if each rank read them all) and gives
        it to the others; `load_state_dict` takes it on any rank."""
        states = list(states)
        if not states:
            raise ValueError("continued_state got an empty list of data states")
        self._check_compatible(states)
        ref, layout = states[0], self.ctx.layout
        plan, step = EpochPlan.from_state(ref["plan"]), int(ref["step"])
        old = Layout(ref["world_size"], ref["workers"], ref["batch"], ref["mix"])
        if old == layout:
            raise ValueError(f"the data states were saved with this stream's own layout ({layout}): each rank "
                             "resumes its own state")
        ranks = sorted(s["rank"] for s in states)
        if ranks != list(range(old.world_size)):
            raise ValueError(f"the saved run had {old.world_size} ranks x {old.workers} workers x batch {old.batch}, "
                             f"this one {layout.world_size} x {layout.workers} x {layout.batch}: continuing needs the "
                             f"data states of all {old.world_size} saved ranks (got ranks {ranks})")
        taken = {}
        for s in states:
            for w, cursor in enumerate(s["cursors"]):
                if cursor["epoch"] == plan.epoch:
                    taken[s["rank"] * old.workers + w] = list(cursor["taken"])
        rest = continue_plan(plan, old, taken, step, layout, self.ctx.seed, self.ctx.block)
        if rest is None:  # too little left for one step of the new layout: start the next epoch
            rest = make_plan(plan.epoch + 1, step, self.ctx.steps, plan.next_cursor, self.ctx.sizes,
                             self.ctx.weights, layout)
        log.info("data stream: layout changed (%s -> %s); epoch %d continues over %d unconsumed steps",
                 old, layout, rest.epoch, rest.steps)
        return {**{key: ref[key] for key in ("format", "seed", "block", "datasets") if key in ref},
                "layouts": ref.get("layouts", self.shard_layouts), "continued": True, "rank": None,
                "world_size": layout.world_size, "workers": layout.workers, "batch": layout.batch,
                "mix": layout.mix, "step": step, "plan": rest.to_state(), "cursors": None}

    def _check_compatible(self, states: Sequence[dict[str, Any]]) -> None:
        ref = states[0]
        if ref.get("format") != STATE_FORMAT:
            raise ValueError(f"data state has format {ref.get('format')!r}, expected {STATE_FORMAT!r}")
        now = [[d.name, d.num_samples] for d in self.ctx.datasets]
        if [list(d) for d in ref["datasets"]] != now:
            raise ValueError(f"the data state was saved for datasets {ref['datasets']} (name, samples); "
                             f"the config now gives {now}")
        layouts = [d.layout for d in self.ctx.datasets]
        changed = [d.name for d, saved in zip(self.ctx.datasets, ref.get("layouts", layouts)) if saved != d.layout]
        if changed:  # same name and size, other shards: sample i is another clip now
            raise ValueError(f"dataset(s) {changed} hold the same number of samples as when the data state was "
                             "saved, but in other shards (re-packed?): the resume would repeat some clips and skip "
                             "others. Train on the shards the run started with, or start a new run from this "
                             "one's weights (model.init=RUN_DIR)")
        if ref["seed"] != self.ctx.seed or ref["block"] != self.ctx.block:
            raise ValueError(f"the data state was saved with seed {ref['seed']} and shuffle_buffer {ref['block']}; "
                             f"the config now has {self.ctx.seed} and {self.ctx.block}: set them back to resume")
        for s in states[1:]:
            if s["step"] != ref["step"] or s["plan"]["epoch"] != ref["plan"]["epoch"]:
                raise ValueError("the data states of the ranks come from different steps "
                                 f"({s['step']} vs {ref['step']}): they must be saved at the same step")


def build_train_stream(
    datasets: Sequence[Any], *, rank: int = 0, world_size: int = 1, micro_batch: int = 8, seed: int = 0,
    num_frames: int = 16, sampling: str = "window", stride: int = 4, window_s: float = 2.7,
    img_size: int = 224, short_side: int = 256, repeat_aug: int = 1, crop: str = "random_resized",
    scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (0.75, 1.3333), flip: bool = True,
    randaugment: str | None = None, mean: Sequence[float] = (0.485, 0.456, 0.406),  # mean: RandAugment's fill
    decoder: str = "auto", device: str = "cpu", num_workers: int = 2, prefetch: int = 2,
    shuffle_buffer: int = 256, mix: str = "sample", steps_per_epoch: int | None = None,
    classes: str | Sequence[str] | None = None, require_labels: bool = False, allow_pipe: bool = False,
    max_decode_failures: float = 0.01, decode_in_main: bool | None = None,
) -> TrainStream:
    """The training stream of one rank. `datasets`: manifest paths, dicts or SourceSpec-like objects
    (manifest, weight, name, shards). `device`: where training runs ('cpu', 'cuda:0'); it decides
    whether `decoder='auto'` may decode on the GPU. `require_labels`: classification (every
    dataset class must be in the label space). `decode_in_main`: decode in the main process instead of
    the workers; None = only for GPU decode (DALI mixed), which cannot run in forked workers.
    `max_decode_failures`: the share of samples skipped (undecodable or unreadable) that stops the run.
    Local shards are checked at once: a missing one, or a size other than the manifest's, is an error."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} / world size {world_size} is not a valid placement")
    if micro_batch < 1:
        raise ValueError(f"train.micro_batch must be >= 1, got {micro_batch}")
    if num_workers < 0 or prefetch < 1:
        raise ValueError(f"data.num_workers must be >= 0 and data.prefetch >= 1, got {num_workers}, {prefetch}")
    if mix not in ("sample", "batch"):
        raise ValueError(f"data.mix must be 'sample' or 'batch', got {mix!r}")
    if shuffle_buffer < 1:
        raise ValueError(f"data.shuffle_buffer must be >= 1, got {shuffle_buffer}")
    sets, space = open_sources(datasets, allow_pipe=allow_pipe, classes=classes, require_labels=require_labels)
    clip = ClipSpec(num_frames, sampling, stride, window_s)
    augment = TrainAugment(img_size, short_side, crop, tuple(scale), tuple(ratio), flip, randaugment, repeat_aug)
    layout = Layout(world_size, max(1, num_workers), micro_batch, mix)
    steps = epoch_steps([s.num_samples for s in sets], layout, steps_per_epoch)
    if steps < 1:
        total = sum(s.num_samples for s in sets)
        raise ValueError(f"the training data holds {total} samples, fewer than one global batch "
                         f"(world size {world_size} x micro_batch {micro_batch}); add data or lower train.micro_batch")
    on_gpu = torch.device(device).type == "cuda"
    kind, reason = choose_decoder(decoder, [s.codec for s in sets], on_gpu, needs_cpu_frames=bool(randaugment))
    log.info("data stream: decoder %s (%s)", kind, reason)
    in_main = kind == "dali_mixed" if decode_in_main is None else decode_in_main
    if randaugment and in_main:
        raise ValueError("augment.randaugment works on CPU frames in the workers; it cannot follow decoding "
                         "in the main process (decode_in_main / GPU decode)")
    randaug = ClipRandAugment(randaugment, img_size, mean) if randaugment else None
    ctx = StreamContext(sets, layout, rank, seed, shuffle_buffer, steps, clip, augment, kind, in_main, randaug)
    return TrainStream(ctx, space, reason, num_workers, prefetch, pin_memory=on_gpu, device=device,
                       max_decode_failures=max_decode_failures)
