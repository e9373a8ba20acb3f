"""The one training loop for every stage: DeepSpeed engine, lr schedule, checkpoints, metrics, signals.

What is trained comes from the task (`tasks.py`); this module only knows how to step an engine for
a fixed number of optimizer steps, survive interruptions and report. Order of work in `run`:
validate everything, the resume point included (nothing written yet) -> process group -> rank 0 opens
the resume checkpoint's files (a multi-rank job's ranks only listed them) -> model -> DeepSpeed ->
weights from the checkpoint -> data stream -> its state -> loop -> final checkpoint.
"""
from __future__ import annotations

import logging
import math
import random
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..config import Config, ConfigError, config_to_dict
from . import dist as distmod
from .agreement import StopAgreed, agreed
from .checkpoint import Checkpoint, CheckpointManager
from .data_args import skipped_samples
from .ds_config import check_precision_supported
from .lr_schedule import WarmupCosine, apply_lr, peak_lr
from .metrics import (EVENTS_FILE, MEMORY_PRESSURE_HINT, LossWindow, MetricsLogger, ThroughputWindow,
                      allocator_retries, peak_memory_gb, read_jsonl, standing_evals)
from .optimizer import build_optimizer, deepspeed_skips_nonfinite, optimizer_step_suppressed, plain_gradients_finite
from .preflight import checked_resume_plan, ds_config_for, validate  # noqa: F401 - validate: this module's API too
from .resume_guard import ResumePlan, past_end_message
from .rng_state import capture_rng, restore_rng
from .run_files import report_resume, write_run_files
from .run_dir_check import check_shared_run_dir
from .signals import StopRequest
from .tasks import StepContext, Task, build_task


class NonFiniteError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int  # optimizer steps done
    total_steps: int
    stopped_by: str | None  # the signal that stopped the run early, or None
    checkpoint: Path | None  # the last complete checkpoint


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _compute_dtype(engine) -> torch.dtype:
    if engine.bfloat16_enabled():
        return torch.bfloat16
    return torch.float16 if engine.fp16_enabled() else torch.float32


class _Schedule:
    """Run length in optimizer steps, the lr of each step and the data epoch it is in.

    Epochs are counted in batches: with 10 batches per epoch and grad_accum 3 an epoch is 3.33
    steps (the leftover batch opens the next step), so an `epochs` run reads exactly that many epochs.
    A resumed run continues its schedule where its data left off: an `epochs` run by data epochs
    (the checkpoint's `epoch`: on another number of ranks an epoch is another number of steps), a
    `max_steps` run by steps. Step numbers always continue from the checkpoint's. `epoch_before_start`
    is the epoch the saving run was in one step before `start` (its marker's `epoch_before`): whether
    `start` finished an epoch, and so owes an evaluation, is the saving run's verdict, which the step
    length of another number of ranks could reverse.
    """

    def __init__(self, cfg: Config, batches_per_epoch: int, world_size: int, start: int = 0,
                 start_epoch: float | None = None, epoch_before_start: float | None = None) -> None:
        train, optim = cfg.train, cfg.optim
        if batches_per_epoch < train.grad_accum:
            raise ValueError(f"an epoch has {batches_per_epoch} batches per rank, fewer than train.grad_accum="
                             f"{train.grad_accum}: use more data, a smaller micro_batch or less accumulation")
        self.steps_per_epoch = batches_per_epoch / train.grad_accum
        self.start = start
        self.start_epoch = start / self.steps_per_epoch if start_epoch is None else float(start_epoch)
        self.epoch_before_start = None if epoch_before_start is None else float(epoch_before_start)
        if train.max_steps is not None:
            length, self.offset = train.max_steps, 0
        else:
            length = math.ceil(round(train.epochs * self.steps_per_epoch, 6))
            self.offset = round(self.start_epoch * self.steps_per_epoch) - start  # 0 unless the ranks changed
        self.total = length - self.offset  # the step number the run ends at
        warmup = optim.warmup_steps if optim.warmup_steps is not None else round(optim.warmup_epochs * self.steps_per_epoch)
        # The linear scaling rule counts decoded videos, as the MAE family's recipes (base_lr per 256)
        # do: repeated augmentation's extra views of a video do not raise the lr.
        self.global_batch = train.micro_batch * train.grad_accum * world_size
        self._lr = WarmupCosine(peak=peak_lr(optim.lr, optim.base_lr, optim.lr_ref_batch, self.global_batch),
                                total_steps=length, warmup_steps=min(warmup, length), min_lr=optim.min_lr)
        self.peak_lr = self._lr.peak

    def lr(self, step: int) -> float:
        return self._lr(step + self.offset)

    def epoch(self, step: int) -> float:
        return self.start_epoch + (step - self.start) / self.steps_per_epoch

    def eval_due(self, step: int, every_epochs: int) -> bool:
        """At the end, and at the step that completes every `every_epochs`-th epoch."""
        if step == self.total:
            return True
        if every_epochs <= 0:
            return False
        done = lambda epoch: math.floor(epoch / every_epochs + 1e-9)  # noqa: E731
        before = (self.epoch_before_start if step == self.start and self.epoch_before_start is not None
                  else self.epoch(step - 1))
        return done(self.epoch(step)) > done(before)


def run(cfg: Config, run_dir: str | Path | None = None, resume: str = "auto", task: Task | None = None,
        allow_config_change: bool = False, plan: ResumePlan | None = None) -> TrainResult:
    """Train `cfg` into `run_dir` (default run.output); `resume` is 'auto', 'off' or a checkpoint path.
    `allow_config_change` (the launchers' --allow-config-change) accepts a resume whose run-defining
    config keys changed. `plan`: what `validate` returned for these same arguments and `task`, when
    the caller already validated (it is not done twice)."""
    run_dir = Path(run_dir or cfg.run.output)
    cfg.run.output = str(run_dir)
    task = task or build_task(cfg)
    if plan is None:
        plan = validate(cfg, task, run_dir, resume, allow_config_change)
    stop = StopRequest()
    try:
        trainer = _Trainer(cfg, run_dir, task, stop)
        with run_folder_lock(run_dir):
            plan = checked_resume_plan(plan, cfg, task, run_dir, resume, allow_config_change, trainer.dist)
            return trainer.train(plan)
    finally:
        stop.close()


RUN_LOCK = ".run.lock"


@contextmanager
def run_folder_lock(run_dir: Path) -> Iterator[None]:
    """Rank 0 holds `run_dir`'s lock for the whole run; a second job on the folder is refused on
    every rank (ConfigError, nothing written). Two jobs there used to both train and both report
    "finished", their checkpoints and metrics interleaved in one folder."""
    from ..folder_lock import FolderLock, FolderLocked
    lock = FolderLock(run_dir, RUN_LOCK, "training job", "wait for it to end, or choose another --output")
    created = not run_dir.exists()

    def acquire() -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire()

    distmod.computed_on_rank0(acquire, f"locking the run folder {run_dir}", expected=(FolderLocked,),
                              raise_as=ConfigError)  # the other ranks only hear the verdict
    try:
        yield
    finally:
        lock.release()
        if created and lock_only_folder(run_dir):  # refused before anything was written: leave no folder
            run_dir.rmdir()


def lock_only_folder(folder: Path) -> bool:
    """`folder` exists and is empty (what a run refused after taking its lock leaves)."""
    try:
        return not any(folder.iterdir())
    except OSError:
        return False


RESUMED_GROUP_KEYS = ("weight_decay", "betas", "eps", "lr_scale")  # AdamW group settings the config decides


class _Trainer:
    def __init__(self, cfg: Config, run_dir: Path, task: Task, stop: StopRequest) -> None:
        self.cfg, self.run_dir, self.task, self.stop = cfg, run_dir, task, stop
        task.stop = stop
        self.dist = distmod.init_distributed(cfg.train.dist_timeout_s)
        check_precision_supported(cfg.train.precision, self.dist.device)
        check_shared_run_dir(run_dir, self.dist)  # node-local --output would fail only at the first resume
        self.ckpts = CheckpointManager(run_dir / "checkpoints", self.dist, cfg.train.keep_last)
        self._alloc_retries_seen, self._memory_pressure_told = 0, False

    # ---- set-up -------------------------------------------------------------------------------
    def _build_engine(self, ckpt: Checkpoint | None):
        import deepspeed
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        cfg, dist = self.cfg, self.dist
        _seed_all(cfg.run.seed)  # identical initial weights on every rank
        model = self.task.build_model(dist)
        self.flops_per_clip = self.task.flops_per_clip(model)
        groups = self.task.param_groups(model)
        load = self.ckpts.prepare_load(ckpt, cfg.train.zero_stage) if ckpt is not None else None
        self.ds_config = ds_config_for(cfg, dist.world_size, load_universal=bool(load and load[2]))
        optimizer = build_optimizer(groups, betas=cfg.optim.betas, eps=cfg.optim.eps, offload=cfg.train.offload,
                                    device=dist.device)
        self.group_settings = [{k: v for k, v in g.items() if k in RESUMED_GROUP_KEYS} for g in optimizer.param_groups]
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=self.ds_config,
                                               dist_init_required=False)
        _seed_all(cfg.run.seed * 1000 + dist.rank + 1)  # per-rank randomness (drop path, ...)
        return engine, load

    def _load_weights(self, engine, ckpt: Checkpoint, load) -> None:
        """The checkpoint's model and optimizer state, before the stream is built (a linear probe
        encodes its features with the trunk it holds)."""
        load_dir, tag, _ = load
        path, _ = engine.load_checkpoint(str(load_dir), tag=tag, load_optimizer_states=True,
                                         load_lr_scheduler_states=False)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint {ckpt.path}")
        # Loading the optimizer state also brings back each group's saved settings; this config's
        # (an --allow-config-change resume may have new ones) are the ones to train with.
        for group, settings in zip(engine.optimizer.param_groups, self.group_settings, strict=True):
            group.update(settings)

    def _restore(self, ckpt: Checkpoint, stream) -> None:
        """Each rank resumes its own saved state when that alone places it (same ranks, workers and
        batch). Otherwise the data continues over what no saved rank had consumed, with fresh RNG
        streams: rank 0 reads every saved rank's state and works that out once, every rank is given
        it (each reading all of them would be ranks x ranks file opens at start-up)."""
        # The stream refuses states it cannot continue exactly (other datasets, seed, shuffle buffer,
        # re-packed shards): the same verdict on every rank, told as a configuration error (one line).
        if ckpt.world_size == self.dist.world_size:  # the same answer on every rank: one saved layout
            mine = self.ckpts.load_rank_states(ckpt, [self.dist.rank])[0]
            if stream.resumes_alone(mine["stream"]):
                try:
                    stream.load_state_dict(mine["stream"])
                except ValueError as exc:
                    raise ConfigError(f"resuming {ckpt.path}: {exc}") from exc
                restore_rng(mine["rng"])
                self.task.load_state_dict(mine.get("task", {}))
                return

        def continued() -> dict:
            states = self.ckpts.load_rank_states(ckpt, range(ckpt.world_size))
            try:
                return {"stream": stream.continued_state([s["stream"] for s in states]),
                        "task": states[0].get("task", {})}
            except ValueError as exc:
                raise ConfigError(f"resuming {ckpt.path}: {exc}") from exc

        state = distmod.computed_on_rank0(continued, f"reading the data states saved in {ckpt.path}",
                                          expected=(ConfigError,), raise_as=ConfigError)
        stream.load_state_dict(state["stream"])
        self.task.load_state_dict(state["task"])

    def _peak_tflops(self) -> float | None:
        if self.cfg.train.peak_tflops is not None:
            return self.cfg.train.peak_tflops
        if self.dist.device.type != "cuda":
            return None
        from ..models.flops import peak_tflops
        return peak_tflops(torch.cuda.get_device_name(self.dist.device))

    # ---- the loop -----------------------------------------------------------------------------
    def train(self, plan: ResumePlan) -> TrainResult:
        cfg, dist, task = self.cfg, self.dist, self.task
        ckpt = plan.checkpoint
        engine, load = self._build_engine(ckpt)
        if load is not None and load[2] and distmod.all_reduce_max(self.stop.signum, dist.device):
            return self._stopped_before_training(ckpt, "converting the checkpoint for another number of ranks "
                                                       "(the converted copy is kept for the next start)")
        if ckpt is not None:
            self._load_weights(engine, ckpt, load)
        try:
            stream = task.build_train_stream(dist, engine)
        except StopAgreed:  # during a pass the task makes first (the linear probe's feature cache)
            return self._stopped_before_training(ckpt, "preparing the training data (the linear probe's feature pass)")
        self._data_layouts = getattr(stream, "shard_layouts", None)  # a stream whose cursor counts in shards
        start = ckpt.step if ckpt is not None else 0
        schedule = _Schedule(cfg, stream.steps_per_epoch, dist.world_size, start, plan.meta.get("epoch"),
                             plan.meta.get("epoch_before"))
        if ckpt is not None:
            if ckpt.step > schedule.total:
                how = (f"train.max_steps={cfg.train.max_steps}" if cfg.train.max_steps is not None else
                       f"train.epochs={cfg.train.epochs} = {schedule.total} steps")
                raise ValueError(past_end_message(ckpt, schedule.total, how))
            self._restore(ckpt, stream)
        written = write_run_files(cfg, self.run_dir, plan, self.ds_config, self.ckpts.root) if dist.is_main else None
        distmod.barrier()
        log = MetricsLogger(self.run_dir, dist.is_main, schedule.total, cfg.train.tensorboard)
        log.keep_until(start)
        if ckpt is not None:
            report_resume(plan, written, self.run_dir, dist.world_size, log)
        if start == schedule.total:
            log.event("start", f"{self.run_dir} is already complete at step {start} (the run's length: "
                      f"{schedule.total} steps); nothing to train. Raise train.max_steps to train on",
                      step=start, total_steps=schedule.total, world_size=dist.world_size)
        else:
            log.event("start", f"training {schedule.total} optimizer steps ({schedule.steps_per_epoch:.4g}/epoch, global "
                      f"batch {schedule.global_batch} videos x {cfg.data.repeat_aug} views, peak lr "
                      f"{schedule.peak_lr:.3g}) on {dist.world_size} rank(s)"
                      + (f", from step {start}" if start else ""),
                      step=start, total_steps=schedule.total, world_size=dist.world_size,
                      steps_per_epoch=schedule.steps_per_epoch, global_batch=schedule.global_batch)
        try:
            return self._loop(engine, stream, schedule, log, start, ckpt)
        finally:
            log.close()
            close = getattr(stream, "close", None)
            if callable(close):
                close()

    def _stopped_before_training(self, ckpt: Checkpoint | None, during: str) -> TrainResult:
        """A stop signal `during` the work before the first step: nothing was trained since `ckpt` (or
        the start), so there is nothing to save; the same command starts that work again."""
        name = signal.Signals(int(distmod.all_reduce_max(self.stop.signum, self.dist.device))).name
        step = ckpt.step if ckpt is not None else 0
        if self.dist.is_main:
            kept = f"{ckpt.path} stays the run's checkpoint" if ckpt is not None else "nothing to save"
            print(f"stopping on {name} while {during}: no step trained since step {step}, {kept}", flush=True)
        return TrainResult(self.run_dir, step, step, name, ckpt.path if ckpt is not None else None)

    def _loop(self, engine, stream, schedule: _Schedule, log: MetricsLogger, start: int,
              resumed: Checkpoint | None) -> TrainResult:
        cfg, dist, task = self.cfg, self.dist, self.task
        train = cfg.train
        dtype = _compute_dtype(engine)
        ds_guard = deepspeed_skips_nonfinite(engine)
        peak = self._peak_tflops()
        step, last_ckpt = start, resumed
        stop_signal = self._evaluate_owed(engine, start, schedule, dtype, log)
        batches = agreed(stream, "reading its training batch", dist.device)  # a rank whose data fails stops all
        window, losses = ThroughputWindow(), LossWindow(dist.device)
        nonfinite_run, skipped_total = 0, 0
        while step < schedule.total and not stop_signal:
            lr = schedule.lr(step)
            apply_lr(engine.optimizer.param_groups, lr)
            task.train_mode(engine)
            step_loss, step_extras = torch.zeros((), device=dist.device), {}
            clips, grad_norm, finite = 0, None, True
            for micro in range(train.grad_accum):
                waited = time.perf_counter()
                batch = next(batches)
                window.add_data_wait(time.perf_counter() - waited)
                ctx = StepContext(step=step, micro_step=micro, epoch=schedule.epoch(step), dist=dist, dtype=dtype,
                                  seed=cfg.run.seed, run_dir=self.run_dir)
                loss, extras = task.loss(engine, batch, ctx)
                engine.backward(loss)
                if micro == train.grad_accum - 1 and not ds_guard:
                    grad_norm, finite = plain_gradients_finite(engine)
                with optimizer_step_suppressed(engine.optimizer, active=not finite):
                    engine.step()
                step_loss += loss.detach().float() / train.grad_accum
                for name, value in extras.items():
                    step_extras[name] = step_extras.get(name, 0.0) + value / train.grad_accum
                clips += task.clips_in(batch)
            applied = finite and engine.was_step_applied()
            step += 1
            window.add_step(clips)
            log.progress(step)
            if not applied:
                nonfinite_run += 1
                skipped_total += 1
                self._report_skip(step, step_loss, nonfinite_run, log, engine)
            else:
                nonfinite_run = 0
                losses.add(step_loss, step_extras)
            stop_signal = int(distmod.all_reduce_max(self.stop.signum, dist.device))  # any rank's signal stops all

            def log_step() -> None:  # a stop logs the steps since the last record
                norm = grad_norm
                if ds_guard:  # read only when logged: it syncs with the device
                    value = engine.get_global_grad_norm()
                    norm = float(value) if value is not None and applied else None
                self._log(step, lr, norm, losses, skipped_total, window, schedule, stream, log, peak)

            logged = step % train.log_every == 0 or step == schedule.total or stop_signal
            if logged:
                log_step()
            saved = (train.ckpt_every and step % train.ckpt_every == 0) or step == schedule.total or stop_signal
            if saved:  # before an evaluation: a job killed during it keeps this step
                last_ckpt = self._save(engine, stream, step, schedule, log)
                if not stop_signal and step < schedule.total:  # a signal during the save: stop at this checkpoint
                    stop_signal = int(distmod.all_reduce_max(self.stop.signum, dist.device))
                    if stop_signal and not logged:
                        log_step()
            if task.evaluates() and schedule.eval_due(step, train.eval_every) and not stop_signal:
                stop_signal = self._evaluate(engine, step, schedule, dtype, log)
                if stop_signal and not logged:
                    log_step()
                if stop_signal and not saved:  # a stop during the evaluation: this step is saved before stopping
                    last_ckpt = self._save(engine, stream, step, schedule, log)
        stopped_by = signal.Signals(stop_signal).name if stop_signal else None
        if stopped_by:
            log.event("stop", f"stopping after step {step} on {stopped_by}; checkpoint saved", step=step,
                      signal=stopped_by)
        else:
            log.event("end", f"finished {step} steps", step=step)
        return TrainResult(self.run_dir, step, schedule.total, stopped_by, last_ckpt.path if last_ckpt else None)

    def _report_skip(self, step: int, step_loss: torch.Tensor, run_length: int, log: MetricsLogger, engine) -> None:
        local_bad = 0.0 if torch.isfinite(step_loss).item() else 1.0
        loss_bad = distmod.all_reduce_max(local_bad, self.dist.device) > 0
        if self.cfg.train.precision == "fp16" and not loss_bad:
            log.event("loss_scale", f"step {step}: fp16 gradient overflow, step skipped, loss scale lowered",
                      step=step, loss_scale=float(getattr(engine.optimizer, "cur_scale", 0.0) or 0.0))
            return
        what = "loss" if loss_bad else "gradient"
        limit = self.cfg.train.max_nonfinite
        log.event("nonfinite", f"step {step}: non-finite {what}; optimizer step skipped ({run_length} in a row, "
                  f"stop at {limit})", step=step, what=what, in_a_row=run_length)
        if run_length >= limit:
            raise NonFiniteError(
                f"stopping at step {step}: {run_length} optimizer steps in a row had a non-finite {what} "
                f"(train.max_nonfinite={limit}). The skipped steps did not change the weights; the last "
                f"checkpoint is in {self.ckpts.root}. Lower the lr (optim.lr / optim.base_lr), enable "
                f"clipping (optim.clip_grad), use bf16 rather than fp16, or check the data.")

    def _log(self, step, lr, grad_norm, losses: LossWindow, skipped_total, window, schedule, stream, log, peak):
        dist = self.dist
        means = losses.means()
        stats = stream.stats() if hasattr(stream, "stats") else {}
        record = {"step": step, "epoch": round(schedule.epoch(step), 4), "loss": means.pop("loss"), "lr": lr,
                  "grad_norm": grad_norm, **window.summary(dist.world_size, self.flops_per_clip, peak),
                  "peak_mem_gb": peak_memory_gb(dist.device), "skipped_steps": skipped_total,
                  "skipped_samples": skipped_samples(stats)}
        record.update({name: value for name, value in means.items() if name not in record})
        self._note_allocator_retries(record, step, log)
        log.log(record)
        window.reset()
        losses.reset()

    def _note_allocator_retries(self, record: dict, step: int, log: MetricsLogger) -> None:
        """On CUDA: the allocator's retries so far and in this window, and one event the first time
        they grow (this rank's count; rank 0 logs)."""
        retries = allocator_retries(self.dist.device)
        if retries is None:
            return
        before = self._alloc_retries_seen
        record.update(alloc_retries=retries, alloc_retries_in_window=retries - before)
        if retries > before and not self._memory_pressure_told:
            log.event("memory_pressure", f"step {step}: {MEMORY_PRESSURE_HINT}", step=step, retries=retries)
            self._memory_pressure_told = True
        self._alloc_retries_seen = retries

    def _save(self, engine, stream, step: int, schedule: _Schedule, log: MetricsLogger) -> Checkpoint:
        rank_state = {"stream": stream.state_dict(), "rng": capture_rng(), "task": self.task.state_dict()}
        meta = {"epoch": schedule.epoch(step), "epoch_before": schedule.epoch(step - 1),  # see _Schedule
                "total_steps": schedule.total, "task": self.cfg.run.task,
                "config": config_to_dict(self.cfg),  # what a resume compares its config with
                "data_layouts": self._data_layouts,  # which shards the data cursor counts in
                **self.task.checkpoint_record()}
        ckpt = self.ckpts.save(engine, step, rank_state, meta)
        log.event("checkpoint", None, step=step, path=str(ckpt.path))
        return ckpt

    def _evaluated(self, step: int) -> bool:
        """Whether events.jsonl records an evaluation at `step` (rank 0 reads it; every rank gets the answer)."""
        return distmod.computed_on_rank0(
            lambda: any(e.get("step") == step for e in standing_evals(read_jsonl(self.run_dir / EVENTS_FILE))),
            f"reading {EVENTS_FILE}")

    def _evaluate_owed(self, engine, step: int, schedule: _Schedule, dtype: torch.dtype, log: MetricsLogger) -> int:
        """Evaluate the resumed `step` before training on when its evaluation was due but is not recorded
        (a stop at that step skips it, a stop during it abandons it, a kill loses it). Returns the stop
        signal received meanwhile, or 0."""
        if not (step and self.task.evaluates() and schedule.eval_due(step, self.cfg.train.eval_every)
                and not self._evaluated(step)):
            return 0
        log.event("eval_pending", f"step {step} was saved but not evaluated: evaluating it now", step=step)
        return self._evaluate(engine, step, schedule, dtype, log)

    def _evaluate(self, engine, step: int, schedule: _Schedule, dtype: torch.dtype, log: MetricsLogger) -> int:
        """Evaluate `step`; returns the stop signal any rank received meanwhile (0: none), the same on every
        rank. A multi-view evaluation can outlast SLURM's warning before the time limit, so a stop abandons
        it at the next batch the ranks agree on (`Task.stop`): nothing of it is recorded, it is owed on resume."""
        ctx = StepContext(step=step, micro_step=0, epoch=schedule.epoch(step), dist=self.dist, dtype=dtype,
                          seed=self.cfg.run.seed, run_dir=self.run_dir)
        try:
            results, interrupted = self.task.evaluate(engine, ctx), False
        except StopAgreed:
            results, interrupted = None, True
        stop_signal = int(distmod.all_reduce_max(self.stop.signum, self.dist.device))  # also one during its last gather
        if interrupted:
            name = signal.Signals(stop_signal).name
            log.event("eval_interrupted", f"evaluation at step {step} abandoned on {name}; it runs again on resume",
                      step=step, signal=name)
        elif results:
            shown = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in results.items())
            log.event("eval", f"eval at step {step}: {shown}", step=step, **results)
        return stop_signal
