"""Trunk weights from wherever a user keeps them: a run directory, a checkpoint, or a weights file.

Stage 2 starts from stage 1, downstream runs from stage 2, averaging blends several of them: each
names its source the same way (`model.init`, `model.average`, the average CLI). A run directory
(or its checkpoints/ or one step_N folder) is read through DeepSpeed's consolidation (any ZeRO
stage); a file or Hugging Face folder through `models.convert`. The result is always a trunk state
dict in our key names — decoder, mask token and heads are dropped, and what was dropped is reported.
"""
from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

StateDict = dict[str, torch.Tensor]


@dataclass
class TrunkSource:
    """A trunk read from `path`: weights in our key names plus what the reading did."""

    path: str
    state: StateDict
    layout: str
    dropped: list[str] = field(default_factory=list)  # keys of the file that are not trunk weights

    def describe(self) -> str:
        parts = [f"{self.path} ({self.layout} layout, {len(self.state)} trunk tensors)"]
        if self.dropped:
            groups = sorted({key.split(".")[0] for key in self.dropped})
            parts.append(f"dropped {len(self.dropped)} non-trunk tensors ({', '.join(groups)})")
        return "; ".join(parts)


def is_run_or_checkpoint(path: Path) -> bool:
    """A run directory, its checkpoints/ folder or one step_N folder (read through a ZeRO merge)."""
    return path.is_dir() and any((path / name).exists() for name in ("checkpoints", "latest", "ppma_complete.json"))


def check_source(key: str, path: str | Path) -> None:
    """Cheap check, before any rank starts, that the weights `key` names exist and, for a weights
    file or Hugging Face folder, that its files are weights files (their headers, not their tensors,
    are read). Errors name `key`."""
    from ..models.convert import check_weights_file, weights_files
    location = Path(path).expanduser()
    if not location.exists():
        raise FileNotFoundError(f"{key}: {path} does not exist (expected a run directory, a checkpoint "
                                "folder, a .safetensors/.pt weights file or a Hugging Face model folder)")
    if is_run_or_checkpoint(location):
        return
    try:
        for file in weights_files(location):
            check_weights_file(file)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{key}: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None


def read_state_dict(path: str | Path) -> StateDict:
    """All tensors stored at `path` (run dir / checkpoints dir / step_N dir / weights file / HF folder)."""
    from ..models.convert import load_weights_file
    location = Path(path).expanduser()
    if not location.exists():
        raise FileNotFoundError(f"pretrained weights {path} do not exist (expected a run directory, a "
                                "checkpoint folder, a .safetensors/.pt file or a Hugging Face model folder)")
    if is_run_or_checkpoint(location):
        return _merged(location, as_trunk=False)
    return load_weights_file(location)


def _merged(location: Path, as_trunk: bool) -> StateDict:
    """A run's or checkpoint's weights merged from its ZeRO partitions. `as_trunk`: an adaptive
    averaging run's (alpha and a head) with its blend rebuilt as `encoder.*`, for readers of trunks."""
    from ..export import consolidated_state_dict
    from .blend_export import checkpoint_blend, is_blend
    from .checkpoint import find_checkpoint
    ckpt = find_checkpoint(location, what="pretrained weights")
    state = consolidated_state_dict(ckpt)
    return checkpoint_blend(ckpt, state) if as_trunk and is_blend(state) else state


def read_trunk(path: str | Path) -> TrunkSource:
    """The trunk weights at `path` in our key names (layout detected from the keys)."""
    from ..models.convert import to_trunk_state_dict
    location = Path(path).expanduser()
    full = _merged(location, as_trunk=True) if is_run_or_checkpoint(location) else read_state_dict(path)
    try:
        trunk, layout = to_trunk_state_dict(full)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if layout == "hf":  # renamed and q/k/v merged on the way in: every videomae.* tensor is the trunk's
        dropped = sorted(k for k in full if not k.removeprefix("module.").startswith("videomae."))
    else:
        kept = {f"encoder.{k}" for k in trunk} | set(trunk) | {f"trunk.{k}" for k in trunk}
        dropped = sorted(k for k in full if k not in kept)
    return TrunkSource(path=str(path), state=trunk, layout=layout, dropped=dropped)


def source_token_grid(path: str | Path, trunk: StateDict) -> tuple[int, int, int] | None:
    """The token grid the weights at `path` were trained at, where it is recorded: a run's or
    checkpoint's own config, or a weights file's metadata. A learned position table stores only
    its token count, and guessing the grid from that can be wrong when frames and size both differ."""
    from ..models.convert import config_clip_geometry, recorded_token_grid
    from ..models.pos_import import trunk_token_grid
    location = Path(path).expanduser()
    try:
        if is_run_or_checkpoint(location):
            from .checkpoint import MARKER, find_checkpoint
            from .resume_guard import saved_config
            ckpt = find_checkpoint(location, what="pretrained weights", deep=False)  # its config only
            config, _ = saved_config(ckpt, json.loads((ckpt.path / MARKER).read_text()))
            return trunk_token_grid(trunk, config_clip_geometry(config))
        return recorded_token_grid(location, trunk)
    except (OSError, ValueError):  # unreadable records: fall back to what the table's length allows
        return None


@contextmanager
def merged_once(path: str | Path, dist=None, scratch_dir: str | Path | None = None,
                as_trunk: bool = False) -> Iterator[str | Path]:
    """What every rank of a job reads for the weights at `path`. A run or checkpoint folder is merged
    from its ZeRO partitions, which reads every source rank's optimizer files (the fp32 weights and
    both Adam moments): in a multi-rank job rank 0 merges once into `scratch_dir` (this run's folder,
    which every node sees), every rank reads that file, and it is removed once all have. Anything
    else, or a single process, reads `path` itself. A failed merge raises ValueError on every rank.
    `as_trunk`: for a reader of trunks (see `_merged`)."""
    location = Path(path).expanduser()
    if dist is None or dist.world_size == 1 or scratch_dir is None or not is_run_or_checkpoint(location):
        yield path
        return
    from . import dist as distmod

    def merge() -> str:
        from ..models.convert import save_safetensors
        from .checkpoint import find_checkpoint
        ckpt = find_checkpoint(location, what="pretrained weights")
        digest = hashlib.sha1(str(ckpt.path.resolve()).encode()).hexdigest()[:12]
        target = Path(scratch_dir) / f".merged-{ckpt.tag}-{digest}.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        return str(save_safetensors(_merged(ckpt.path, as_trunk), target))

    value = distmod.computed_on_rank0(merge, f"merging the ZeRO partitions of {location}")
    try:
        yield value
    finally:
        distmod.barrier()  # every rank has read it
        if dist.is_main:
            Path(value).unlink(missing_ok=True)


def init_trunk(encoder: nn.Module, path: str | Path, dist=None, scratch_dir: str | Path | None = None
               ) -> tuple[TrunkSource, dict]:
    """Load the trunk at `path` into `encoder` (position tables adapted, a final norm dropped); a
    multi-rank job (`dist`) reads a run's checkpoint through `merged_once`.

    Returns the source and `models.convert.load_trunk_weights`'s report.
    """
    from ..models.convert import load_trunk_weights
    with merged_once(path, dist, scratch_dir, as_trunk=True) as readable:
        source = read_trunk(readable)
    source.path = str(path)
    try:
        report = load_trunk_weights(encoder, source.state, source.layout, source_token_grid(path, source.state))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return source, report


def adapted_trunk_state(template_factory, path: str | Path, dist=None, scratch_dir: str | Path | None = None
                        ) -> tuple[StateDict, TrunkSource]:
    """The trunk at `path` loaded into a fresh encoder from `template_factory()`, as that encoder's
    state dict — so averaged sources agree with the model in shapes, position tables and norms."""
    encoder = template_factory()
    source, _ = init_trunk(encoder, path, dist, scratch_dir)
    state = {name: tensor.detach().clone() for name, tensor in encoder.state_dict().items()}
    del encoder
    return state, source
