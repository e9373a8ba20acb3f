"""Checks made before a run continues from a checkpoint, before anything is written: on every rank
before the process group starts (the checkpoint's files only listed), then on rank 0 with its files
opened (preflight.checked_resume_plan), whose verdict every rank follows.

A resume must continue *this* run: the checkpoint is one of the output directory's own (or that
directory holds none yet), its files are intact, it was trained with the same recipe, and it is
not already past the run's end. Config keys that only say where files are or how often to log or
save may change (the changes are reported); keys that define what is trained are refused unless
`--allow-config-change`; keys that change the shapes, task or precision of what is stored are
refused always, before DeepSpeed would fail on them with a raw traceback.

`--resume auto` (unattended restarts) falls back past damaged checkpoints to the newest intact
one; the damaged ones are renamed aside (never deleted) and reported loudly. An explicit
`--resume PATH` naming a damaged checkpoint is an error naming the file.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import Config, config_to_dict
from .checkpoint import (MARKER, Checkpoint, DamagedCheckpoint, find_checkpoint, latest_checkpoint,
                         read_checkpoint, read_marker, tag_dirs, verify_checkpoint)

ALLOW_FLAG = "--allow-config-change"
RESUME_OFF = ("off", "none", "no", "false")
_RESUMED_CONFIG = re.compile(r"^config\.resume-step_(\d+)\.yaml$")

# May change on resume (logged): where inputs are, how the run is watched, how long it is, how it is sharded.
OPERATIONAL = frozenset({
    "run.output", "run.name", "model.init", "model.compile", "model.act_checkpoint_every",
    "data.train.manifest", "data.train.shards", "data.train.name", "data.val", "data.val.manifest",
    "data.val.shards", "data.val.name", "data.val.weight", "data.classes", "data.allow_pipe", "data.decoder",
    "data.num_workers", "data.prefetch", "data.test_clips", "data.test_crops", "data.max_decode_failures",
    "train.max_steps", "train.epochs", "train.zero_stage", "train.offload", "train.offload_params",
    "train.dist_timeout_s", "train.log_every", "train.ckpt_every", "train.keep_last", "train.eval_every",
    "train.max_nonfinite", "train.tensorboard", "train.peak_tflops",
})
# Change what the checkpoint stores (parameter shapes, the task, DeepSpeed's precision-specific files):
# it cannot be loaded at all, so these are refused even with --allow-config-change.
INCOMPATIBLE = frozenset({
    "run.task", "model.size", "model.embed_dim", "model.depth", "model.num_heads", "model.mlp_ratio",
    "model.patch_size", "model.tubelet", "model.qkv_bias", "model.layer_scale", "model.pos_embed",
    "model.average_mode", "mae.decoder_dim", "mae.decoder_depth", "mae.decoder_heads", "data.num_frames",
    "data.img_size", "train.precision",
})
# Everything else defines the run (optimizer, schedule, augmentation, masking, batch geometry, seed, ...).

@dataclass(frozen=True)
class ConfigChange:
    key: str
    old: Any
    new: Any
    kind: str  # "operational", "defining" or "incompatible"

    def __str__(self) -> str:
        return f"{self.key}: {_show(self.old)} -> {_show(self.new)}"


@dataclass
class ResumePlan:
    """Where a run continues from, and what to do about the run directory before it does."""

    checkpoint: Checkpoint | None = None
    damaged: list[tuple[Path, str]] = field(default_factory=list)  # newer tags of this run that failed the checks
    abandoned: list[Path] = field(default_factory=list)  # this run's complete tags newer than the one resumed
    changes: list[ConfigChange] = field(default_factory=list)  # accepted config changes, to report
    meta: dict[str, Any] = field(default_factory=dict)  # the checkpoint's marker (what its task recorded)
    checked_files: bool = True  # the checkpoint's weight files were opened (not only listed): see plan_resume


def _show(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def marked_tags(root: Path) -> list[tuple[int, Path]]:
    """(step, path) of the tags under `root` that carry a marker (complete, or claiming to be)."""
    return [(s, p) for s, p in tag_dirs(root) if (p / MARKER).is_file()]


def newest_intact(root: Path, deep: bool = True) -> tuple[Checkpoint | None, list[tuple[Path, str]]]:
    """The newest marked `step_N` tag that passes the file checks (`deep`: see checkpoint_problems),
    plus the (tag, reason) of each damaged one tried before it. `latest` is not consulted: the marker is what says a tag is complete,
    and a kill between writing it and moving `latest` leaves `latest` naming an older tag. Tags set
    aside (`step_N.<reason>`) are not `step_N` names, so they are never candidates."""
    candidates = [p for _, p in reversed(marked_tags(root))]
    damaged = []
    for path in candidates:
        try:
            ckpt = read_checkpoint(path)
            verify_checkpoint(ckpt, deep)
            return ckpt, damaged
        except DamagedCheckpoint as exc:
            damaged.append((path, str(exc)))
    return None, damaged


def saved_config(ckpt: Checkpoint, meta: dict[str, Any]) -> tuple[dict | None, str]:
    """The resolved config that trained `ckpt` and where it was read: the copy in its marker `meta`,
    else the run directory's config file in force when it was saved (config.yaml or a later
    config.resume-*)."""
    if isinstance(meta.get("config"), dict):
        return meta["config"], str(ckpt.path / MARKER)
    run_dir = ckpt.root.parent
    resumed = sorted((int(m.group(1)), p) for p in run_dir.glob("config.resume-*.yaml")
                     if (m := _RESUMED_CONFIG.match(p.name)) and int(m.group(1)) < ckpt.step)
    path = resumed[-1][1] if resumed else run_dir / "config.yaml"
    if not path.is_file():
        return None, str(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} (the config of checkpoint {ckpt.path}) is not valid YAML: {exc}") from None
    return (data if isinstance(data, dict) else None), str(path)


def resumed_run_config(run_dir: str | Path | None, resume: str) -> tuple[dict | None, str]:
    """The resolved config of the checkpoint `--resume` would continue from, and where it was read;
    read before the new config is validated, so keys it leaves `???` (say align's `model.init`, which
    a resume does not use) can come from the run itself. (None, "") when there is no such checkpoint
    or it cannot be read: `plan_resume` names those problems later."""
    if resume in RESUME_OFF or (resume == "auto" and run_dir is None):
        return None, ""
    location = Path(run_dir) / "checkpoints" if resume == "auto" else Path(resume).expanduser()
    try:
        ckpt = read_checkpoint(location) or latest_checkpoint(location) or latest_checkpoint(location / "checkpoints")
        return saved_config(ckpt, read_marker(ckpt.path) or {}) if ckpt is not None else (None, "")
    except (DamagedCheckpoint, ValueError, OSError):
        return None, ""


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, dotted + "."))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            out[dotted + "#"] = value  # the whole list, compared when the number of entries differs
            for i, item in enumerate(value):
                out.update(_flatten(item, f"{dotted}[{i}]."))
        else:
            out[dotted] = value
    return out


def classify_key(key: str) -> str:
    """'operational', 'defining' or 'incompatible' for a dotted key (list indices ignored)."""
    plain = re.sub(r"\[\d+\]", "", key)
    if plain in INCOMPATIBLE:
        return "incompatible"
    return "operational" if plain in OPERATIONAL else "defining"


SHAPE_KEYS = ("embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size")  # model.* a size row fills in


def _shape_spelled_out(config: dict) -> dict:
    """`config` with the trunk's shape resolved from its size row, so `model.size=b` and `model.size=b
    model.embed_dim=768` compare equal (both build the same trunk); left as is if it does not resolve."""
    from ..models.sizes import resolve_size
    model = config.get("model") or {}
    try:
        size = resolve_size(model["size"], **{k: model.get(k) for k in SHAPE_KEYS})
    except (KeyError, TypeError, ValueError):
        return config
    return {**config, "model": {**model, **{k: getattr(size, k) for k in SHAPE_KEYS}}}


def compare_configs(old: dict, new: dict) -> list[ConfigChange]:
    """The keys whose values differ between two resolved configs (keys only one side knows are skipped:
    a schema that gained a key since the checkpoint was saved is not a change of recipe)."""
    before, after = _flatten(_shape_spelled_out(old)), _flatten(_shape_spelled_out(new))
    changes = []
    for key in after:
        if key not in before or before[key] == after[key]:
            continue
        if key.endswith("#"):
            if len(before[key]) != len(after[key]):  # another number of datasets: report the lists
                name = key[:-1]
                changes.append(ConfigChange(name, before[key], after[key], classify_key(name)))
            continue
        list_key = re.sub(r"\[\d+\]\..*$", "#", key)
        if list_key != key and list_key in before and len(before[list_key]) != len(after[list_key]):
            continue  # covered by the whole-list change above
        kind = classify_key(key)
        if key in CACHED_VIEW_KEYS and _caches_features(after):
            kind = "defining"  # the views the probe's training features are computed from
        if key == "model.average" and len(before[key] or []) != len(after[key] or []):
            kind = "incompatible"  # alpha has one logit per trunk: the saved one has another shape
        if key == "optim.layer_decay" and (before[key] is None) != (after[key] is None):
            kind = "incompatible"  # one AdamW group per layer or not: the saved optimizer state has the other shape
        changes.append(ConfigChange(key, before[key], after[key], kind))
    return changes


CACHED_VIEW_KEYS = ("data.test_clips", "data.test_crops")


def _caches_features(flat: dict[str, Any]) -> bool:
    """A linear probe that caches its training features (a blended trunk does not: see LinearProbeTask)."""
    return flat.get("run.task") == "linprobe" and not flat.get("model.average")


def past_end_message(ckpt: Checkpoint, total: int, how: str) -> str:
    return (f"{ckpt.path} is at step {ckpt.step}, already past the end of this run ({how}): nothing can be "
            f"trained and nothing was written. To train on, set train.max_steps above {ckpt.step}; to use its "
            f"weights, export them (python -m ppma_scale.export {ckpt.path}); for a shorter schedule start a "
            "new run with another --output")


def _check_length(ckpt: Checkpoint, cfg: Config, meta: dict) -> None:
    """Refuse a checkpoint already past the run's end (the trainer checks the exact length again)."""
    train = cfg.train
    if train.max_steps is not None:
        total, how = train.max_steps, f"train.max_steps={train.max_steps}"
    else:
        epoch = float(meta.get("epoch") or 0)
        if epoch <= 0:
            return
        # as the trainer counts (steps per epoch need not be whole); it checks again once the stream
        # is built, where another number of ranks may have changed the steps per epoch
        total = math.ceil(round(train.epochs * ckpt.step / epoch, 6))
        how = f"train.epochs={train.epochs} = {total} steps"
    if ckpt.step > total:
        raise ValueError(past_end_message(ckpt, total, how))


def _refuse_changes(ckpt: Checkpoint, source: str, changes: list[ConfigChange], allow: bool) -> None:
    incompatible = [c for c in changes if c.kind == "incompatible"]
    defining = [c for c in changes if c.kind == "defining"]
    if incompatible:
        listed = "\n  ".join(str(c) for c in incompatible + defining)
        raise ValueError(
            f"cannot resume {ckpt.path}: it was trained with another model, task, precision or optimizer "
            f"grouping ({source}):\n"
            f"  {listed}\nits saved state cannot be loaded into this config (not even with {ALLOW_FLAG}). "
            "Keep the old values to continue that run, or start a new run with another --output (a "
            f"classification run can start from its weights with model.init={ckpt.path})")
    if defining and not allow:
        listed = "\n  ".join(str(c) for c in defining)
        raise ValueError(
            f"cannot resume {ckpt.path} with a different config; these keys define the run ({source}):\n"
            f"  {listed}\nnothing was written. To train this config, use another --output; to continue "
            f"the run with the changes anyway, add {ALLOW_FLAG} (the changes are logged and the first "
            "config.yaml is kept)")


def plan_resume(cfg: Config, run_dir: str | Path, resume: str, allow_config_change: bool = False,
                deep: bool = True) -> ResumePlan:
    """Resolve `--resume` for `run_dir` and check everything about it; ValueError (nothing written) if
    refused. `deep=False` opens none of the checkpoint's weight files (only lists them): the quick
    check every rank of a job makes before its process group exists, which rank 0 then repeats deep."""
    if resume in RESUME_OFF:
        return ResumePlan(checked_files=deep)
    own_root = Path(run_dir) / "checkpoints"
    if resume == "auto":
        ckpt, damaged = newest_intact(own_root, deep)
        if ckpt is None and damaged:
            raise DamagedCheckpoint(damaged[0][0], f"every checkpoint in {own_root} is damaged, so the run cannot "
                                    "resume and was not restarted from scratch:\n  " +
                                    "\n  ".join(reason for _, reason in damaged))
        if ckpt is None:
            return ResumePlan(checked_files=deep)
    else:
        ckpt, damaged = find_checkpoint(resume, what="--resume", deep=deep), []
        own = marked_tags(own_root)
        if own and not _same_dir(ckpt.root, own_root):
            raise ValueError(
                f"--resume {resume} is a checkpoint of another run ({ckpt.root.parent}), but --output {run_dir} "
                f"already holds checkpoints of its own (newest: step {own[-1][0]}); resuming there would overwrite "
                "them. Nothing was written. Use a new --output to continue from that checkpoint, or "
                f"--resume auto to continue {run_dir}")
    meta = read_marker(ckpt.path) or {}
    if meta.get("task") and meta["task"] != cfg.run.task:
        raise ValueError(f"cannot resume {ckpt.path}: it holds a run.task={meta['task']!r} run, and this config is "
                         f"run.task={cfg.run.task!r}. Use another --output (a classification run can start from its "
                         f"weights with model.init={ckpt.path})")
    old, source = saved_config(ckpt, meta)
    changes = compare_configs(old, config_to_dict(cfg)) if old is not None else []
    _refuse_changes(ckpt, source, changes, allow_config_change)
    _check_length(ckpt, cfg, meta)
    skip = {p for p, _ in damaged}
    abandoned = []
    if _same_dir(ckpt.root, own_root):
        abandoned = [p for s, p in marked_tags(own_root) if s > ckpt.step and p not in skip]
    return ResumePlan(checkpoint=ckpt, damaged=damaged, abandoned=abandoned, changes=changes, meta=meta,
                      checked_files=deep)
