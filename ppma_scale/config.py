"""Typed run configuration: YAML files with `base:` inheritance and `key.sub=value` overrides.

Every value a run reads is declared here, once, with its type and default. Loading validates the
whole tree before any work starts: an unknown key, a wrong type or a missing required value raises
`ConfigError` naming the key, the file (or command line) it came from, and the nearest valid key.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from .config_files import ConfigError, DuplicateKeyError, _deep_merge, _dotted_keys, load_yaml, read_with_bases

MISSING_VALUE = "???"  # a YAML value that must be filled in by a child config or the command line


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
    compile: bool = False  # torch.compile every encoder/decoder block (1.13x on an H100, BENCHMARKS.md); not with ZeRO-3
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
    return build_config(*read_config(path, overrides))


def read_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[dict, dict[str, str]]:
    """The merged, not yet validated config (`base:` files, then overrides) and where each dotted key
    was set; split from `load_config` so a resume can fill in keys left `???` before validation."""
    raw, sources = read_with_bases(Path(path))
    apply_overrides(raw, sources, overrides)
    return raw, sources


def apply_overrides(raw: dict, sources: dict[str, str], overrides: list[str] | tuple[str, ...]) -> None:
    """Set each `key.sub=value` in the nested dict `raw` (in place), recorded as given on the command line."""
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(raw, key, value, sources, COMMAND_LINE)


def missing_keys(raw: dict, prefix: str = "") -> list[str]:
    """Dotted keys of `raw` still left `???` (sections only; list entries are not searched)."""
    found = []
    for key, value in raw.items():
        if isinstance(value, dict):
            found += missing_keys(value, f"{prefix}{key}.")
        elif value == MISSING_VALUE:
            found.append(f"{prefix}{key}")
    return found


def fill_missing(raw: dict, sources: dict[str, str], saved: dict, source: str) -> list[str]:
    """Set each key `raw` leaves `???` to its value in `saved` (a resolved config) where that has one;
    the keys filled, each recorded as set in `source`."""
    filled = []
    for dotted in missing_keys(raw):
        value: Any = saved
        for part in dotted.split("."):
            value = value.get(part, MISSING_VALUE) if isinstance(value, dict) else MISSING_VALUE
        if value != MISSING_VALUE:
            _set_dotted(raw, dotted, value, sources, source)
            filled.append(dotted)
    return filled


def build_config(raw: dict, sources: dict[str, str] | None = None) -> Config:
    """Validate a plain nested dict against the schema (sources map dotted keys to their file)."""
    from .config_checks import check_values  # ranges and cross-key rules (a module of their own)
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
        value = load_yaml(text) if text.strip() else ""
    except DuplicateKeyError as exc:
        raise ConfigError(f"override {item!r}: {exc}") from None
    except yaml.YAMLError as exc:
        if text.lstrip().startswith(("[", "{")):  # meant as a list or mapping: as a string it would mislead later
            problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
            mark = getattr(exc, "problem_mark", None)
            at = f" at character {mark.column + 1} of the value" if mark is not None and mark.line == 0 else ""
            raise ConfigError(f"override {key}={text}: the value is not valid YAML ({problem}{at}); check its "
                              "brackets, and quote the whole override for the shell") from None
        value = text  # plain text YAML cannot read (e.g. `a: b: c`) is meant as that text
    return key, value


_KEY_PART = re.compile(r"([^\[\]]+)((?:\[\d+\])*)")


def _set_dotted(raw: dict, key: str, value: Any, sources: dict[str, str], source: str) -> None:
    """Set `key` (`a.b`, or `a.b[0].c` in an existing list entry) in `raw`. A mapping given where a
    mapping is already merges into it, as a `base:` child's section does: only the keys it names change."""
    steps: list[str | int] = []  # section names and list indices, in order
    for part in key.split("."):
        match = _KEY_PART.fullmatch(part)
        if match is None:
            raise ConfigError(f"override {key}: {part!r} is not a key or key[index] (e.g. data.train[0].weight)")
        steps.append(match.group(1))
        steps += [int(i) for i in re.findall(r"\d+", match.group(2))]
    node: Any = raw
    path = ""  # the dotted name of `node`, for messages
    for depth, step in enumerate(steps):
        last = depth == len(steps) - 1
        name = f"{path}[{step}]" if isinstance(step, int) else f"{path}.{step}".lstrip(".")
        if isinstance(step, int):
            if not isinstance(node, list):
                raise ConfigError(f"override {key}: {path} is not a list, it is {node!r}; give the whole list, "
                                  f"e.g. {_whole_list_hint(path, key, value)}")
            if not 0 <= step < len(node):
                have = f"{len(node)} entr{'y' if len(node) == 1 else 'ies'}" if node else "none"
                raise ConfigError(f"override {key}: {path} has no entry {step} (it has {have}); give the "
                                  f"whole list, e.g. {_whole_list_hint(path, key, value)}")
            if last:
                break
            if not isinstance(node[step], dict) and isinstance(steps[depth + 1], str):
                raise ConfigError(f"override {key}: {name} is {node[step]!r}, not a mapping; give the whole "
                                  f"list, e.g. {_whole_list_hint(path, key, value)}")
        else:
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {path} is a value, not a section")
            if last:
                break
            following = steps[depth + 1]
            child = node.get(step)
            if isinstance(child, list) and isinstance(following, str):
                indexed = key.replace(f"{name}.{following}", f"{name}[{following}]", 1)
                how = f"set one entry's key as {indexed}={_shown(value)}, or " if following.isdigit() else ""
                raise ConfigError(f"override {key}: {name} is a list: {how}give the whole list, e.g. "
                                  f"{_whole_list_hint(name, key, value)}")
            if step not in node:
                if isinstance(following, int):
                    raise ConfigError(f"override {key}: {name} has no entry {following} (it has none); give the "
                                      f"whole list, e.g. {_whole_list_hint(name, key, value)}")
                node[step] = {}
        node, path = node[step], name
    step = steps[-1]
    here = node[step] if isinstance(step, int) else node.get(step)
    if isinstance(value, dict) and isinstance(here, dict):
        _deep_merge(here, value)  # a section given as a mapping changes only the keys it names
        for sub in _dotted_keys(value):
            sources[f"{key}.{sub}"] = source
        return
    node[step] = value
    for old in [k for k in sources if k.startswith((key + ".", key + "["))]:
        del sources[old]  # the file's (or an earlier override's) parts of a value now replaced whole
    sources[key] = source


def _shown(value: Any) -> str:
    """A scalar override value as it would be typed; `...` for anything else."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return str(value) if isinstance(value, (int, float, str)) and str(value) else "..."


def _whole_list_hint(path: str, key: str, value: Any) -> str:
    """`data.train=[{manifest: ..., weight: 2}, ...]` for an override `data.train[0].weight=2`."""
    sub = key[len(path):].lstrip("0123456789[].") if key.startswith(path) else ""
    shown = _shown(value)
    if not sub:
        return f"{path}=[{shown}, ...]"
    entry = f"manifest: ..., {sub}: {shown}" if path in ("data.train", "data.val") and sub != "manifest" \
        else f"{sub}: {shown}"
    return f"{path}=[{{{entry}}}, ...]"


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
    key = dotted  # `data.train[0].weight`, then `data.train[0]`, `data.train`, `data`
    while key:
        if key in sources:
            return f" (set in {sources[key]})"
        key = key[:key.rindex("[")] if key.endswith("]") else key.rpartition(".")[0]
    below = [src for k, src in sources.items() if k.startswith((dotted + ".", dotted + "["))]
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
