"""The weights of an adaptive-averaging run as a plain model: its trunk is the learned blend.

Such a run's checkpoints hold only alpha (the mixing logits) and the head: the blended trunks are
frozen buffers, read from `model.average`'s sources at every start, and not saved. Export rebuilds
the blend from those sources, checked against the weights fingerprints the checkpoint recorded,
and writes `encoder.*` (the blend) with the head, which every reader of trunks and classifiers takes
(export, and `model.init` / `model.average` naming such a run).
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch

ALPHA_KEY = "encoder.alpha"


def is_blend(state: dict[str, torch.Tensor]) -> bool:
    """Weights of an adaptive-averaging run (alpha and a head, no trunk)."""
    return ALPHA_KEY in state


def checkpoint_blend(ckpt, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`materialized_blend` for the checkpoint `ckpt`, from its own marker and config."""
    import json
    from .checkpoint import MARKER
    from .resume_guard import saved_config
    marker = json.loads((ckpt.path / MARKER).read_text())
    config, _ = saved_config(ckpt, marker)
    return materialized_blend(state, config, marker, ckpt.path)


def materialized_blend(state: dict[str, torch.Tensor], config: dict[str, Any] | None, marker: dict[str, Any],
                       where: Path) -> dict[str, torch.Tensor]:
    """`state` (alpha + head) with the blended trunk put in as `encoder.*`; ValueError naming what is
    missing (the run's config) or changed (a source that holds other weights now)."""
    from ..config import build_config
    from ..models import build_encoder
    from .averaging import AveragedTrunk, check_same_sources, fingerprint
    from .pretrained import adapted_trunk_state
    if config is None or not (config.get("model") or {}).get("average"):
        raise ValueError(f"{where} holds a blend's mixing weights (encoder.alpha) but no config naming the "
                         "trunks it blends (model.average): it cannot be exported as a model")
    cfg = build_config(config)
    factory = partial(build_encoder, cfg.model, cfg.data.num_frames, cfg.data.img_size, final_norm=False)
    states, sources = [], []
    for i, path in enumerate(cfg.model.average):
        try:
            source_state, _ = adapted_trunk_state(factory, path)
        except (ValueError, OSError) as exc:
            raise ValueError(f"{where} blends model.average[{i}] ({path}), which cannot be read: {exc}") from None
        states.append(source_state)
        sources.append({"path": str(path), "fingerprint": fingerprint(source_state)})
    if marker.get("average_sources") is not None:
        check_same_sources(marker["average_sources"], sources, where)
    trunk = AveragedTrunk(factory(), states, mode=cfg.model.average_mode)
    with torch.no_grad():
        trunk.alpha.copy_(state[ALPHA_KEY])
    blend = trunk.blended_state_dict()
    rest = {k: v for k, v in state.items() if k != ALPHA_KEY}
    return {**{f"encoder.{k}": v.float().contiguous() for k, v in blend.items()}, **rest}
