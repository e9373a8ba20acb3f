"""Weight averaging of video trunks: plain (uniform or fixed weights) and adaptive (learned).

PPMA's best downstream numbers come from blending trunks (e.g. the MAE-only and the aligned one)
with weights learned on the downstream task: every trunk parameter becomes
`sum_k softmax(alpha)_k * W_k`, with one alpha per model or one per parameter tensor, trained with
the head while the source trunks stay frozen. `AveragedTrunk` does that with
`torch.func.functional_call`, so the trunk's own module code runs unchanged on blended tensors.
"""
from __future__ import annotations

import copy
import hashlib
import math
from typing import Iterable, Literal, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils.stateless import _reparametrize_module

from ppma_scale.models.vit import recomputed_under

AverageMode = Literal["per_model", "per_tensor"]


def average_state_dicts(state_dicts: Sequence[Mapping[str, torch.Tensor]],
                        weights: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """Weighted average of state dicts with the same keys and shapes (uniform when `weights` is None).

    Floating tensors are averaged in float64 and cast back to their dtype; integer tensors (counters)
    must agree across inputs and are copied from the first.
    """
    if len(state_dicts) < 2:
        raise ValueError(f"averaging needs at least 2 state dicts, got {len(state_dicts)}")
    if weights is None:
        weights = [1.0 / len(state_dicts)] * len(state_dicts)
    check_weights(weights, len(state_dicts))
    check_same_layout(state_dicts)
    averaged = {}
    for key, first in state_dicts[0].items():
        if first.is_floating_point():
            total = sum(w * sd[key].to(torch.float64) for w, sd in zip(weights, state_dicts))
            averaged[key] = total.to(first.dtype)
        else:
            for index, sd in enumerate(state_dicts[1:], start=1):
                if not torch.equal(sd[key], first):
                    raise ValueError(f"non-float tensor {key!r} differs between input 0 and input {index}; "
                                     "it cannot be averaged")
            averaged[key] = first.clone()
    return averaged


def check_weights(weights: Sequence[float], count: int) -> None:
    """Raise a ValueError unless `weights` are `count` finite, non-negative numbers summing to 1
    (a NaN passes every comparison, and would silently make every averaged tensor NaN)."""
    if len(weights) != count:
        raise ValueError(f"got {len(weights)} weights for {count} inputs: give one weight per input")
    if not all(math.isfinite(w) for w in weights):
        raise ValueError(f"weights must be finite numbers, got {list(weights)}")
    if any(w < 0 for w in weights) or abs(math.fsum(weights) - 1.0) > 1e-6:
        raise ValueError(f"weights must be non-negative and sum to 1, got {list(weights)} (sum {math.fsum(weights):g})")


def fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """A digest of every tensor's name, dtype, shape and bytes: the same weights give the same text
    on any machine. A blend's sources are not in its checkpoints (they are read again on a resume
    or an evaluation), so this is how a run knows it is reading the weights it started from."""
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_same_sources(saved: Sequence[Mapping[str, str]], now: Sequence[Mapping[str, str]], where) -> None:
    """Raise a ValueError naming each `model.average` source whose weights differ from those the run
    at `where` recorded (a source run that trained on, or a rotated `latest` checkpoint)."""
    if len(saved) != len(now):
        raise ValueError(f"{where} blended {len(saved)} trunks; model.average now names {len(now)}")
    changed = [f"model.average[{i}] ({b['path']}): weights {b['fingerprint'][:12]}, recorded {a['fingerprint'][:12]}"
               for i, (a, b) in enumerate(zip(saved, now)) if a["fingerprint"] != b["fingerprint"]]
    if changed:
        raise ValueError(f"{where} was trained on a blend of other weights than model.average names now: "
                         + "; ".join(changed) + ". A run folder's latest checkpoint moves when that run trains "
                         "on; name the exact step_N folder or an exported weights file the blend started from")


def check_distinct(state_dicts: Sequence[Mapping[str, torch.Tensor]], names: Sequence[str]) -> None:
    """Raise a ValueError if two inputs hold the same weights (one path given twice, or a run and its
    own checkpoint): a blend of a model with itself is that model, and a learned mix of it is noise."""
    for j in range(1, len(state_dicts)):
        for i in range(j):
            a, b = state_dicts[i], state_dicts[j]
            if a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a):
                raise ValueError(f"{names[i]} and {names[j]} hold the same weights: averaging a model with itself "
                                 "gives that model back. Name different trunks (to weight one input more, "
                                 "give weights instead of repeating it)")


def check_same_layout(state_dicts: Sequence[Mapping[str, torch.Tensor]],
                      names: Sequence[str] | None = None) -> None:
    """Raise a ValueError naming the first key or shape on which the inputs disagree."""
    names = list(names) if names is not None else [f"input {i}" for i in range(len(state_dicts))]
    reference = state_dicts[0]
    for name, sd in zip(names[1:], state_dicts[1:]):
        missing = sorted(set(reference) - set(sd))
        extra = sorted(set(sd) - set(reference))
        if missing or extra:
            raise ValueError(f"{name} has different keys from {names[0]}: missing {missing[:5]}, "
                             f"extra {extra[:5]} (average trunks of the same model size)")
        for key, tensor in reference.items():
            if tuple(sd[key].shape) != tuple(tensor.shape):
                raise ValueError(f"{name}: {key!r} has shape {tuple(sd[key].shape)}, {names[0]} has "
                                 f"{tuple(tensor.shape)}")


class AveragedTrunk(nn.Module):
    """A trunk whose parameters are softmax(alpha)-weighted sums of K frozen source trunks.

    `template` gives the module code; it is consumed: moved to the meta device and kept out of the
    module tree, so its own parameters are neither trained, saved nor held twice in memory. The sources are stacked per parameter into frozen
    buffers `[K, *shape]`; the only trainable parameter is `alpha` — shape `[K]` per model or
    `[num_tensors, K]` per tensor — initialised to zeros, i.e. the uniform average.
    """

    def __init__(self, template: nn.Module, sources: Sequence[Mapping[str, torch.Tensor]],
                 mode: AverageMode = "per_model", source_names: Sequence[str] | None = None):
        super().__init__()
        if len(sources) < 2:
            raise ValueError(f"model.average needs at least 2 trunks to blend, got {len(sources)}")
        if mode not in ("per_model", "per_tensor"):
            raise ValueError(f"model.average_mode must be 'per_model' or 'per_tensor', got {mode!r}")
        names = list(source_names) if source_names is not None else [f"trunk {i}" for i in range(len(sources))]
        self.mode = mode
        self.num_sources = len(sources)
        self.param_names = [name for name, _ in template.named_parameters()]
        expected = dict(template.named_parameters())
        for name, sd in zip(names, sources):
            missing = [key for key in self.param_names if key not in sd]
            if missing:
                raise ValueError(f"{name} lacks trunk parameters {missing[:5]} (is it a checkpoint of the "
                                 f"same model size?)")
            for key in self.param_names:
                if tuple(sd[key].shape) != tuple(expected[key].shape):
                    raise ValueError(f"{name}: {key!r} has shape {tuple(sd[key].shape)}, the model expects "
                                     f"{tuple(expected[key].shape)}")
        for index, key in enumerate(self.param_names):
            stacked = torch.stack([sd[key].detach().to(expected[key].dtype) for sd in sources])
            self.register_buffer(self._slot(index), stacked, persistent=False)
        # Buffers of the trunk itself (e.g. a fixed sin-cos position table) come from the template.
        self.buffer_names = [name for name, _ in template.named_buffers()]
        for index, (name, buf) in enumerate(template.named_buffers()):
            self.register_buffer(f"trunk_buffer_{index}", buf.detach().clone(), persistent=False)
        shape = (self.num_sources,) if mode == "per_model" else (len(self.param_names), self.num_sources)
        self.alpha = nn.Parameter(torch.zeros(shape))
        self._template = [_MethodCaller(template.to("meta"))]  # a list keeps it out of the module tree

    @staticmethod
    def _slot(index: int) -> str:
        return f"source_stack_{index}"

    def mixing_weights(self) -> torch.Tensor:
        """softmax(alpha) over the sources: `[K]` per model or `[num_tensors, K]` per tensor."""
        return torch.softmax(self.alpha.float(), dim=-1)

    def blended_parameters(self) -> dict[str, torch.Tensor]:
        """The trunk's parameters as differentiable functions of alpha."""
        weights = self.mixing_weights()
        dtype = self.alpha.dtype  # the engine's compute dtype (ZeRO-3 casts parameters, not these buffers)
        blended = {}
        for index, key in enumerate(self.param_names):
            stack = getattr(self, self._slot(index))
            w = weights if self.mode == "per_model" else weights[index]
            blended[key] = torch.tensordot(w.to(stack.dtype), stack, dims=1).to(dtype)
        return blended

    def _trunk_tensors(self) -> dict[str, torch.Tensor]:
        tensors = self.blended_parameters()
        for index, name in enumerate(self.buffer_names):
            tensors[name] = getattr(self, f"trunk_buffer_{index}")
        return tensors

    def _call(self, method: str, args: tuple, kwargs: dict):
        tensors = {f"trunk.{name}": value for name, value in self._trunk_tensors().items()}
        template = self._template[0]
        # Checkpointed blocks recompute in the backward, after this call put the template's (meta)
        # weights back: they get the same blended tensors again for it.
        with recomputed_under(lambda: _reparametrize_module(template, tensors, strict=True)):
            return functional_call(template, tensors, (method, *args), kwargs, strict=True)

    def forward(self, *args, **kwargs):
        return self._call("forward", args, kwargs)

    def train(self, mode: bool = True) -> "AveragedTrunk":
        """Also switch the template, which runs every forward but is outside the module tree: left
        in training mode, its drop path stayed on in every evaluation of the blend."""
        super().train(mode)
        self._template[0].train(mode)
        return self

    def __getattr__(self, name: str):
        """Attributes the trunk exposes (`embed_dim`, `grid`, `num_patches`, ...) read through."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            template = self.__dict__.get("_template")
            if template is None or name.startswith("_"):
                raise
            value = getattr(template[0].trunk, name)
            if isinstance(value, (torch.Tensor, nn.Module)) or callable(value):
                raise AttributeError(f"AveragedTrunk does not expose the trunk's {name!r}; call the "
                                     "AveragedTrunk itself or materialize() it") from None
            return value

    def forward_features(self, *args, **kwargs):
        """Same signature as VideoViT.forward_features, on the blended weights."""
        return self._call("forward_features", args, kwargs)

    def no_weight_decay(self) -> set[str]:
        """alpha is a mixing logit, not a weight: never decay it."""
        return {"alpha"}

    @torch.no_grad()
    def blended_state_dict(self) -> dict[str, torch.Tensor]:
        """The current blend as a plain trunk state dict (parameters and buffers), detached."""
        return {k: v.detach().clone() for k, v in self._trunk_tensors().items()}

    def materialize(self) -> nn.Module:
        """A plain trunk module holding the current blend (for export or a frozen evaluation)."""
        blend = self.blended_state_dict()
        device = next(iter(blend.values())).device
        trunk = copy.deepcopy(self._template[0].trunk).to_empty(device=device)
        with torch.no_grad():
            for name, tensor in [*trunk.named_parameters(), *trunk.named_buffers()]:
                tensor.copy_(blend[name])
        return trunk


class _MethodCaller(nn.Module):
    """Lets functional_call reach a method other than forward (e.g. forward_features)."""

    def __init__(self, trunk: nn.Module):
        super().__init__()
        self.trunk = trunk

    def forward(self, method: str, *args, **kwargs):
        return getattr(self.trunk, method)(*args, **kwargs)


def describe_weights(trunk: AveragedTrunk, names: Iterable[str] | None = None) -> dict[str, float]:
    """The learned mixing weights, for the log: per model `{name: w}`; per tensor, the mean over tensors."""
    weights = trunk.mixing_weights().detach().cpu()
    if weights.dim() == 2:
        weights = weights.mean(dim=0)
    names = list(names) if names is not None else [f"trunk{i}" for i in range(trunk.num_sources)]
    return {name: float(w) for name, w in zip(names, weights)}
