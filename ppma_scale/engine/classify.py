"""Classification tasks: `classify` (stage-2 align, downstream fine-tune) and `linprobe`.

Both build a VideoClassifier whose trunk starts from `model.init` (a stage-1/2 run, checkpoint or
weights file; decoder, mask token and heads dropped) or, with `model.average`, an AveragedTrunk
blending several frozen trunks with learned softmax weights. `classify` trains everything with
the stage-2 augmentation (RandAugment in the stream; cube erasing, mixup/cutmix and label
smoothing on the device). `linprobe` freezes the trunk — it is left out of the optimizer and kept in
eval mode, so its weights stay bit-identical — and, unless averaging, encodes the training videos
once and trains its BatchNorm + linear head on the cached features. Both evaluate with clips x
crops views per video and write the metrics as JSON in `RUN_DIR/eval/`.
"""
from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError
from ..models.activations import ActivationBytes
from .agreement import agreed
from .dist import DistInfo
from .evaluate import headline, run_evaluation, score_eval_batches
from .param_groups import build_param_groups, no_weight_decay_names
from .signals import StopRequest
from .tasks import StepContext, Task, TrainStream, register_task

log = logging.getLogger(__name__)


def _say(dist: DistInfo | None, message: str) -> None:
    """One line on rank 0's console (set-up facts a user should see before step 1)."""
    log.info(message)
    if dist is None or dist.is_main:
        print(f"[{__name__.rsplit('.', 1)[-1]}] {message}", flush=True)


@register_task("classify")
class ClassifyTask(Task):
    """Supervised classification of clips over the training manifests' shared label space."""

    head = "linear"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.classes: list[str] | None = None
        self.train_videos = 0  # in the training manifests (known once label_space() has read them)
        self.averaged_from: list[str] = []
        self.average_sources: list[dict[str, str]] = []  # path + fingerprint of each blended trunk
        self.recorded_sources: list[dict[str, str]] | None = None  # those of the checkpoint resumed/evaluated
        self.recorded_at: Path | None = None

    # ---- set-up -------------------------------------------------------------------------------
    def validate(self) -> None:
        cfg = self.cfg
        model = cfg.model
        if model.init and model.average:
            raise ValueError("model.init and model.average are both set: initialise from one trunk (init) or "
                             "blend several (average), not both")
        if model.average and len(model.average) < 2:
            raise ValueError(f"model.average needs at least 2 trunks to blend, got {model.average}")
        seen: dict[Path, int] = {}
        for index, source in enumerate(model.average or ()):
            first = seen.setdefault(Path(source).expanduser().resolve(), index)
            if first != index:
                raise ValueError(f"model.average[{first}] and model.average[{index}] are the same trunk ({source}): "
                                 "blending a model with itself learns nothing; name different trunks")
        super().validate()  # the sources exist and are weights (after the rules above: they say more)
        for index, spec in enumerate(cfg.data.val):
            if "://" not in spec.manifest and not Path(spec.manifest).expanduser().exists():
                raise FileNotFoundError(f"data.val[{index}].manifest: {spec.manifest} does not exist")
        aug = cfg.augment
        clips = cfg.train.micro_batch * cfg.data.repeat_aug
        if (aug.mixup > 0 or aug.cutmix > 0) and self.uses_batch_augment() and clips % 2:
            raise ValueError(f"mixup/cutmix pair clips within a batch: train.micro_batch x data.repeat_aug "
                             f"= {clips} must be even (or set augment.mixup=0 augment.cutmix=0)")
        classes = self.label_space()  # reads the training manifests (once)
        self.check_one_global_batch(self.train_videos, f"{cfg.run.task} run's training data")
        if cfg.data.val:  # val classes outside the training label space would fail only at the first evaluation
            from ..data.shards import open_sources
            open_sources(cfg.data.val, allow_pipe=cfg.data.allow_pipe, classes=classes, require_labels=True,
                         what="data.val")

    def uses_batch_augment(self) -> bool:
        return True

    def label_space(self) -> list[str]:
        """Class names of the training mix (data.classes, else the union of the manifests' classes)."""
        if self.classes is None:
            from ..data.shards import open_sources
            data = self.cfg.data
            sets, self.classes = open_sources(data.train, allow_pipe=data.allow_pipe, classes=data.classes,
                                              require_labels=True)
            self.train_videos = sum(sum(s.counts) for s in sets)
            self.train_layouts = [s.layout for s in sets]
            self.train_samples = [s.num_samples for s in sets]
            wanted = self.cfg.model.num_classes
            if wanted is not None and wanted != len(self.classes):
                raise ValueError(f"model.num_classes is {wanted} but the training data's label space has "
                                 f"{len(self.classes)} classes ({', '.join(self.classes[:6])}, ...): fix "
                                 "model.num_classes or data.classes, or check data.train")
        return self.classes

    def checkpoint_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"classes": list(self.label_space())}  # logit i means classes[i]
        if self.average_sources:
            record["average_sources"] = self.average_sources
        return record

    def check_checkpoint_record(self, meta: dict[str, Any], where: Path) -> bool:
        self.recorded_sources = meta.get("average_sources")  # checked once the sources are read (build_model)
        self.recorded_at = where
        if meta.get("classes") is None:
            return False
        check_same_classes(meta["classes"], self.label_space(), where)
        return True

    def architecture(self) -> nn.Module:
        """The classifier over one fresh trunk (a `model.average` blend holds several such trunks' weights)."""
        from ..models import build_classifier
        cfg = self.cfg
        return build_classifier(cfg.model, cfg.data.num_frames, cfg.data.img_size, len(self.label_space()),
                                head=self.head)

    def build_model(self, dist: DistInfo) -> nn.Module:
        from ..models import VideoClassifier, build_encoder
        cfg = self.cfg
        num_classes = len(self.label_space())
        frames, size = cfg.data.num_frames, cfg.data.img_size
        if cfg.model.average:
            from .averaging import AveragedTrunk, check_distinct, check_same_sources, fingerprint
            from .pretrained import adapted_trunk_state
            factory = partial(build_encoder, cfg.model, frames, size, final_norm=False)
            states, self.average_sources = [], []
            for i, path in enumerate(cfg.model.average):
                try:
                    state, source = adapted_trunk_state(factory, path, dist, cfg.run.output)
                except ValueError as exc:
                    raise ConfigError(f"model.average[{i}]: {exc}") from None
                states.append(state)
                self.average_sources.append({"path": str(path), "fingerprint": fingerprint(state)})
                _say(dist, f"averaging source {i}: {source.describe()}; weights {self.average_sources[-1]['fingerprint'][:12]}")
            try:
                check_distinct(states, [f"model.average[{i}] ({path})" for i, path in enumerate(cfg.model.average)])
                if self.recorded_sources is not None and self.resume_from is not None:
                    check_same_sources(self.recorded_sources, self.average_sources, self.recorded_at)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            trunk = AveragedTrunk(factory(), states, mode=cfg.model.average_mode, source_names=cfg.model.average)
            self.averaged_from = list(cfg.model.average)
            # the sources are frozen buffers; only alpha (and the head) train, whatever the head kind
            model = VideoClassifier(trunk, num_classes, head=self.head, dropout=cfg.model.head_dropout,
                                    freeze_encoder=False)
        else:
            model = self.architecture()
            if self.resume_from is not None:
                _say(dist, f"every weight comes from the checkpoint {self.resume_from}"
                     + (f"; model.init ({cfg.model.init}) is not read" if cfg.model.init else ""))
            elif cfg.model.init:
                from .pretrained import init_trunk
                try:
                    source, report = init_trunk(model.encoder, cfg.model.init, dist, cfg.run.output)
                except ValueError as exc:
                    raise ConfigError(f"model.init: {exc}") from None
                _say(dist, f"trunk from {source.describe()}; position table: {report['pos_embed']}"
                     + (f"; filled {report['filled']}" if report["filled"] else ""))
            else:
                _say(dist, "model.init is not set: the trunk starts from random weights")
        _say(dist, f"{num_classes} classes, head '{self.head}'")
        return model

    def param_groups(self, model: nn.Module) -> list[dict]:
        """Layer decay over the trunk's blocks; none for a blended trunk (its only weight is alpha)."""
        if not self.cfg.model.average:
            return super().param_groups(model)
        return build_param_groups(model.named_parameters(), self.cfg.optim.weight_decay,
                                  no_weight_decay_names(model))

    def build_train_stream(self, dist: DistInfo, engine: nn.Module) -> TrainStream:
        from .data_args import build_stream_from_config
        cfg, aug = self.cfg, self.cfg.augment
        if self.uses_batch_augment():
            from ..data.transforms import BatchAugment
            self.augment = BatchAugment(len(self.label_space()), aug.mean, aug.std, mixup=aug.mixup,
                                        cutmix=aug.cutmix, label_smoothing=aug.label_smoothing,
                                        erase_prob=aug.erase_prob)
        return build_stream_from_config(cfg, dist, require_labels=True)

    def flops_per_clip(self, model: nn.Module) -> float | None:
        from ..models.flops import flops_per_clip
        if self.cfg.model.average:
            return None  # the blend's cost is not a ViT's; MFU would mislead
        return flops_per_clip(model, trunk_trainable=not getattr(model, "frozen_encoder", False))

    def activation_bytes(self, model: nn.Module) -> ActivationBytes | None:
        from ..models.activations import activation_bytes
        if self.cfg.model.average:
            return None  # alpha's gradient runs through every source trunk's blend: not a ViT's count
        from .ds_config import precision_bytes
        return activation_bytes(model, precision_bytes(self.cfg.train.precision),
                                trunk_trainable=not getattr(model, "frozen_encoder", False))

    # ---- per step -----------------------------------------------------------------------------
    def loss(self, engine: nn.Module, batch: dict[str, Any], ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        video = batch["video"].to(ctx.device, non_blocking=True)
        labels = batch["label"].to(ctx.device, non_blocking=True)
        video, target = self.augment(video, labels)
        logits = engine(video.to(ctx.dtype)).float()
        return classification_loss(logits, target), {}

    # ---- evaluation ---------------------------------------------------------------------------
    def evaluates(self) -> bool:
        return bool(self.cfg.data.val)

    def evaluate(self, engine: nn.Module, ctx: StepContext) -> dict[str, float] | None:
        if not self.evaluates():
            return None
        was_training = engine.training
        engine.eval()
        share_buffers_from_rank0(engine.module if hasattr(engine, "module") else engine)
        try:
            out = ctx.run_dir / "eval" / f"step_{ctx.step:08d}.json"
            metrics = evaluate_classifier(self.cfg, ctx.dist, partial(self._predict, engine, ctx), out,
                                          self.label_space(), stop=self.stop)
        finally:
            engine.train(was_training)
        results = headline(metrics)
        if self.averaged_from:  # the learned blend, mean over tensors when per tensor
            from .averaging import describe_weights
            model = engine.module if hasattr(engine, "module") else engine
            with gathered([model.encoder.alpha]):  # ZeRO-3 keeps only a shard of alpha outside forward
                weights = describe_weights(model.encoder)
            results.update({f"mix_{name}": w for name, w in weights.items()})
        return results

    def _predict(self, engine: nn.Module, ctx: StepContext, video: torch.Tensor) -> torch.Tensor:
        from ..data.transforms import normalize_video
        x = normalize_video(video.to(ctx.device, non_blocking=True), self.cfg.augment.mean, self.cfg.augment.std)
        return engine(x.to(ctx.dtype))


def check_same_classes(recorded: list[str], current: list[str], where: Path) -> None:
    """ValueError unless a checkpoint's class names are this config's, in the same order: logit i of a
    classifier means recorded[i], so reading it against another order scores (or trains) shuffled labels."""
    if list(recorded) == list(current):
        return
    from .checkpoint import MARKER
    what = class_difference(recorded, current)
    raise ValueError(f"{where} was trained on another label space than this config gives, {what}. Its logits "
                     "would be read against the wrong class names. Use the run's own data.classes and data.train "
                     f"(its config.yaml), or set data.classes to the names recorded in {Path(where) / MARKER}")


def class_difference(first: Sequence[str], other: Sequence[str], first_where: str = "there",
                     other_where: str = "here") -> str:
    """How two label spaces (class names in logit order) differ, for an error message."""
    from ..data.manifest import name_some
    if sorted(first) == sorted(other):
        moved = [f"#{i} {a!r} {first_where} / {b!r} {other_where}" for i, (a, b) in enumerate(zip(first, other))
                 if a != b]
        return f"the same {len(other)} classes in another order: {name_some(moved, 3)}"
    missing, extra = sorted(set(first) - set(other)), sorted(set(other) - set(first))
    return (f"{len(first)} classes {first_where} and {len(other)} {other_where}"
            + (f"; only {first_where}: {name_some(missing, 4)}" if missing else "")
            + (f"; only {other_where}: {name_some(extra, 4)}" if extra else ""))


def share_buffers_from_rank0(module: nn.Module) -> None:
    """Give every rank rank 0's BatchNorm running statistics. Each rank updates them (the probe head)
    from its own batches and DeepSpeed does not sync buffers; checkpoints keep rank 0's, so an
    evaluation spread over the ranks must use rank 0's too, or it scores a model that was never saved.
    Only those: the other buffers (position tables, a blend's frozen source trunks: hundreds of MB)
    never change in training and are the same on every rank."""
    import torch.distributed as tdist
    if not (tdist.is_available() and tdist.is_initialized()) or tdist.get_world_size() == 1:
        return
    for norm in module.modules():
        if isinstance(norm, nn.modules.batchnorm._BatchNorm):
            for buffer in norm.buffers(recurse=False):
                tdist.broadcast(buffer.data, src=0)


def gathered(params: list[nn.Parameter]):
    """A context in which ZeRO-3-partitioned `params` are whole (a no-op for other stages)."""
    import contextlib
    if not any(hasattr(p, "ds_id") for p in params):
        return contextlib.nullcontext()
    import deepspeed
    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def classification_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against hard labels (B,) or soft targets (B, K) from mixup / label smoothing."""
    if target.dim() == 2:
        return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()
    return F.cross_entropy(logits, target)


def views_stream(cfg, dist: DistInfo, datasets: list, classes: list[str]):
    """Every video of `datasets` once over all ranks as clips x crops views (test-time cropping)."""
    from ..data.loader import build_eval_stream
    data = cfg.data
    return build_eval_stream(
        datasets, rank=dist.rank, world_size=dist.world_size, videos_per_batch=max(1, cfg.train.micro_batch // 2),
        num_frames=data.num_frames, sampling=data.sampling, stride=data.stride, window_s=data.window_s,
        img_size=data.img_size, short_side=data.short_side, test_clips=data.test_clips, test_crops=data.test_crops,
        decoder=data.decoder, device=str(dist.device), num_workers=data.num_workers, prefetch=data.prefetch,
        classes=classes, require_labels=True, allow_pipe=data.allow_pipe,
        max_decode_failures=data.max_decode_failures)


def evaluate_classifier(cfg, dist: DistInfo, predict, out_file: Path, classes: list[str],
                        record: dict | None = None, stop: StopRequest | None = None) -> dict:
    """Multi-view evaluation of `predict(video_uint8) -> logits` on data.val over all ranks (`record`:
    written into the metrics, see run_evaluation). With `stop`, a stop signal on any rank raises
    `StopAgreed` on every rank at the same batch, before anything is gathered or written."""
    from .data_args import skipped_samples
    stream = views_stream(cfg, dist, cfg.data.val, classes)
    scored = score_eval_batches(predict, agreed(stream, "reading its evaluation videos", dist.device, stop),
                                views_per_forward=cfg.train.micro_batch)
    return run_evaluation(scored, len(classes), class_names=classes, out_file=out_file,
                          expected_videos=stream.num_videos, skipped=lambda: skipped_samples(stream.stats()),
                          views_per_video=stream.views_per_video, record=record)


@register_task("linprobe")
class LinearProbeTask(ClassifyTask):
    """A frozen trunk with a BatchNorm + linear head; features cached unless the trunk is a learned blend."""

    head = "probe"

    def caches_features(self) -> bool:
        return not self.cfg.model.average

    def uses_batch_augment(self) -> bool:
        return not self.caches_features()

    def validate(self) -> None:
        super().validate()
        if self.cfg.train.micro_batch < 2:  # found only at the first training step, after the feature pass
            raise ValueError(f"train.micro_batch={self.cfg.train.micro_batch}: the linear probe's head normalises with "
                             "BatchNorm, which needs at least 2 clips per rank in each batch; set train.micro_batch >= 2")
        if self.caches_features() and self.cfg.train.steps_per_epoch is not None:
            raise ValueError(f"train.steps_per_epoch={self.cfg.train.steps_per_epoch}: the linear probe's epoch is every "
                             "cached video once, so the key would be ignored; leave it unset (set train.max_steps "
                             "or train.epochs for the run's length)")
        aug, data = self.cfg.augment, self.cfg.data
        if self.caches_features() and (aug.mixup > 0 or aug.cutmix > 0 or aug.erase_prob > 0 or aug.randaugment):
            raise ValueError("the linear probe caches one pass of features, so per-step augmentation cannot apply: "
                             "set augment.randaugment=null augment.erase_prob=0 augment.mixup=0 augment.cutmix=0")
        if self.caches_features():  # one pass over every training video, at the test-time views
            ignored = [f"augment.crop={aug.crop}" if aug.crop != "center" else "",
                       "augment.flip=true" if aug.flip else "",
                       f"data.repeat_aug={data.repeat_aug}" if data.repeat_aug != 1 else "",
                       f"data.mix={data.mix}" if data.mix != "sample" else "",
                       *(f"data.train[{i}].weight={d.weight:g}" for i, d in enumerate(data.train) if d.weight != 1.0)]
            if any(ignored):
                raise ValueError(f"{', '.join(k for k in ignored if k)}: the linear probe caches the features of every "
                                 "training video once, at the test-time views (data.test_clips x data.test_crops), so "
                                 "random crops, flips, repeated views and dataset weights cannot apply; set "
                                 "augment.crop=center augment.flip=false data.repeat_aug=1, and no dataset weights")

    def build_train_stream(self, dist: DistInfo, engine: nn.Module) -> TrainStream:
        if not self.caches_features():
            return super().build_train_stream(dist, engine)
        from .features import FeatureStream, extract_features, gather_features
        cfg = self.cfg
        model = engine.module if hasattr(engine, "module") else engine
        model.eval()
        stream = views_stream(cfg, dist, cfg.data.train, self.label_space())
        _say(dist, f"encoding {stream.num_videos} training videos x {stream.views_per_video} views once with "
                   "the frozen trunk ...")
        local = extract_features(partial(self._features, model, dist),
                                 agreed(stream, "reading its training videos for the feature cache", dist.device,
                                        self.stop),
                                 cfg.train.micro_batch)
        cache = gather_features(local, dist.device)
        _say(dist, f"feature cache: {tuple(cache['features'].shape)} (videos, views, dim)")
        self.smoothing = cfg.augment.label_smoothing
        return FeatureStream(cache["features"], cache["label"], dist, cfg.train.micro_batch, cfg.run.seed)

    def _features(self, model: nn.Module, dist: DistInfo, video: torch.Tensor) -> torch.Tensor:
        from ..data.transforms import normalize_video
        x = normalize_video(video.to(dist.device, non_blocking=True), self.cfg.augment.mean, self.cfg.augment.std)
        dtype = next(model.head.parameters()).dtype
        return model.features(x.to(dtype))

    def flops_per_clip(self, model: nn.Module) -> float | None:
        return None if self.caches_features() else super().flops_per_clip(model)

    def clips_in(self, batch: dict[str, Any]) -> int:
        return int(batch["features"].shape[0] if "features" in batch else batch["video"].shape[0])

    def loss(self, engine: nn.Module, batch: dict[str, Any], ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        if "features" not in batch:
            return super().loss(engine, batch, ctx)
        head = (engine.module if hasattr(engine, "module") else engine).head
        logits = head(batch["features"].to(ctx.device, ctx.dtype, non_blocking=True)).float()
        labels = batch["label"].to(ctx.device, non_blocking=True)
        return F.cross_entropy(logits, labels, label_smoothing=self.smoothing), {}
