"""Weights that travel: read public checkpoint layouts into our trunk, and load them safely.

Layouts recognised from the keys (after unwrapping `{"model": ...}`-style containers and a DDP
`module.` prefix):
- `ours`: our MAE / classifier (`encoder.*`) or a bare trunk (`blocks.*`, timm names);
- `videomae`: MCG-NJU VideoMAE v1 and OpenGVLab VideoMAE V2, pretrain (`encoder.*`, `decoder.*`)
  or fine-tune (`blocks.*`, `fc_norm`, `head`): `attn.q_bias`/`v_bias`, `gamma_1`/`gamma_2`;
- `omnivision`: OmniMAE / PPMA trunks (`trunk.*`, `patch_embed.proj.1`, `layer_scale_gamma1`);
- `hf`: Hugging Face transformers VideoMAE (`videomae.encoder.layer.*`, old `q_bias` or new
  `query.bias` keys).
Everything else (decoders, heads, mask tokens) is dropped and listed. Reading never runs pickled
code: safetensors, or `torch.load(weights_only=True)` with only `argparse.Namespace` allowed
(VideoMAE checkpoints store their arguments that way).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import uuid
import zipfile
from pathlib import Path
from typing import Optional

import torch

from ppma_scale.models.hf_export import export_hf, hf_to_trunk  # noqa: F401  (re-exported)
from ppma_scale.models.pos_import import (adapt_pos, fits_table, follow_table_kind, pos_embed_kind,
                                          trunk_token_grid)
from ppma_scale.models.vit import VideoViT

StateDict = dict[str, torch.Tensor]
LAYOUTS = ("ours", "videomae", "omnivision", "hf")
CONTAINER_KEYS = ("model", "module", "state_dict", "model_state", "model_state_dict")
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format is a zip archive


# ------------------------------------------------------------------------------------- reading


def load_weights_file(path: str | Path) -> StateDict:
    """Tensors of a checkpoint file (or a Hugging Face model directory), unwrapped to a flat dict."""
    merged: StateDict = {}
    for file in weights_files(path):
        if check_weights_file(file) == "safetensors":
            merged.update(_load_safetensors(file))
        else:
            merged.update(unwrap_state_dict(_torch_load(file), str(file)))
    return merged


def _recorded_metadata(path: str | Path) -> dict[str, str]:
    """The safetensors metadata of a single weights file (`ppma-export` writes the run's config and
    class names there); empty for other files."""
    files = weights_files(path)
    if len(files) != 1 or check_weights_file(files[0]) != "safetensors":
        return {}
    from safetensors import safe_open
    with safe_open(str(files[0]), framework="pt") as handle:
        return dict(handle.metadata() or {})


def recorded_class_names(path: str | Path) -> list[str] | None:
    """The class names a weights file carries (`ppma-export` of a classification run writes them in
    its safetensors metadata, logit order); None when it records none."""
    text = _recorded_metadata(path).get("classes")
    return json.loads(text) if text else None


def recorded_clip_geometry(path: str | Path) -> tuple[int, int] | None:
    """(num_frames, img_size) of the run a weights file was exported from (its recorded config's
    data section); None when it records none."""
    import yaml
    text = _recorded_metadata(path).get("config")
    try:
        return config_clip_geometry(yaml.safe_load(text) if text else None)
    except yaml.YAMLError:
        return None


def config_clip_geometry(config: dict | None) -> tuple[int, int] | None:
    """(data.num_frames, data.img_size) of a resolved run config; None if it lacks them."""
    try:
        data = (config or {}).get("data") or {}
        return int(data["num_frames"]), int(data["img_size"])
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def token_grid_metadata(grid: tuple[int, ...]) -> dict[str, str]:
    """The safetensors metadata entry that records `grid`, as `recorded_token_grid` reads it."""
    return {"token_grid": ",".join(map(str, grid))}


def recorded_token_grid(path: str | Path, trunk: StateDict) -> Optional[tuple[int, int, int]]:
    """The token grid a weights file records (`token_grid`, or its exported run's clip size)."""
    text = _recorded_metadata(path).get("token_grid", "")
    grid = tuple(int(v) for v in text.split(",")) if re.fullmatch(r"\d+,\d+,\d+", text) else ()
    return fits_table(trunk, grid) or trunk_token_grid(trunk, recorded_clip_geometry(path))


def weights_files(path: str | Path) -> list[Path]:
    """The files `load_weights_file` reads for `path`: the file itself, or a Hugging Face folder's
    model.safetensors / pytorch_model.bin / index shards."""
    path = Path(path).expanduser()
    if path.is_dir():
        index = path / "model.safetensors.index.json"
        if index.is_file():
            return [path / shard for shard in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        found = [c for c in (path / "model.safetensors", path / "pytorch_model.bin") if c.is_file()]
        if not found:
            raise FileNotFoundError(f"{path} is a directory without model.safetensors or pytorch_model.bin")
        return found[:1]
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    return [path]


def check_weights_file(path: str | Path) -> str:
    """'safetensors' or 'torch': the format of the weights file `path`, from its first bytes (and a
    safetensors header); a ValueError that says what is wrong with a file that is neither."""
    path = Path(path)
    with path.open("rb") as handle:
        head = handle.read(9)
    if not head:
        raise ValueError(f"{path} is empty (0 bytes): not a weights file")
    if path.suffix == ".safetensors":
        _safetensors_header(path)
        return "safetensors"
    if head.startswith(ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            raise ValueError(f"{path} is a truncated or damaged PyTorch checkpoint: it starts as a zip archive "
                             "(torch.save) but has no readable end; was the save or the copy cut short?")
        return "torch"
    if head.startswith(b"\x80"):  # a pickle, protocol 2+: torch.save's legacy format
        return "torch"
    if head[8:9] == b"{":  # 8-byte header length, then the JSON header: safetensors under another name
        _safetensors_header(path)
        return "safetensors"
    raise ValueError(f"{path} is not a weights file: neither safetensors, nor a PyTorch zip archive, nor a pickle "
                     f"(it starts with {head!r})")


def _safetensors_header(path: Path) -> None:
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except SafetensorError as exc:
        raise ValueError(f"{path} is not a readable safetensors file ({exc}); is it truncated, or another "
                         "format with a .safetensors name?") from None


def _load_safetensors(path: Path) -> StateDict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except SafetensorError as exc:
        raise ValueError(f"{path} is a damaged safetensors file ({exc})") from None


def _torch_load(path: Path) -> object:
    """torch.load without running pickled code; a damaged file and a file that needs code are told apart."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        needs_code = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if needs_code is None:
            raise ValueError(f"{path} is a damaged PyTorch checkpoint: {_first_line(exc)}") from None
        raise ValueError(f"{path} cannot be read without running pickled code (it stores a "
                         f"{needs_code.group(1)} object); re-save its state dict with torch.save(state_dict) "
                         "or as safetensors") from None
    except (RuntimeError, EOFError, ValueError, KeyError) as exc:
        raise ValueError(f"{path} is a truncated or damaged PyTorch checkpoint: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def save_safetensors(tensors: StateDict, path: str | Path, metadata: Optional[dict[str, str]] = None) -> Path:
    """Write `tensors` to `path` atomically: a temporary file in the same folder, renamed over `path`
    once complete, so a failed or interrupted write never leaves a half-written (or emptied) file."""
    from safetensors.torch import save_file
    from ppma_scale.atomic import give_plain_mode
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        save_file(tensors, str(temp), metadata=metadata)
        give_plain_mode(temp)  # safetensors writes through mkstemp: 0o600, unreadable to colleagues
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path


def unwrap_state_dict(obj: object, where: str = "checkpoint") -> StateDict:
    """Descend through `{"model": ...}`-style containers to the dict of tensors; drop `module.`."""
    while isinstance(obj, dict) and not _is_tensor_dict(obj):
        inner = next((obj[k] for k in CONTAINER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            raise ValueError(f"{where}: no state dict found; top-level keys are {sorted(obj)[:10]}")
        obj = inner
    if not isinstance(obj, dict):
        raise ValueError(f"{where} holds a {type(obj).__name__}, not a state dict")
    return strip_ddp_prefix({k: v for k, v in obj.items() if isinstance(v, torch.Tensor)})


def strip_ddp_prefix(sd: StateDict) -> StateDict:
    """Drop the `module.` prefix DistributedDataParallel / DeepSpeed wrappers add to every key."""
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _is_tensor_dict(obj: dict) -> bool:
    values = list(obj.values())
    return bool(values) and sum(isinstance(v, torch.Tensor) for v in values) >= len(values) / 2


# ------------------------------------------------------------------------------------ layouts


def detect_layout(sd: StateDict) -> str:
    """Name of the layout of `sd` (one of LAYOUTS); ValueError listing sample keys otherwise."""
    keys = list(sd)
    if any(k.startswith(("videomae.", "embeddings.patch_embeddings")) or ".layer." in k and "attention" in k
           for k in keys):
        return "hf"
    if any(k.startswith("trunk.") for k in keys):
        return "omnivision"
    if any(re.search(r"(^|\.)blocks\.\d+\.", k) for k in keys):
        videomae_marks = ("attn.q_bias", "gamma_1", "encoder_to_decoder.weight", "fc_norm.weight", "head.weight")
        return "videomae" if any(k.endswith(videomae_marks) for k in keys) else "ours"
    raise ValueError(f"unrecognised checkpoint layout (known: {', '.join(LAYOUTS)}); first keys: {keys[:6]}")


def to_trunk_state_dict(sd: StateDict) -> tuple[StateDict, str]:
    """(trunk state dict in our key names, layout name) from any recognised layout."""
    sd = strip_ddp_prefix(sd)
    layout = detect_layout(sd)
    if layout == "hf":
        try:
            return _video_trunk(hf_to_trunk(sd)), layout
        except (KeyError, ValueError) as exc:  # e.g. an image ViT: another prefix, no tubelet embedding
            raise ValueError(f"not a transformers VideoMAE state dict ({exc}); first keys: {list(sd)[:4]}") from None
    if layout == "omnivision":
        if "trunk.cls_token" in sd:
            raise ValueError("this OmniMAE/PPMA trunk uses a class token; VideoViT has none")
        sd = {k[len("trunk."):]: v for k, v in sd.items()
              if k.startswith("trunk.") and not k.startswith(("trunk.decoder.", "trunk.mask_token"))}
    elif any(k.startswith("encoder.blocks.") for k in sd):  # an MAE (ours or VideoMAE pretrain)
        sd = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    return _video_trunk(_timm_names(sd)), layout


def _video_trunk(trunk: StateDict) -> StateDict:
    """`trunk`, if its patch embedding is a video (tubelet) one; ValueError naming an image model's."""
    weight = trunk.get("patch_embed.proj.weight")
    if weight is None:
        raise ValueError("the checkpoint has no patch embedding (patch_embed.proj.weight)")
    if weight.ndim != 5:
        raise ValueError(f"the patch embedding has shape {tuple(weight.shape)}: a 2-D (image) ViT, not a video "
                         "one with tubelet embeddings (out, channels, frames, height, width)")
    return trunk


def _timm_names(sd: StateDict) -> StateDict:
    """Map VideoMAE / omnivision block names to timm's; keep trunk keys only."""
    out: StateDict = {}
    for key, value in sd.items():
        key = key.replace("patch_embed.proj.1.", "patch_embed.proj.")
        block = re.match(r"blocks\.(\d+)\.(.+)$", key)
        if block:
            i, rest = block.groups()
            if rest in ("attn.q_bias", "attn.v_bias"):
                continue  # folded into qkv.bias below
            if rest == "attn.scale":
                raise ValueError("cosine-attention VideoMAE V2 weights (attn.scale) are not supported")
            rest = {"gamma_1": "ls1.gamma", "gamma_2": "ls2.gamma", "layer_scale_gamma1": "ls1.gamma",
                    "layer_scale_gamma2": "ls2.gamma"}.get(rest, rest)
            if rest.endswith(".gamma"):
                value = value.reshape(-1)
            out[f"blocks.{i}.{rest}"] = value
            q_bias = sd.get(f"blocks.{i}.attn.q_bias")
            if rest == "attn.qkv.weight" and q_bias is not None:
                out[f"blocks.{i}.attn.qkv.bias"] = torch.cat(
                    [q_bias, torch.zeros_like(q_bias), sd[f"blocks.{i}.attn.v_bias"]])
        elif key.startswith(("patch_embed.proj.", "norm.")) or key == "pos_embed":
            out[key] = value
    if not any(k.startswith("blocks.") for k in out):
        raise ValueError("no transformer blocks found in the checkpoint")
    return out


# ------------------------------------------------------------------------------------ loading


def load_trunk_weights(encoder: VideoViT, trunk: StateDict, layout: str = "ours",
                       source_grid: Optional[tuple[int, int, int]] = None) -> dict:
    """Load a trunk state dict (ours keys) into `encoder`, adapting what can be adapted exactly.

    Position tables follow the model's grid: a fixed table is regenerated, a learned one resampled;
    layouts with an implicit 1-D table get it. Missing qkv biases become zeros and missing
    LayerScale gammas ones (both exact); a final norm the model does not have is dropped.
    Returns a report {"layout", "loaded", "filled", "dropped", "pos_embed"}.
    """
    target = encoder.state_dict()
    trunk = dict(trunk)
    report = {"layout": layout, "filled": [], "dropped": [], "pos_embed": "loaded"}
    _check_patch_embedding(trunk, target)  # first: a wrong patch size would look like a position-table puzzle
    kind = follow_table_kind(encoder, trunk.get("pos_embed"), layout, source_grid)
    trunk["pos_embed"], report["pos_embed"] = adapt_pos(encoder, trunk.get("pos_embed"), layout, source_grid)
    if kind:
        report["pos_embed"] += f"; model.pos_embed {kind} (the weights' kind: what other clip sizes regenerate)"
    for key in sorted(set(trunk) - set(target)):
        if key.startswith("norm.") or (key.endswith("attn.qkv.bias") and not trunk[key].any()):
            report["dropped"].append(key)
            del trunk[key]
        else:
            hint = "set model.qkv_bias: true" if key.endswith("qkv.bias") else \
                "set model.layer_scale" if ".ls" in key else "check model.size/depth"
            raise ValueError(f"checkpoint has {key!r}, which the model lacks ({hint})")
    for key in sorted(set(target) - set(trunk)):
        if key.endswith("attn.qkv.bias") or key.startswith("norm."):
            trunk[key] = target[key].new_zeros(target[key].shape) if key.endswith("bias") else target[key]
        elif key.endswith(".gamma"):
            trunk[key] = torch.ones_like(target[key])
        else:
            raise ValueError(f"checkpoint lacks {key!r}; it does not fit this model (check model.size)")
        report["filled"].append(key)
    for key, value in trunk.items():
        if tuple(value.shape) != tuple(target[key].shape):
            raise ValueError(f"{key}: checkpoint shape {tuple(value.shape)} != model shape "
                             f"{tuple(target[key].shape)} (check model.size, patch_size, tubelet)")
    encoder.load_state_dict(trunk, strict=True)
    report["loaded"] = len(trunk) - len(report["filled"])
    return report


def _check_patch_embedding(trunk: StateDict, target: StateDict) -> None:
    """ValueError naming the model keys to set when the checkpoint's width, tubelet or patch size
    differs from the model's (these cannot be adapted)."""
    key = "patch_embed.proj.weight"
    if key not in trunk or tuple(trunk[key].shape) == tuple(target[key].shape):
        return
    (width, _, tubelet, patch, _), (m_width, _, m_tubelet, m_patch, _) = trunk[key].shape, target[key].shape
    fixes = [f"{name}={theirs}" for name, theirs, ours in (("model.embed_dim", width, m_width),
                                                           ("model.tubelet", tubelet, m_tubelet),
                                                           ("model.patch_size", patch, m_patch)) if theirs != ours]
    size_hint = " (or the model.size of that width)" if width != m_width else ""
    raise ValueError(f"the checkpoint embeds {tubelet}x{patch}x{patch} tubelets into {width} channels, this model "
                     f"{m_tubelet}x{m_patch}x{m_patch} into {m_width} (these cannot be adapted): set "
                     + ", ".join(fixes) + size_hint)


def init_trunk_from(encoder: VideoViT, source: str | Path | StateDict,
                    source_grid: Optional[tuple[int, int, int]] = None) -> dict:
    """Start `encoder` from a weights file or state dict in any known layout; returns the load report."""
    state = source if isinstance(source, dict) else load_weights_file(source)
    trunk, layout = to_trunk_state_dict(state)
    return load_trunk_weights(encoder, trunk, layout, source_grid)


# ------------------------------------------------------------------------- building from weights


def linear_head_state_dict(sd: StateDict, layout: str) -> Optional[StateDict]:
    """A LayerNorm + Linear classification head in `sd` as {norm.*, fc.*}, or None."""
    names = {"ours": ("head.norm.", "head.fc."), "videomae": ("fc_norm.", "head."),
             "hf": ("fc_norm.", "classifier.")}.get(layout)
    if names is None or names[0] + "weight" not in sd or names[1] + "weight" not in sd:
        return None
    norm, fc = names
    return {f"{new}{p}": sd[f"{old}{p}"] for new, old in (("norm.", norm), ("fc.", fc)) for p in ("weight", "bias")}


def encoder_from_trunk(trunk: StateDict, num_frames: int, img_size: int, num_heads: Optional[int] = None,
                       final_norm: bool = True, source_grid: Optional[tuple[int, int, int]] = None) -> VideoViT:
    """A VideoViT shaped like the weights in `trunk` (heads from the size table or `num_heads`; the
    kind of position table the trunk's, recognised on `source_grid` or any grid its length allows)."""
    from ppma_scale.models.sizes import SIZES, ViTSize

    embed_dim, in_chans, tubelet, patch, _ = trunk["patch_embed.proj.weight"].shape
    depth = 1 + max(int(k.split(".")[1]) for k in trunk if k.startswith("blocks."))
    mlp_ratio = trunk["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim
    if num_heads is None:
        rows = [s for s in SIZES.values() if (s.embed_dim, s.depth) == (embed_dim, depth)]
        if not rows:
            raise ValueError(f"a {embed_dim}-wide, {depth}-deep trunk is not in the size table: pass num_heads "
                             "(CLI: --num-heads)")
        num_heads = rows[0].num_heads
    _check_clip_geometry(embed_dim, tubelet, patch, num_frames, img_size, num_heads)
    size = ViTSize(embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, patch_size=patch)
    kind = pos_embed_kind(trunk.get("pos_embed"), source_grid)
    layer_scale = 1.0 if "blocks.0.ls1.gamma" in trunk else None
    return VideoViT(size, num_frames=num_frames, img_size=img_size, tubelet=tubelet, in_chans=in_chans,
                    qkv_bias="blocks.0.attn.qkv.bias" in trunk, layer_scale=layer_scale, pos_embed=kind,
                    final_norm=final_norm and "norm.weight" in trunk)


def _check_clip_geometry(embed_dim: int, tubelet: int, patch: int, num_frames: int, img_size: int,
                         num_heads: int) -> None:
    """The clip geometry asked for must cut into the checkpoint's tubelets, and the heads split its width."""
    if num_frames < tubelet or num_frames % tubelet:
        raise ValueError(f"num_frames (CLI: --num-frames) must be a positive multiple of the checkpoint's "
                         f"tubelet {tubelet}, got {num_frames}")
    if img_size < patch or img_size % patch:
        raise ValueError(f"img_size (CLI: --img-size) must be a positive multiple of the checkpoint's patch size "
                         f"{patch}, got {img_size}")
    if num_heads < 1 or embed_dim % num_heads:
        raise ValueError(f"num_heads (CLI: --num-heads) must divide the checkpoint's width {embed_dim}, "
                         f"got {num_heads}")
