"""Config values that types cannot check: ranges and rules across keys, applied by `build_config`.

Builders deeper down check the same things, but only after the process group is up, as a traceback
on every rank; here a bad value fails at load time, naming its key and the file it came from.
"""
from __future__ import annotations

import math
import re
from typing import Any, NoReturn, Sequence

from .config import Config, ConfigError, _where


def check_values(cfg: Config, sources: dict[str, str] | None = None) -> None:
    """Ranges and cross-field rules that types cannot express, checked at load time.

    Builders deeper down check the same things, but only after the process group is up, as a
    traceback on every rank; here a bad value fails in a second, naming its key and its file.
    """
    sources = sources or {}
    _require(0 <= cfg.run.seed < 2**32, "run.seed", sources, "an integer in [0, 2**32) (numpy's seed range)",
             cfg.run.seed)
    _check_paths(cfg, sources)
    size = _check_model(cfg, sources)
    _check_mae(cfg, size, sources)
    _check_data(cfg, sources)
    _check_augment(cfg, sources)
    _check_optim(cfg, sources)
    _check_train(cfg, sources)


def _invalid(keys: str | Sequence[str], sources: dict[str, str], message: str) -> NoReturn:
    keys = [keys] if isinstance(keys, str) else list(keys)
    raise ConfigError(f"{message}{_origins(keys, sources)}")


def _origins(keys: Sequence[str], sources: dict[str, str]) -> str:
    """' (a set in FILE; b set in the command line)' for the keys whose origin is known."""
    found = [(key, _where(key, sources)) for key in keys]
    found = [(key, where[2:-1]) for key, where in found if where]
    if len(found) == 1 and len(keys) == 1:
        return f" ({found[0][1]})"
    return f" ({'; '.join(f'{key} {where}' for key, where in found)})" if found else ""


def _require(ok: bool, key: str, sources: dict[str, str], rule: str, value: Any) -> None:
    """Raise `KEY (set in FILE) must be RULE, got VALUE` unless `ok`."""
    if not ok:
        raise ConfigError(f"{key}{_where(key, sources)} must be {rule}, got {value!r}")


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def _check_paths(cfg: Config, sources: dict[str, str]) -> None:
    """An empty path (an unset shell variable) would mean the current directory: refuse it."""
    paths = [("run.output", cfg.run.output), ("model.init", cfg.model.init), ("data.classes", cfg.data.classes)]
    paths += [(f"model.average[{i}]", p) for i, p in enumerate(cfg.model.average)]
    for split in ("train", "val"):
        paths += [(f"data.{split}[{i}].manifest", spec.manifest) for i, spec in enumerate(getattr(cfg.data, split))]
    for key, value in paths:
        if value is not None and not value.strip():
            hint = " (use null to leave it unset)" if key in ("model.init", "data.classes") else ""
            raise ConfigError(f"{key}{_where(key, sources)} is an empty path{hint}; was a shell variable unset?")


def _check_model(cfg: Config, sources: dict[str, str]) -> Any:
    """The trunk's shape (size table row + overrides) and how clips cut into its tubelets; returns the size."""
    from .models.sizes import resolve_size
    model, data = cfg.model, cfg.data
    try:
        size = resolve_size(model.size, embed_dim=model.embed_dim, depth=model.depth, num_heads=model.num_heads,
                            mlp_ratio=model.mlp_ratio, patch_size=model.patch_size)
    except ValueError as exc:
        _invalid(re.findall(r"model\.\w+", str(exc)) or ["model.size"], sources, str(exc))
    _require(model.tubelet >= 1, "model.tubelet", sources, ">= 1", model.tubelet)
    _require(0 <= model.drop_path < 1, "model.drop_path", sources, "in [0, 1)", model.drop_path)
    _require(0 <= model.head_dropout < 1, "model.head_dropout", sources, "in [0, 1)", model.head_dropout)
    _require(model.act_checkpoint_every >= 0, "model.act_checkpoint_every", sources, ">= 0 (0 = off)",
             model.act_checkpoint_every)
    if model.layer_scale is not None:
        _require(model.layer_scale > 0 and _finite(model.layer_scale), "model.layer_scale", sources,
                 "positive or null", model.layer_scale)
    if model.num_classes is not None:
        _require(model.num_classes >= 1, "model.num_classes", sources, ">= 1 or null", model.num_classes)
    _require(data.num_frames >= 1, "data.num_frames", sources, ">= 1", data.num_frames)
    _require(data.img_size >= 1, "data.img_size", sources, ">= 1", data.img_size)
    if data.num_frames % model.tubelet:
        _invalid(["data.num_frames", "model.tubelet"], sources,
                 f"data.num_frames {data.num_frames} must be a multiple of model.tubelet {model.tubelet}")
    if data.img_size % size.patch_size:
        patch_from = "model.patch_size" if model.patch_size is not None else f"model.size {model.size!r}"
        _invalid(["data.img_size", "model.patch_size"], sources,
                 f"data.img_size {data.img_size} must be a multiple of the patch size {size.patch_size} "
                 f"that {patch_from} gives")
    return size


def _check_mae(cfg: Config, size: Any, sources: dict[str, str]) -> None:
    """Mask ratios and the decoder's shape (defaults as ppma_scale.models.mae.MAE resolves them)."""
    mae = cfg.mae
    _require(0 < mae.mask_ratio < 1, "mae.mask_ratio", sources, "in (0, 1)", mae.mask_ratio)
    _require(0 <= mae.decoder_mask_ratio < 1, "mae.decoder_mask_ratio", sources, "in [0, 1)",
             mae.decoder_mask_ratio)
    _require(mae.decoder_depth >= 1, "mae.decoder_depth", sources, ">= 1", mae.decoder_depth)
    for key in ("decoder_dim", "decoder_heads"):
        value = getattr(mae, key)
        if value is not None:
            _require(value >= 1, f"mae.{key}", sources, ">= 1 or null", value)
    dim = mae.decoder_dim or size.decoder_dim
    heads = mae.decoder_heads or size.decoder_heads_for(mae.decoder_dim)
    if dim % heads or dim % 2:
        _invalid(["mae.decoder_dim", "mae.decoder_heads"], sources,
                 f"mae.decoder_dim {dim} must be even and divisible by mae.decoder_heads {heads}")


def _check_data(cfg: Config, sources: dict[str, str]) -> None:
    data = cfg.data
    if data.short_side < data.img_size:
        _invalid(["data.short_side", "data.img_size"], sources,
                 f"data.short_side {data.short_side} must be >= data.img_size {data.img_size} "
                 "(crops are taken from clips resized to the short side)")
    for key in ("repeat_aug", "stride", "shuffle_buffer", "prefetch", "test_clips", "test_crops"):
        _require(getattr(data, key) >= 1, f"data.{key}", sources, ">= 1", getattr(data, key))
    _require(data.num_workers >= 0, "data.num_workers", sources, ">= 0", data.num_workers)
    _require(data.window_s > 0 and _finite(data.window_s), "data.window_s", sources, "> 0 seconds", data.window_s)
    _require(0 <= data.max_decode_failures <= 1, "data.max_decode_failures", sources, "a share in [0, 1]",
             data.max_decode_failures)
    for split in ("train", "val"):
        for i, spec in enumerate(getattr(data, split)):
            _require(spec.weight > 0 and _finite(spec.weight), f"data.{split}[{i}].weight", sources, "> 0",
                     spec.weight)


def _check_augment(cfg: Config, sources: dict[str, str]) -> None:
    aug = cfg.augment
    scale, ratio = aug.scale, aug.ratio
    _require(len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1, "augment.scale", sources,
             "[min, max] with 0 < min <= max <= 1", scale)
    _require(len(ratio) == 2 and 0 < ratio[0] <= ratio[1] and _finite(*ratio), "augment.ratio", sources,
             "[min, max] with 0 < min <= max", ratio)
    _require(len(aug.mean) == 3 and _finite(*aug.mean), "augment.mean", sources, "3 numbers (R, G, B)", aug.mean)
    _require(len(aug.std) == 3 and all(s > 0 and _finite(s) for s in aug.std), "augment.std", sources,
             "3 positive numbers (R, G, B)", aug.std)
    for key in ("mixup", "cutmix"):
        _require(getattr(aug, key) >= 0, f"augment.{key}", sources, ">= 0", getattr(aug, key))
    _require(0 <= aug.erase_prob <= 1, "augment.erase_prob", sources, "in [0, 1]", aug.erase_prob)
    _require(0 <= aug.label_smoothing < 1, "augment.label_smoothing", sources, "in [0, 1)", aug.label_smoothing)
    if aug.randaugment is not None:  # parsed here by the class the data workers build, not after start-up
        from .data.transforms import ClipRandAugment
        try:
            ClipRandAugment(aug.randaugment, cfg.data.img_size, aug.mean)
        except ValueError as exc:
            _invalid("augment.randaugment", sources, str(exc).rstrip(": "))


def _check_optim(cfg: Config, sources: dict[str, str]) -> None:
    optim = cfg.optim
    positive = {"base_lr": optim.base_lr, "eps": optim.eps, "lr": optim.lr, "clip_grad": optim.clip_grad}
    for key, value in positive.items():
        if value is not None:
            _require(value > 0 and _finite(value), f"optim.{key}", sources, "positive", value)
    for key in ("min_lr", "warmup_epochs", "weight_decay"):
        value = getattr(optim, key)
        _require(value >= 0 and _finite(value), f"optim.{key}", sources, ">= 0", value)
    if optim.warmup_steps is not None:
        _require(optim.warmup_steps >= 0, "optim.warmup_steps", sources, ">= 0 or null", optim.warmup_steps)
    _require(optim.lr_ref_batch >= 1, "optim.lr_ref_batch", sources, ">= 1", optim.lr_ref_batch)
    _require(len(optim.betas) == 2 and all(0 <= b < 1 for b in optim.betas), "optim.betas", sources,
             "two numbers in [0, 1)", optim.betas)
    if optim.layer_decay is not None:
        _require(0 < optim.layer_decay <= 1, "optim.layer_decay", sources, "in (0, 1] or null", optim.layer_decay)


def _check_train(cfg: Config, sources: dict[str, str]) -> None:
    train = cfg.train
    for key in ("micro_batch", "grad_accum", "dist_timeout_s", "log_every", "keep_last", "max_nonfinite"):
        _require(getattr(train, key) >= 1, f"train.{key}", sources, ">= 1", getattr(train, key))
    for key in ("ckpt_every", "eval_every"):
        _require(getattr(train, key) >= 0, f"train.{key}", sources, ">= 0 (0 = only at the end)", getattr(train, key))
    for key in ("max_steps", "steps_per_epoch"):
        value = getattr(train, key)
        if value is not None:
            _require(value >= 1, f"train.{key}", sources, ">= 1 or null", value)
    if train.max_steps is None:
        _require(train.epochs > 0 and _finite(train.epochs), "train.epochs", sources,
                 "positive (or set train.max_steps)", train.epochs)
    _require(train.zero_stage in (0, 1, 2, 3), "train.zero_stage", sources, "0, 1, 2 or 3", train.zero_stage)
    if cfg.model.compile and train.zero_stage == 3:
        _invalid(["model.compile", "train.zero_stage"], sources,
                 "model.compile needs train.zero_stage 0, 1 or 2: ZeRO-3 gathers each layer's weights in module "
                 "hooks that torch.compile cannot trace, so the blocks break into small graphs, hit the "
                 "recompile limit and run uncompiled. Turn one of them off")
    if train.peak_tflops is not None:
        _require(train.peak_tflops > 0, "train.peak_tflops", sources, "positive or null", train.peak_tflops)
