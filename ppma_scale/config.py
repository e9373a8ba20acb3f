"""Typed run configuration: YAML files with `base:` inheritance and `key.sub=value` overrides.

Every value a run reads is declared here, once, with its type and default. Loading validates the
whole tree before any work starts: an unknown key, a wrong type or a missing required value raises
`ConfigError` naming the key, the file (or command line) it came from, and the nearest valid key.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn, Optional, Sequence, Union

import yaml

MISSING_VALUE = "???"  # a YAML value that must be filled in by a child config or the command line


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who wrote the config."""


# --------------------------------------------------------------------------------------------- schema


@dataclass
class RunConfig:
    """What to run and where its outputs go."""

    task: Literal["mae", "classify", "linprobe"] = "mae"
    name: str = ""
    output: str = "runs/default"  # run directory; `--output` on the command line wins
    seed: int = 0


@dataclass
class ModelConfig:
    """The video transformer trunk and its head. Clip geometry lives in `data`."""

    size: str = "b"  # a row of ppma_scale.models.sizes.SIZES (s, b, l, h, g, or a tiny test size)
    embed_dim: Optional[int] = None  # overrides of the size table's row, for custom/tiny models
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    mlp_ratio: Optional[float] = None
    patch_size: Optional[int] = None  # spatial patch; the size table gives 16 (14 for g)
    tubelet: int = 2  # temporal patch
    qkv_bias: bool = True
    layer_scale: Optional[float] = None  # LayerScale init value; None = off
    drop_path: float = 0.0
    pos_embed: Literal["sincos", "learned", "sincos_1d"] = "sincos"  # sincos_1d: VideoMAE/PPMA table, exports to HF
    act_checkpoint_every: int = 0  # non-reentrant activation checkpointing of every k-th block; 0 = off
    compile: bool = False  # torch.compile the blocks (opt-in; see BENCHMARKS.md)
    num_classes: Optional[int] = None  # classification tasks; None = number of classes in the label space
    head_dropout: float = 0.0
    init: Optional[str] = None  # weights to start the trunk from: run dir, DeepSpeed ckpt, safetensors, or a public layout
    average: list[str] = field(default_factory=list)  # adaptive averaging: trunks to blend (>= 2 paths)
    average_mode: Literal["per_model", "per_tensor"] = "per_model"


@dataclass
class MAEConfig:
    """Stage-1 masked autoencoding: masks, decoder, reconstruction target."""

    mask_type: Literal["random", "tube"] = "random"
    mask_ratio: float = 0.9
    decoder_mask_ratio: float = 0.0  # VideoMAE V2 running-cell decoder masking; 0 = reconstruct all masked
    decoder_dim: Optional[int] = None  # None: per-size default (VideoMAE: S 192, B 384, L 512, H 640)
    decoder_depth: int = 4
    decoder_heads: Optional[int] = None  # None: decoder_dim // 64
    target_norm: Literal["per_channel", "all", "none"] = "per_channel"  # PPMA / mae_st / raw pixels


@dataclass
class DatasetSpec:
    """One source of clips: a shard manifest and its share of the mix."""

    manifest: str = MISSING_VALUE  # path (or URL) of a manifest.json written by shards_tools.pack
    weight: float = 1.0
    name: Optional[str] = None  # defaults to the manifest's dataset name
    shards: Optional[str] = None  # replaces the manifest's shard URLs in order: brace pattern or `pipe:` template


@dataclass
class DataConfig:
    """Where clips come from and how they are cut, decoded and batched."""

    train: list[DatasetSpec] = field(default_factory=list)
    val: list[DatasetSpec] = field(default_factory=list)
    classes: Optional[str] = None  # label space: a class-names file; None = union of the train manifests' classes
    mix: Literal["sample", "batch"] = "sample"  # weighted mixing per sample, or whole batches per dataset
    allow_pipe: bool = False  # permit `pipe:` shard URLs (they run a shell command)
    decoder: Literal["auto", "dali", "pyav"] = "auto"
    num_frames: int = 16
    img_size: int = 224
    sampling: Literal["stride", "window"] = "window"  # T frames at a stride, or spread over window_s seconds
    stride: int = 4
    window_s: float = 2.7
    short_side: int = 256  # test-time resize, and the scale the train crops are taken from
    repeat_aug: int = 1  # views per decoded clip (PPMA stage 1: 4)
    shuffle_buffer: int = 256
    num_workers: int = 2
    prefetch: int = 2
    test_clips: int = 2
    test_crops: int = 3
    max_decode_failures: float = 0.01  # stop if more than this share of samples is skipped (undecodable/unreadable)


@dataclass
class AugmentConfig:
    """Augmentation. Stage 1 uses the crop/flip part; stage 2 and fine-tuning use all of it."""

    crop: Literal["random_resized", "multi_scale", "center"] = "random_resized"
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333])
    flip: bool = True
    randaugment: Optional[str] = None  # timm spec, e.g. "rand-m7-n4-mstd0.5-inc1"; applied per clip
    erase_prob: float = 0.0  # cube random erasing
    mixup: float = 0.0
    cutmix: float = 0.0
    label_smoothing: float = 0.0
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class OptimConfig:
    """AdamW with linear warmup and cosine decay, stepped per optimizer step."""

    lr: Optional[float] = None  # absolute peak lr; None = base_lr * global_batch / lr_ref_batch, where the
    # global batch counts decoded videos (micro_batch x grad_accum x ranks; repeat_aug views not counted)
    base_lr: float = 1.5e-4
    lr_ref_batch: int = 256
    min_lr: float = 0.0
    warmup_epochs: float = 0.0
    warmup_steps: Optional[int] = None  # wins over warmup_epochs when set
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    layer_decay: Optional[float] = None  # layer-wise lr decay (align/fine-tune 0.75)
    clip_grad: Optional[float] = None


@dataclass
class TrainConfig:
    """The loop: batch geometry, length, precision, sharding, logging and checkpoint cadence."""

    micro_batch: int = 8  # videos per GPU per step; the forward sees micro_batch x data.repeat_aug clips
    grad_accum: int = 1
    epochs: float = 1.0
    max_steps: Optional[int] = None  # stop after this many optimizer steps (wins over epochs)
    steps_per_epoch: Optional[int] = None  # None: from the manifests
    zero_stage: int = 2
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    offload: Literal["none", "cpu"] = "none"
    offload_params: bool = False  # ZeRO-3 with offload=cpu: keep the parameters on the CPU too (engine)
    dist_timeout_s: int = 1800  # collective timeout; must cover the slowest checkpoint save (engine)
    log_every: int = 10
    ckpt_every: int = 500  # optimizer steps between checkpoints; 0 = only at the end
    keep_last: int = 3
    eval_every: int = 0  # epochs between evaluations; 0 = only at the end (classification tasks)
    max_nonfinite: int = 5  # consecutive non-finite steps before stopping
    tensorboard: bool = False
    peak_tflops: Optional[float] = None  # per-GPU peak for MFU; None = look the device up


@dataclass
class Config:
    """A whole run."""

    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    mae: MAEConfig = field(default_factory=MAEConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ----------------------------------------------------------------------------------------- loading

COMMAND_LINE = "the command line"


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read `path` (following `base:`), apply `key.sub=value` overrides, validate, return a Config."""
    raw, sources = _read_with_bases(Path(path), chain=())
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(raw, key, value, sources, COMMAND_LINE)
    return build_config(raw, sources)


def build_config(raw: dict, sources: dict[str, str] | None = None) -> Config:
    """Validate a plain nested dict against the schema (sources map dotted keys to their file)."""
    cfg = _build(Config, raw, sources or {}, prefix="")
    check_values(cfg, sources or {})
    return cfg


def config_to_dict(cfg: Any) -> Any:
    """The resolved config as plain YAML-able data."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, list):
        return [config_to_dict(v) for v in cfg]
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config (what actually ran) as YAML."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def parse_override(item: str) -> tuple[str, Any]:
    """`model.drop_path=0.1` -> ("model.drop_path", 0.1); values parse as YAML (lists, bools, null)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.sub=value")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = _load_yaml(text) if text.strip() else ""
    except DuplicateKeyError as exc:
        raise ConfigError(f"override {item!r}: {exc}") from None
    except yaml.YAMLError:
        value = text
    return key, value


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that names the same key twice (PyYAML would silently keep the last copy)."""

    def __init__(self, key: Any, first_line: int, second_line: int) -> None:
        super().__init__(f"key {key!r} is written twice (lines {first_line} and {second_line}); "
                         "YAML keeps only the last copy, so merge the two")
        self.key, self.first_line, self.second_line = key, first_line, second_line


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key written twice in any mapping at any depth."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` merges are allowed to be overridden
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise DuplicateKeyError(key, seen[key], line)
                seen[key] = line
            except TypeError:  # an unhashable key: PyYAML reports it itself
                continue
        return super().construct_mapping(node, deep)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)


def _read_with_bases(path: Path, chain: tuple[Path, ...]) -> tuple[dict, dict[str, str]]:
    path = path.expanduser()
    if not path.is_file():
        where = f" (named as base: by {chain[-1]})" if chain else ""
        raise FileNotFoundError(f"config file {path} does not exist{where}")
    resolved = path.resolve()
    if resolved in chain:
        loop = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError(f"config inheritance loops: {loop}")
    try:
        data = _load_yaml(path.read_text()) or {}
    except DuplicateKeyError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, not {type(data).__name__}")
    merged: dict = {}
    sources: dict[str, str] = {}
    for base in _base_paths(data.pop("base", None), path):
        base_raw, base_sources = _read_with_bases(path.parent / base, (*chain, resolved))
        _deep_merge(merged, base_raw)
        sources.update(base_sources)
    _deep_merge(merged, data)
    for key in _dotted_keys(data):
        sources[key] = str(path)
    return merged, sources


def _base_paths(bases: Any, path: Path) -> list[str]:
    """The files `base:` names: one path or a list of paths (relative to `path`'s folder)."""
    if bases is None:
        return []
    listed = [bases] if isinstance(bases, str) else bases
    if not isinstance(listed, list) or not all(isinstance(b, str) and b.strip() for b in listed):
        raise ConfigError(f"base: in {path} must be a config file path or a list of them, got {bases!r}")
    return listed


def _deep_merge(into: dict, new: dict) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def _dotted_keys(data: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        if isinstance(value, dict):
            keys.extend(_dotted_keys(value, dotted + "."))
    return keys


def _set_dotted(raw: dict, key: str, value: Any, sources: dict[str, str], source: str) -> None:
    node = raw
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {'.'.join(parts[:depth + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = value
    sources[key] = source


def _build(cls: type, raw: Any, sources: dict[str, str], prefix: str) -> Any:
    where = _where(prefix.rstrip("."), sources)
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'the config'}{where} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            dotted = prefix + str(key)
            raise ConfigError(f"unknown key {dotted!r}{_where(dotted, sources)}{_nearest(prefix, str(key), names)}")
    values = {}
    for f in dataclasses.fields(cls):
        dotted = prefix + f.name
        if f.name in raw:
            values[f.name] = _coerce(hints[f.name], raw[f.name], dotted, sources)
        else:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            values[f.name] = default
        if values[f.name] == MISSING_VALUE:
            origin = _where(dotted, sources).replace(" (set in ", " (left as ??? in ")
            raise ConfigError(f"{dotted} is required{origin}: set it in a config file or on the "
                              f"command line as {dotted}=...")
    return cls(**values)


def _coerce(tp: Any, value: Any, dotted: str, sources: dict[str, str]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0] if len(inner) == 1 else Union[tuple(inner)], value, dotted, sources)
    if value == MISSING_VALUE:
        return value
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{dotted}{_where(dotted, sources)} must be one of {choices}, got {value!r}")
        return value
    if origin is list:
        (item_tp,) = args
        if dataclasses.is_dataclass(item_tp) and not isinstance(value, list):
            value = [value]  # one dataset given where a list is expected
        if not isinstance(value, list):
            _type_error(dotted, sources, "a list", value)
        return [_coerce(item_tp, v, f"{dotted}[{i}]", sources) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, str) and tp is DatasetSpec:
            value = {"manifest": value}  # shorthand: data.train=/path/manifest.json
        return _build(tp, value, sources, prefix=dotted + ".")
    if tp is bool:
        if not isinstance(value, bool):
            _type_error(dotted, sources, "true or false", value)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _type_error(dotted, sources, "an integer", value)
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                _type_error(dotted, sources, "a number", value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _type_error(dotted, sources, "a number", value)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            _type_error(dotted, sources, "a string", value)
        return value
    raise TypeError(f"config schema field {dotted} has unsupported type {tp!r}")


def _type_error(dotted: str, sources: dict[str, str], expected: str, value: Any) -> None:
    raise ConfigError(f"{dotted}{_where(dotted, sources)} must be {expected}, got {value!r}")


def _where(dotted: str, sources: dict[str, str]) -> str:
    key = dotted.split("[")[0]
    while key:
        if key in sources:
            return f" (set in {sources[key]})"
        key = key.rpartition(".")[0]
    below = [src for k, src in sources.items() if k.startswith(dotted + ".")]
    return f" (set in {below[0]})" if below else ""


def _nearest(prefix: str, key: str, names: list[str]) -> str:
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {prefix + close[0]!r}?"
    elsewhere = [k for k in schema_keys() if k.rsplit(".", 1)[-1] == key]
    if elsewhere:
        return f"; did you mean {elsewhere[0]!r}?"
    close = difflib.get_close_matches(prefix + key, schema_keys(), n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; valid keys here: {', '.join(prefix + n for n in names)}"


def schema_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every dotted key the schema knows, e.g. 'optim.lr'."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        keys.append(prefix + f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            keys.extend(schema_keys(hints[f.name], prefix + f.name + "."))
    return keys


# ------------------------------------------------------------------------------------ value checks


def check_values(cfg: Config, sources: dict[str, str] | None = None) -> None:
    """Ranges and cross-field rules that types cannot express, checked at load time.

    Builders deeper down check the same things, but only after the process group is up, as a
    traceback on every rank; here a bad value fails in a second, naming its key and its file.
    """
    sources = sources or {}
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
    heads = mae.decoder_heads or max(1, dim // 64)
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
    if train.peak_tflops is not None:
        _require(train.peak_tflops > 0, "train.peak_tflops", sources, "positive or null", train.peak_tflops)
