"""`--dry-run`: what a launch would train, on how many ranks, for how long, at what cost; nothing started.

A job on a cluster waits in the queue for hours before its first line runs. The dry run makes every
check a launch makes before start-up (config, manifests, weights named by model.init, the resume
checkpoint's files and recipe; see preflight.validate) on a login node, for the job size given, and
prints the plan: the resume point, the model's size, the data, the global batch, the schedule in
steps, the compute in FLOPs and GPU-hours at an assumed MFU, and the per-GPU memory: the model states
under the chosen ZeRO stage and the activations of one micro-batch (`models.activations`). It starts
no process group and writes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import Config
from ..models.activations import MEASURED_PEAK_OVER_ESTIMATE, ActivationBytes
from .ds_config import precision_bytes
from .resume_guard import ResumePlan
from .tasks import Task

GIB = 1024 ** 3


@dataclass(frozen=True)
class ModelStateBytes:
    """Bytes of model states per rank: where they sit depends on offload (see model_state_bytes)."""

    weights: float
    gradients: float
    optimizer: float  # fp32 master weights (when DeepSpeed keeps a copy) and Adam's two moments
    host: float  # the part of the above that offload keeps in host memory

    @property
    def device(self) -> float:
        return self.weights + self.gradients + self.optimizer - self.host


def model_state_bytes(params: int, trainable: int, precision: str, zero_stage: int, world_size: int,
                      offload: str = "none", offload_params: bool = False) -> ModelStateBytes:
    """Model states per rank as DeepSpeed holds them (the ZeRO paper's accounting). Weights and
    gradients take 2 bytes a parameter in bf16 / fp16, 4 in fp32; Adam's two moments 8 bytes a trained
    parameter, and the fp32 master copy 4 more, which ZeRO-1/2 keep even for fp32 weights (they clone
    their partition) and ZeRO-3 or no ZeRO only for bf16 / fp16 (or with offload). ZeRO-1 partitions
    the optimizer state over the ranks, ZeRO-2 also the gradients, ZeRO-3 also the weights. Offload
    moves the optimizer state (and with offload_params the weights) to host memory. Activations,
    communication buckets and the allocator's slack are not included."""
    low = precision_bytes(precision)
    weights, grads = float(low * params), float(low * trainable)
    master = precision != "fp32" or zero_stage in (1, 2) or offload != "none"
    optimizer = float((12 if master else 8) * trainable)
    if zero_stage >= 1:
        optimizer /= world_size
    if zero_stage >= 2:
        grads /= world_size
    if zero_stage >= 3:
        weights /= world_size
    host = (optimizer + (weights if offload_params else 0.0)) if offload != "none" else 0.0
    return ModelStateBytes(weights, grads, optimizer, host)


def _hours(hours: float) -> str:
    return f"{hours:,.0f}" if hours >= 100 else f"{hours:.3g}"


def _ordinal(n: int) -> str:
    return "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def _millions(n: int) -> str:
    return f"{n / 1e6:,.1f} M" if n >= 100_000 else f"{n:,}"


def _gib(n: float) -> str:
    if n >= GIB / 10:
        return f"{n / GIB:.2f} GiB"
    return f"{n / 1024 ** 2:.1f} MiB" if n >= 1024 ** 2 / 10 else f"{n / 1024:.1f} KiB"


def _model_lines(cfg: Config, task: Task) -> tuple[list[str], int, int, float | None, ActivationBytes | None]:
    """The model lines, its parameter count, trained parameter count, FLOPs and activation bytes per clip."""
    with torch.device("meta"):  # shapes only: a ViT-g costs no memory here
        model = task.architecture()
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    trunk = sum(p.numel() for p in model.encoder.parameters())
    encoder = model.encoder
    t, h, w = encoder.grid
    shape = (f"{cfg.data.num_frames} frames x {cfg.data.img_size} px -> {t}x{h}x{w} = {t * h * w} tokens "
             f"(tubelet {cfg.model.tubelet}x{encoder.size.patch_size}x{encoder.size.patch_size})")
    if cfg.run.task == "mae":
        from ..models.flops import mask_counts
        visible, targets = mask_counts(tuple(encoder.grid), cfg.mae.mask_ratio, cfg.mae.decoder_mask_ratio,
                                       cfg.mae.mask_type)
        what = (f"MAE, ViT-{cfg.model.size.upper()} trunk {_millions(trunk)} + decoder {_millions(params - trunk)} "
                f"parameters; {shape}, {visible} visible, {targets} reconstructed")
    else:
        head, blend = params - trunk, ""
        if cfg.model.average:  # K frozen source trunks held as buffers: only alpha and the head train
            k = len(cfg.model.average)
            alpha = k if cfg.model.average_mode == "per_model" else k * len(list(encoder.parameters()))
            params, trainable = k * trunk + head + alpha, head + alpha
            blend = f"; model.average blends {k} such trunks (frozen), {alpha:,} blend weights learned"
        what = (f"{cfg.run.task}, ViT-{cfg.model.size.upper()} trunk {_millions(trunk)} + head "
                f"{_millions(head)} parameters, {len(task.label_space())} classes; {shape}{blend}")
    flops, activations = task.flops_per_clip(model), task.activation_bytes(model)
    every = cfg.model.act_checkpoint_every
    lines = [f"  model:    {what}", f"            {_millions(trainable)} trained"
             + (f"; activation checkpointing on every {every}{_ordinal(every)} block" if every > 1 else
                "; activation checkpointing on every block" if every else "")]
    return lines, params, trainable, flops, activations


def describe_run(cfg: Config, task: Task, plan: ResumePlan, world_size: int, mfu: float,
                 peak_tflops: float) -> list[str]:
    """The plan of a validated launch on `world_size` ranks, as lines to print (see the module doc)."""
    from .trainer import _Schedule
    train, data = cfg.train, cfg.data
    ckpt = plan.checkpoint
    lines = []
    if ckpt is None:
        lines.append(f"  resume:   none: a new run in {cfg.run.output}")
    else:
        lines.append(f"  resume:   from {ckpt.path} (step {ckpt.step}, saved on {ckpt.world_size} ranks)")
        lines += [f"            would move aside the damaged {path.name}: {reason}" for path, reason in plan.damaged]
        lines += [f"            would move aside the later {path.name}" for path in plan.abandoned]
        lines += [f"            config change: {change}" for change in plan.changes]
    model_lines, params, trainable, flops, activations = _model_lines(cfg, task)
    lines += model_lines
    samples = task.train_samples or []
    listed = ", ".join(f"{spec.name or spec.manifest} {n:,}" + (f" (weight {spec.weight:g})" if len(samples) > 1 else "")
                       for spec, n in zip(data.train, samples))
    lines.append(f"  data:     {sum(samples):,} training clips: {listed}")
    batches = task.batches_per_epoch(world_size)  # >= 1: validate() refused less than one global batch
    start = ckpt.step if ckpt is not None else 0
    schedule = _Schedule(cfg, batches, world_size, start, plan.meta.get("epoch"), plan.meta.get("epoch_before"))
    views = data.repeat_aug
    lines.append(f"  batch:    {world_size} rank(s) x train.micro_batch {train.micro_batch} x train.grad_accum "
                 f"{train.grad_accum} = {schedule.global_batch} videos per step"
                 + (f" x {views} views (data.repeat_aug)" if views > 1 else ""))
    length = (f"train.max_steps {train.max_steps}" if train.max_steps is not None else
              f"{train.epochs:g} epochs")
    lines.append(f"  schedule: {schedule.steps_per_epoch:,.4g} steps per epoch; {length} = {schedule.total:,} steps"
                 + (f", {schedule.total - start:,} left" if start else "")
                 + f"; peak lr {schedule.peak_lr:.3g}")
    if task.caches_features():
        lines.append(f"            first one pass of the frozen trunk over the {sum(samples):,} training videos x "
                     f"{data.test_clips * data.test_crops} views (the feature cache)")
    if flops:
        clips = (schedule.total - start) * schedule.global_batch * views
        total = clips * flops
        hours = total / (mfu * peak_tflops * 1e12) / 3600
        lines.append(f"  compute:  {flops / 1e12:.3g} TFLOP per clip (forward + backward) x {clips:,} clips = "
                     f"{total:.3g} FLOP")
        lines.append(f"            = {_hours(hours)} GPU-hours at {mfu:.0%} MFU of {peak_tflops:g} TFLOP/s (--mfu, "
                     f"--peak-tflops: assumed, not measured), {_hours(hours / world_size)} h on {world_size} GPU(s)")
    else:
        lines.append("  compute:  not estimated (no FLOPs count for a blended trunk or a cached-feature head)")
    states = model_state_bytes(params, trainable, train.precision, train.zero_stage, world_size, train.offload,
                               train.offload_params)
    host = f", {_gib(states.host)} in host memory (offload)" if states.host else ""
    lines.append(f"  memory:   model states about {_gib(states.device)} per GPU{host} ({train.precision}, "
                 f"ZeRO-{train.zero_stage} over {world_size} rank(s))")
    lines += _activation_lines(activations, train.micro_batch, views, states.device)
    return lines


def _activation_lines(activations: ActivationBytes | None, micro_batch: int, views: int, states: float) -> list[str]:
    """The activation memory of one forward batch per GPU, and the total with the model states."""
    if activations is None:
        return ["            activations not estimated (a blended trunk); they come on top"]
    clips = micro_batch * views
    if activations.frozen_trunk:
        return [f"            activations {_gib(activations.peak(clips))} per GPU (only the head trains)"]
    batch = f"train.micro_batch {micro_batch} x {views} views = {clips} clips" if views > 1 else f"{clips} clips"
    recompute = (f"; + {_gib(clips * activations.recompute)} while a checkpointed block is recomputed"
                 if activations.recompute else "")
    return [f"            activations about {_gib(clips * activations.saved)} per GPU ({batch} a forward, "
            f"{_gib(activations.saved)} each{recompute})",
            f"            = about {_gib(states + activations.peak(clips))} per GPU, plus working memory (an H100 "
            f"ViT-L MAE step peaked at {MEASURED_PEAK_OVER_ESTIMATE:.2f}x this estimate)"]
