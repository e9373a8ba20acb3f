"""Hugging Face `transformers` VideoMAE layout, both ways.

Export writes `config.json` + `model.safetensors` that
`transformers.VideoMAEForVideoClassification.from_pretrained(dir)` loads offline. Two facts make
it exact: the key bias is dropped (a bias on k adds the same number to every score of a query,
which softmax ignores), and LayerScale is folded into the projection before it. Transformers'
VideoMAE always adds its fixed 1-D sin-cos table, so only trunks that use that table export
faithfully (`model.pos_embed: sincos_1d`, or weights imported from VideoMAE / PPMA).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ppma_scale.atomic import write_text_atomic
from ppma_scale.models import pos_embed as pe

StateDict = dict[str, torch.Tensor]
HF_BLOCK_NAMES = {  # ours (after blocks.i.) -> transformers (after encoder.layer.i.)
    "norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
    "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense",
}


def hf_to_trunk(sd: StateDict) -> StateDict:
    """Trunk state dict (our keys) from a transformers VideoMAE state dict (any head)."""
    prefix = "videomae." if any(k.startswith("videomae.") for k in sd) else ""
    out: StateDict = {}
    proj = f"{prefix}embeddings.patch_embeddings.projection."
    for name in ("weight", "bias"):
        out[f"patch_embed.proj.{name}"] = sd[proj + name]
    if f"{prefix}layernorm.weight" in sd:
        out["norm.weight"], out["norm.bias"] = sd[f"{prefix}layernorm.weight"], sd[f"{prefix}layernorm.bias"]
    layers = [int(m.group(1)) for k in sd if (m := re.match(rf"{re.escape(prefix)}encoder\.layer\.(\d+)\.", k))]
    if not layers:
        raise ValueError(f"no {prefix}encoder.layer.* keys")
    depth = 1 + max(layers)
    for i in range(depth):
        src, dst = f"{prefix}encoder.layer.{i}.", f"blocks.{i}."
        for ours, theirs in HF_BLOCK_NAMES.items():
            out[f"{dst}{ours}.weight"] = sd[f"{src}{theirs}.weight"]
            out[f"{dst}{ours}.bias"] = sd[f"{src}{theirs}.bias"]
        att = f"{src}attention.attention."
        out[f"{dst}attn.qkv.weight"] = torch.cat([sd[f"{att}{n}.weight"] for n in ("query", "key", "value")])
        q_bias = sd.get(f"{att}query.bias", sd.get(f"{att}q_bias"))
        if q_bias is not None:
            v_bias = sd.get(f"{att}value.bias", sd.get(f"{att}v_bias"))
            out[f"{dst}attn.qkv.bias"] = torch.cat([q_bias, torch.zeros_like(q_bias), v_bias])
    return out


def trunk_to_hf(encoder: nn.Module, prefix: str = "videomae.") -> StateDict:
    """transformers VideoMAEModel tensors of `encoder` (LayerScale folded, key bias dropped)."""
    sd = {k: v.detach().float().cpu() for k, v in encoder.state_dict().items()}
    dim = encoder.embed_dim
    out = {f"{prefix}embeddings.patch_embeddings.projection.{n}": sd[f"patch_embed.proj.{n}"]
           for n in ("weight", "bias")}
    for i in range(len(encoder.blocks)):
        src, dst = f"blocks.{i}.", f"{prefix}encoder.layer.{i}."
        for ours, theirs in HF_BLOCK_NAMES.items():
            weight, bias = sd[f"{src}{ours}.weight"], sd[f"{src}{ours}.bias"]
            gamma = sd.get(src + {"attn.proj": "ls1.gamma", "mlp.fc2": "ls2.gamma"}.get(ours, "-"))
            if gamma is not None:
                weight, bias = weight * gamma[:, None], bias * gamma
            out[f"{dst}{theirs}.weight"], out[f"{dst}{theirs}.bias"] = weight, bias
        att = f"{dst}attention.attention."
        for name, part in zip(("query", "key", "value"), sd[f"{src}attn.qkv.weight"].split(dim)):
            out[f"{att}{name}.weight"] = part
        if f"{src}attn.qkv.bias" in sd:
            q_bias, _, v_bias = sd[f"{src}attn.qkv.bias"].split(dim)
            out[f"{att}query.bias"], out[f"{att}value.bias"] = q_bias, v_bias
    return {k: v.contiguous() for k, v in out.items()}


def hf_config(encoder: nn.Module, num_labels: int = 0, id2label: Optional[dict[int, str]] = None,
              architecture: str = "VideoMAEModel") -> dict:
    """config.json contents describing `encoder` as a transformers VideoMAE."""
    size = encoder.size
    t, h, _ = encoder.grid
    labels = id2label or {i: f"LABEL_{i}" for i in range(num_labels)}
    return {
        "architectures": [architecture], "model_type": "videomae",
        "hidden_size": size.embed_dim, "num_hidden_layers": len(encoder.blocks),
        "num_attention_heads": size.num_heads, "intermediate_size": encoder.blocks[0].mlp.fc1.out_features,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02, "layer_norm_eps": 1e-6, "image_size": h * encoder.patch_size,
        "patch_size": encoder.patch_size, "num_channels": encoder.in_chans, "num_frames": t * encoder.tubelet,
        "tubelet_size": encoder.tubelet, "qv_bias": encoder.blocks[0].attn.qkv.bias is not None,
        "use_mean_pooling": True, "norm_pix_loss": True, "dtype": "float32",
        "id2label": {str(k): v for k, v in labels.items()}, "label2id": {v: k for k, v in labels.items()},
    }


def num_heads_from_hf_config(path: str | Path) -> Optional[int]:
    """`num_attention_heads` from the config.json of the Hugging Face VideoMAE folder `path` (or of
    the folder holding the weights file `path`); None when there is no such config."""
    path = Path(path).expanduser()
    config_file = (path if path.is_dir() else path.parent) / "config.json"
    if not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text())
    except ValueError as exc:
        raise ValueError(f"{config_file} is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or config.get("model_type") != "videomae":
        return None
    heads = config.get("num_attention_heads")
    return heads if isinstance(heads, int) and not isinstance(heads, bool) else None


def export_hf(model: nn.Module, out_dir: str | Path, id2label: Optional[dict[int, str]] = None,
              allow_pos_mismatch: bool = False, override_hint: str = "pass allow_pos_mismatch=True") -> Path:
    """Write `model` (VideoClassifier with a linear head, MAE, or VideoViT) in transformers' layout.

    A classifier exports as VideoMAEForVideoClassification (head -> `fc_norm` + `classifier`); a
    trunk as VideoMAEModel (from_pretrained of the classification class then adds a fresh head).
    `override_hint` says how the caller lifts the position-table check (a CLI names its flag).
    """
    from ppma_scale.models.convert import save_safetensors
    from ppma_scale.models.heads import LinearHead, VideoClassifier
    from ppma_scale.models.mae import MAE

    head = None
    if isinstance(model, VideoClassifier):
        if not isinstance(model.head, LinearHead):
            raise ValueError("only the 'linear' head (LayerNorm + Linear) exists in transformers' VideoMAE")
        encoder, head = model.encoder, model.head
    else:
        encoder = model.encoder if isinstance(model, MAE) else model
    table = encoder.pos_embed.detach().float().cpu()
    if not allow_pos_mismatch and not torch.allclose(table, pe.sincos_flat(encoder.num_patches, encoder.embed_dim),
                                                      atol=5e-3):
        raise ValueError("transformers' VideoMAE adds its fixed 1-D sin-cos position table, and this trunk was "
                         f"trained with another ({encoder.pos_embed_kind}); the export would compute different "
                         f"features. Train with model.pos_embed=sincos_1d, or {override_hint}")
    tensors = trunk_to_hf(encoder)
    if head is not None:
        tensors.update({"fc_norm.weight": head.norm.weight, "fc_norm.bias": head.norm.bias,
                        "classifier.weight": head.fc.weight, "classifier.bias": head.fc.bias})
        config = hf_config(encoder, head.fc.out_features, id2label, "VideoMAEForVideoClassification")
    else:
        config = hf_config(encoder, 0, id2label, "VideoMAEModel")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors({k: v.detach().float().cpu().clone() for k, v in tensors.items()},
                     out / "model.safetensors", metadata={"format": "pt"})
    write_text_atomic(out / "config.json", json.dumps(config, indent=2) + "\n")
    return out
