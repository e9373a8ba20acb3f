"""Tasks: what a stage trains. The trainer runs the loop; a task supplies model, data, loss and metrics.

A task is constructed from the resolved `Config` and is the one place that maps config sections to
the plain arguments of the model and data builders. The trainer calls, in this order:

    task.validate()                                  before anything is written (inputs exist, ...)
    model = task.build_model(dist)                   a torch module on the CPU
    groups = task.param_groups(model)                AdamW groups (weight decay / layer decay)
    ... DeepSpeed wraps the model into `engine` ...
    stream = task.build_train_stream(dist, engine)   infinite iterator of batches (see TrainStream)
    per optimizer step, per micro-batch:
        task.train_mode(engine); loss, extras = task.loss(engine, batch, ctx)
    task.evaluate(engine, ctx)                       every train.eval_every epochs and at the end
    task.state_dict() / load_state_dict(...)         extra per-rank state kept in checkpoints

Register a new task with `@register_task("name")`; `run.task` picks it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np
import torch
from torch import nn

from ..config import Config, ConfigError
from ..models.activations import ActivationBytes
from .dist import DistInfo
from .param_groups import build_param_groups, no_weight_decay_names
from .signals import StopRequest


class TrainStream(Protocol):
    """What the trainer needs from a training data stream (ppma_scale.data's TrainStream is one)."""

    steps_per_epoch: int  # batches per rank per epoch

    def __iter__(self) -> Iterator[dict[str, Any]]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any] | list[dict[str, Any]]) -> None: ...
    def resumes_alone(self, state: dict[str, Any]) -> bool: ...
    def continued_state(self, states: list[dict[str, Any]]) -> dict[str, Any]: ...
    def stats(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class StepContext:
    """Where the loop is when it asks a task for a loss (or an evaluation)."""

    step: int  # optimizer step being taken, from 0
    micro_step: int  # index of the micro-batch within gradient accumulation
    epoch: float  # optimizer steps done / optimizer steps per epoch
    dist: DistInfo
    dtype: torch.dtype  # the engine's compute dtype: inputs must be cast to it
    seed: int
    run_dir: Path

    @property
    def device(self) -> torch.device:
        return self.dist.device

    def generator(self, *salt: int) -> torch.Generator:
        """A CPU generator seeded by (seed, rank, step, micro_step, *salt): the same on a resumed run."""
        words = [self.seed, self.dist.rank, self.step, self.micro_step, *salt]
        state = np.random.SeedSequence([int(w) & 0xFFFFFFFF for w in words]).generate_state(2, np.uint32)
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class Task:
    """Base task: defaults that suit most stages. Subclasses set `name` and implement the abstract parts."""

    name = "task"
    # Set by the trainer when resuming: the checkpoint holds every trained weight, so model.init is
    # neither required to exist nor read.
    resume_from: Path | None = None
    # Set by the trainer: a long pass the task makes (an evaluation, the linear probe's feature cache)
    # reads its batches through `agreed(..., stop=self.stop)`, so a stop signal ends it on every rank.
    stop: StopRequest | None = None
    train_layouts: list[str] | None = None  # data.train's shard layouts, once validate() has read the manifests
    train_samples: list[int] | None = None  # data.train's sample counts, likewise
    # Set by a dry run (`--dry-run --world-size N` on a login node): the job size to check and plan for.
    planned_world_size: int | None = None

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    # ---- set-up -------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check user inputs that the config schema cannot (files exist, sizes fit); raise early."""
        for index, spec in enumerate(self.cfg.data.train):
            path = Path(spec.manifest).expanduser()
            if "://" not in spec.manifest and not path.exists():
                raise FileNotFoundError(f"data.train[{index}].manifest: {spec.manifest} does not exist")
        if not self.cfg.data.train:
            raise ValueError("data.train is empty: give at least one shard manifest")
        self._check_weight_files()

    def check_one_global_batch(self, samples: int, what: str = "training data") -> None:
        """Refuse, before any rank starts, data smaller than one global batch (ranks x micro_batch):
        the stream would refuse it only after the process group, the model and DeepSpeed are up."""
        batch, world = self.cfg.train.micro_batch, self.world_size()
        if samples < world * batch:
            raise ValueError(f"the {what} holds {samples} videos, fewer than one global batch ({world} rank(s) x "
                             f"train.micro_batch {batch}); add data or lower train.micro_batch")

    def world_size(self) -> int:
        """The number of ranks the checks before start-up plan for: the launch's, or a dry run's."""
        from .dist import launched_world_size
        return self.planned_world_size or launched_world_size()

    def batches_per_epoch(self, world_size: int) -> int | None:
        """Batches per rank per epoch on `world_size` ranks, as the training stream will count them
        (after validate(); None for a task that read no manifests)."""
        if self.train_samples is None:
            return None
        from .data_args import stream_batches_per_epoch
        return stream_batches_per_epoch(self.cfg, self.train_samples, world_size)

    def _check_weight_files(self) -> None:
        """A model.init / model.average source that is missing, or a weights file that is not one,
        fails here, before any rank starts, rather than on every rank while the model is built."""
        from .pretrained import check_source
        model = self.cfg.model
        named = [("model.init", model.init)] if model.init and self.resume_from is None else []
        named += [(f"model.average[{i}]", path) for i, path in enumerate(model.average)]
        for key, path in named:
            check_source(key, path)

    def caches_features(self) -> bool:
        """Whether the task encodes its training videos once before the first step (the linear probe)."""
        return False

    def architecture(self) -> nn.Module:
        """The model's modules with fresh weights and nothing read from disk (`build_model` then adds what
        model.init names); on the meta device it costs no memory (a dry run counts its parameters)."""
        raise NotImplementedError

    def build_model(self, dist: DistInfo) -> nn.Module:
        raise NotImplementedError

    def trunk_depth(self, model: nn.Module) -> int | None:
        """Number of transformer blocks, for layer-wise lr decay (None: no layer decay possible)."""
        blocks = [m for name, m in model.named_modules() if name.endswith("blocks") and isinstance(m, nn.ModuleList)]
        return len(blocks[0]) if blocks else None

    def param_groups(self, model: nn.Module) -> list[dict]:
        """AdamW groups: no decay on biases / norms / position embeddings; optim.layer_decay if set."""
        optim = self.cfg.optim
        depth = self.trunk_depth(model) if optim.layer_decay is not None else None
        return build_param_groups(model.named_parameters(), optim.weight_decay, no_weight_decay_names(model),
                                  layer_decay=optim.layer_decay, depth=depth)

    def build_train_stream(self, dist: DistInfo, engine: nn.Module) -> TrainStream:
        raise NotImplementedError

    def flops_per_clip(self, model: nn.Module) -> float | None:
        """Forward + backward FLOPs per clip, for TFLOP/s and MFU (None: not reported)."""
        return None

    def activation_bytes(self, model: nn.Module) -> ActivationBytes | None:
        """Activation memory per clip in training, for the dry run's plan (None: not estimated)."""
        return None

    # ---- per step -----------------------------------------------------------------------------
    def clips_in(self, batch: dict[str, Any]) -> int:
        return int(batch["video"].shape[0])

    def train_mode(self, engine: nn.Module) -> None:
        """Put the model in training mode (a linear probe keeps its frozen trunk in eval mode)."""
        engine.train()

    def loss(self, engine: nn.Module, batch: dict[str, Any], ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        """The scalar loss of one micro-batch (to backpropagate) and extra numbers to log.

        Extras (floats or 0-d tensors, e.g. batch accuracy) are averaged over the logged window and
        the ranks and written next to the loss in metrics.jsonl; return the same names on every call
        and every rank (they are reduced with one collective).
        """
        raise NotImplementedError

    # ---- optional hooks -----------------------------------------------------------------------
    def evaluates(self) -> bool:
        """Whether `evaluate` has anything to do (the trainer owes a resumed run only such evaluations)."""
        return type(self).evaluate is not Task.evaluate

    def evaluate(self, engine: nn.Module, ctx: StepContext) -> dict[str, float] | None:
        """Evaluate on every rank (collectives allowed); rank 0's returned numbers are logged. Read the
        batches through `agreed(..., stop=self.stop)`: a stop signal then raises `StopAgreed` on every
        rank at the same batch, and the trainer saves and stops instead of finishing the pass (write
        results only once the pass is complete)."""
        return None

    def checkpoint_record(self) -> dict[str, Any]:
        """What this task's checkpoints must carry (in their marker) to be read correctly later."""
        return {}

    def check_checkpoint_record(self, meta: dict[str, Any], where: Path) -> bool:
        """Refuse (ValueError) a checkpoint whose record does not fit this config; False if it carries none."""
        return True

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    # ---- helpers for subclasses ---------------------------------------------------------------
    def normalized_video(self, batch: dict[str, Any], ctx: StepContext,
                         dtype: torch.dtype | None = None) -> torch.Tensor:
        """The batch's uint8 video on the device, normalised with augment.mean/std, in `dtype` (the
        compute dtype unless given)."""
        from ..data.transforms import normalize_video
        video = batch["video"].to(ctx.device, non_blocking=True)
        return normalize_video(video, self.cfg.augment.mean, self.cfg.augment.std).to(dtype or ctx.dtype)


TASKS: dict[str, type[Task]] = {}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    def add(cls: type[Task]) -> type[Task]:
        cls.name = name
        TASKS[name] = cls
        return cls
    return add


def build_task(cfg: Config) -> Task:
    """The task `run.task` names."""
    _import_known_tasks()
    if cfg.run.task not in TASKS:
        raise ValueError(f"run.task {cfg.run.task!r} has no task implementation; known: {sorted(TASKS)}")
    return TASKS[cfg.run.task](cfg)


# Modules whose import registers more tasks (e.g. the classification stages); a missing one is skipped.
TASK_MODULES: tuple[str, ...] = ("ppma_scale.engine.classify",)


def _import_known_tasks() -> None:
    """Tasks living in other modules register themselves on import."""
    import importlib
    for module in TASK_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


@register_task("mae")
class MAETask(Task):
    """Stage 1: masked autoencoding of video clips (MSE on masked, per-patch normalised patches)."""

    def validate(self) -> None:
        model = self.cfg.model
        if model.average:
            raise ValueError("model.average blends frozen trunks under a trained head (classification stages); "
                             "stage 1 (MAE) trains the whole trunk. To start it from a blend, write one with "
                             "`python -m ppma_scale.average ... --trunk --out soup.safetensors` and set model.init")
        super().validate()
        mae = self.cfg.mae
        if not 0.0 < mae.mask_ratio < 1.0:
            raise ValueError(f"mae.mask_ratio must be in (0, 1), got {mae.mask_ratio}")
        if not 0.0 <= mae.decoder_mask_ratio < 1.0:
            raise ValueError(f"mae.decoder_mask_ratio must be in [0, 1), got {mae.decoder_mask_ratio}")
        from ..data.shards import open_sources
        data = self.cfg.data  # manifests parse, classes resolve (and one process checks its local shards here)
        sets, _ = open_sources(data.train, allow_pipe=data.allow_pipe, classes=data.classes)
        self.train_layouts = [s.layout for s in sets]
        self.train_samples = [s.num_samples for s in sets]
        self.check_one_global_batch(sum(self.train_samples))

    def architecture(self) -> nn.Module:
        from ..models import build_mae
        cfg = self.cfg
        return build_mae(cfg.model, cfg.mae, cfg.data.num_frames, cfg.data.img_size)

    def build_model(self, dist: DistInfo) -> nn.Module:
        """The MAE; with model.init, its encoder starts from that trunk (e.g. to continue MAE from
        VideoMAE / PPMA weights). The decoder always starts fresh: resume a run to keep one."""
        cfg = self.cfg
        model = self.architecture()
        if cfg.model.init and self.resume_from is None:
            from .pretrained import init_trunk
            try:
                source, report = init_trunk(model.encoder, cfg.model.init, dist, cfg.run.output)
            except ValueError as exc:
                raise ConfigError(f"model.init: {exc}") from None
            if dist is None or dist.is_main:
                filled = f"; filled {report['filled']}" if report["filled"] else ""
                print(f"[tasks] encoder from {source.describe()}; position table: {report['pos_embed']}{filled}; "
                      "the decoder starts from random weights", flush=True)
        self.grid = tuple(model.encoder.grid)
        return model

    def build_train_stream(self, dist: DistInfo, engine: nn.Module) -> TrainStream:
        from .data_args import build_stream_from_config
        return build_stream_from_config(self.cfg, dist, require_labels=False)

    def flops_per_clip(self, model: nn.Module) -> float | None:
        from ..models.flops import flops_per_clip
        return flops_per_clip(model, mask_ratio=self.cfg.mae.mask_ratio, mask_type=self.cfg.mae.mask_type,
                              decoder_mask_ratio=self.cfg.mae.decoder_mask_ratio)

    def activation_bytes(self, model: nn.Module) -> ActivationBytes | None:
        from ..models.activations import activation_bytes
        from .ds_config import precision_bytes
        mae = self.cfg.mae
        return activation_bytes(model, precision_bytes(self.cfg.train.precision), mask_ratio=mae.mask_ratio,
                                decoder_mask_ratio=mae.decoder_mask_ratio, mask_type=mae.mask_type)

    def loss(self, engine: nn.Module, batch: dict[str, Any], ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        from ..data.masking import make_masks
        # fp32: the targets are normalised per patch from these pixels, and bf16-rounded ones were off
        # by up to 7% in bright, flat patches. The tubelet embedding casts what it embeds.
        video = self.normalized_video(batch, ctx, torch.float32)
        mae = self.cfg.mae
        # masks stay on the CPU: the MAE checks their counts there and moves them (no device sync)
        mask, decoder_mask = make_masks(mae.mask_type, video.shape[0], self.grid, mae.mask_ratio,
                                        decoder_ratio=mae.decoder_mask_ratio, generator=ctx.generator())
        loss, _ = engine(video, mask, decoder_mask)
        return loss, {}
