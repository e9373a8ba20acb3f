"""VideoViT: a plain ViT over tubelet tokens, fast where it matters for video MAE.

- Tubelet embedding is a Conv3d; when only visible tokens are wanted it gathers their raw patches
  first (from a strided view, never copying the clip) and applies the same weights as one matmul,
  so 90% masking skips 90% of the embedding work.
- `run_blocks(..., keep_last=M)` lets the last block compute only the last M tokens' outputs
  (the MAE decoder needs only the reconstructed tokens).
- Attention is timm's `Attention` (`VideoAttention`: q, k, v split along the packed axis, for a
  cheaper backward), pinned to `F.scaled_dot_product_attention` (flash / efficient / cuDNN kernels
  on GPU); `set_attention(model, "math")` switches to the explicit q@k^T softmax
  formula for equivalence tests and baselines.
- Activation checkpointing (non-reentrant) on every k-th block; `torch.compile` of the blocks is
  opt-in (`Module.compile` keeps the state-dict keys unchanged).
- Keys follow timm / VideoMAE: `patch_embed.proj.*`, `pos_embed`, `blocks.{i}.*`, `norm.*`.
"""
from __future__ import annotations

import math
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from functools import partial
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Attention, Block  # (timm.layers in newer timm re-exported here)
from torch import nn
from torch.utils.checkpoint import checkpoint

from ppma_scale.models import pos_embed as pe
from ppma_scale.models.sizes import ViTSize

POS_EMBED_KINDS = ("sincos", "sincos_1d", "learned")
LN_EPS = 1e-6


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B|1, N, D), index (B, M) -> (B, M, D): the tokens at `index`, row by row."""
    if x.shape[0] != index.shape[0]:
        x = x.expand(index.shape[0], -1, -1)
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def gather_tubelets(video: torch.Tensor, index: torch.Tensor, kernel: tuple[int, int, int]) -> torch.Tensor:
    """Raw pixels of the tubelets at `index` (B, M), token order (t, h, w): (B, M, C, kt, kh, kw).

    Indexes a strided view of the clip, so only the chosen tubelets are read and copied (a
    patchify-then-gather would copy the whole clip first).
    """
    b, c, t, h, w = video.shape
    kt, kh, kw = kernel
    gh, gw = h // kh, w // kw
    view = video.reshape(b, c, t // kt, kt, gh, kh, gw, kw).permute(0, 2, 4, 6, 1, 3, 5, 7)
    rows = torch.arange(b, device=index.device).unsqueeze(1)
    return view[rows, index // (gh * gw), (index // gw) % gh, index % gw]


class TubeletConv(nn.Conv3d):
    """Conv3d with stride = kernel, which can also embed only a chosen subset of tubelets.

    Owning the weight here (not in a parent) matters under ZeRO-3: parameters are gathered when
    the module that owns them is called.
    """

    def forward(self, video: torch.Tensor, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Tokens of `video` (any float dtype: an MAE keeps its clip in fp32 for exact targets), or
        of the tubelets at `index`, in the weight's dtype."""
        if index is None:
            return super().forward(video.to(self.weight.dtype)).flatten(2).transpose(1, 2)
        patches = gather_tubelets(video, index, self.kernel_size).flatten(2)  # (c pt ph pw), as the weight
        return F.linear(patches.to(self.weight.dtype), self.weight.flatten(1), self.bias)


class PatchEmbed(nn.Module):
    """Video (B, C, T, H, W) -> tokens (B, N, D) in (t, h, w) order."""

    def __init__(self, in_chans: int, embed_dim: int, tubelet: int, patch_size: int) -> None:
        super().__init__()
        kernel = (tubelet, patch_size, patch_size)
        self.proj = TubeletConv(in_chans, embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, video: torch.Tensor, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.proj(video, index)


class VideoAttention(Attention):
    """timm's `Attention` (same submodules and keys) that splits q, k, v along the packed axis and
    can take queries from the last `keep_last` tokens only.

    timm splits `qkv` as (3, B, H, N, D) with a permute; the backward of that split stacks the three
    gradients and then copies them back into the (B, N, 3, H, D) order of the projection. Splitting
    along the packed axis and transposing gives q, k, v with the same strides, and a backward that
    writes the gradients straight into that order: one copy per block fewer, the same values.
    """

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False,
                keep_last: Optional[int] = None) -> torch.Tensor:
        if self.gate is not None or attn_mask is not None or is_causal:  # variants not written out here
            out = super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
            return out if keep_last is None else out[:, -keep_last:]
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).unbind(2)  # (B, N, H, D)
        if keep_last is not None:
            q = q[:, -keep_last:]
        q, k, v = self.q_norm(q.transpose(1, 2)), self.k_norm(k.transpose(1, 2)), v.transpose(1, 2)
        if self.fused_attn:
            o = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            o = self.attn_drop(((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)) @ v
        o = self.norm(o.transpose(1, 2).reshape(b, q.shape[2], self.attn_dim))
        return self.proj_drop(self.proj(o))


class VideoBlock(Block):
    """timm's pre-norm `Block` whose forward can also compute only the last `keep_last` tokens.

    With `keep_last`, every token is still a key and a value, but only the kept ones are queries
    and go through the projection and the MLP: the MAE decoder's last block needs only the
    reconstructed tokens (~10% of that block's work saved at 90% masking). One forward for both
    paths, so `Module.compile` of a block covers that last block too; submodules are called (not
    their weights), so ZeRO-3 still gathers each one's parameters.
    """

    def forward(self, x: torch.Tensor, keep_last: Optional[int] = None) -> torch.Tensor:
        h = self.attn(self.norm1(x), keep_last=keep_last)
        x = (x if keep_last is None else x[:, -keep_last:]) + self.drop_path1(self.ls1(h))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


def make_blocks(dim: int, depth: int, num_heads: int, mlp_ratio: float, qkv_bias: bool,
                layer_scale: Optional[float], drop_path: float) -> nn.ModuleList:
    """Pre-norm transformer blocks (`VideoBlock`) with a linear stochastic-depth ramp."""
    rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
    blocks = [VideoBlock(dim=dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                         init_values=layer_scale, drop_path=rate, norm_layer=partial(nn.LayerNorm, eps=LN_EPS),
                         attn_layer=VideoAttention)
              for rate in rates]
    for block in blocks:
        block.attn.fused_attn = True  # SDPA regardless of timm's global setting
    return nn.ModuleList(blocks)


def compile_each_block(blocks: nn.ModuleList, options: bool | dict) -> None:
    """torch.compile each block in place (`options`: True, or torch.compile keyword arguments).

    Per block rather than the whole model: the blocks are where the time goes, every block of a
    stack has the same graph, and `Module.compile` leaves the state-dict keys unchanged. Shapes are
    static unless `dynamic` is given: the encoder's and decoder's blocks share one forward, and
    torch's automatic dynamic shapes would otherwise compile the second stack for any token count.
    """
    if options:
        for block in blocks:
            block.compile(**{"dynamic": False, **(options if isinstance(options, dict) else {})})


_RECOMPUTE_CONTEXT: ContextVar[Optional[Callable[[], AbstractContextManager]]] = ContextVar(
    "recompute_context", default=None)


@contextmanager
def recomputed_under(make_context: Callable[[], AbstractContextManager]) -> Iterator[None]:
    """Blocks checkpointed inside this context are recomputed, in the backward, inside a fresh
    `make_context()`. A caller that puts weights into the blocks only for its forward (weight
    averaging's blended trunk) puts the same ones back for the recompute, which runs after it."""
    token = _RECOMPUTE_CONTEXT.set(make_context)
    try:
        yield
    finally:
        _RECOMPUTE_CONTEXT.reset(token)


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, checkpoint_every: int,
               keep_last: Optional[int] = None) -> torch.Tensor:
    """Apply `blocks`, checkpointing every k-th one (non-reentrant) when gradients are on.

    With `keep_last`, only the last `keep_last` tokens of the output are wanted: the final block
    computes just those (`VideoBlock`), and the result has `keep_last` tokens.
    """
    use_ckpt = checkpoint_every > 0 and torch.is_grad_enabled()
    last = len(blocks) - 1
    make_context = _RECOMPUTE_CONTEXT.get()
    extra = {} if make_context is None else {"context_fn": lambda: (nullcontext(), make_context())}
    for i, block in enumerate(blocks):
        keep = keep_last if i == last else None
        if use_ckpt and i % checkpoint_every == 0:
            x = checkpoint(block, x, keep, use_reentrant=False, **extra)
        else:
            x = block(x, keep)
    return x


def set_attention(model: nn.Module, impl: str) -> None:
    """'sdpa' (fused kernels) or 'math' (explicit q@k^T softmax, as VideoMAE's code) everywhere."""
    if impl not in ("sdpa", "math"):
        raise ValueError(f"attention implementation must be 'sdpa' or 'math', got {impl!r}")
    for module in model.modules():
        if isinstance(module, Attention):
            module.fused_attn = impl == "sdpa"


@contextmanager
def default_init_skipped() -> Iterator[None]:
    """Build Linear/Conv3d layers without their default init, because `init_weights` overwrites
    every one of them: initialising ViT-H twice costs ~5 s of random numbers on a small CPU."""
    saved = {cls: cls.__dict__["reset_parameters"] for cls in (nn.Linear, nn.modules.conv._ConvNd)}
    try:
        for cls in saved:
            cls.reset_parameters = lambda self: None
        yield
    finally:
        for cls, method in saved.items():
            cls.reset_parameters = method


def init_weights(module: nn.Module) -> None:
    """MAE's initialisation: xavier-uniform linear and tubelet weights, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv3d):
            nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class VideoViT(nn.Module):
    """Video ViT trunk. `forward(video, visible_idx=None)` -> tokens (B, N or Nv, D)."""

    def __init__(self, size: ViTSize, num_frames: int = 16, img_size: int = 224, tubelet: int = 2,
                 in_chans: int = 3, qkv_bias: bool = True, layer_scale: Optional[float] = None,
                 drop_path: float = 0.0, pos_embed: str = "sincos", final_norm: bool = True,
                 act_checkpoint_every: int = 0, compile_blocks: bool | dict = False) -> None:
        super().__init__()
        if pos_embed not in POS_EMBED_KINDS:
            raise ValueError(f"model.pos_embed must be one of {POS_EMBED_KINDS}, got {pos_embed!r}")
        if tubelet < 1 or num_frames % tubelet:
            raise ValueError(f"data.num_frames {num_frames} must be a multiple of model.tubelet {tubelet}")
        if img_size % size.patch_size:
            raise ValueError(f"data.img_size {img_size} must be a multiple of the patch size {size.patch_size}")
        if act_checkpoint_every < 0:
            raise ValueError(f"model.act_checkpoint_every must be >= 0, got {act_checkpoint_every}")
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"model.drop_path must be in [0, 1), got {drop_path}")
        self.size = size
        self.embed_dim = size.embed_dim
        self.in_chans = in_chans
        self.tubelet = tubelet
        self.patch_size = size.patch_size
        self.grid = (num_frames // tubelet, img_size // size.patch_size, img_size // size.patch_size)
        self.num_patches = math.prod(self.grid)
        self.pos_embed_kind = pos_embed
        self.act_checkpoint_every = act_checkpoint_every

        with default_init_skipped():
            self.patch_embed = PatchEmbed(in_chans, size.embed_dim, tubelet, size.patch_size)
            if pos_embed == "learned":
                self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, size.embed_dim))
            else:  # fixed, but saved: imported weights bring the exact table they were trained with
                self.register_buffer("pos_embed", pe.fixed_table(pos_embed, self.grid, size.embed_dim))
            self.blocks = make_blocks(size.embed_dim, size.depth, size.num_heads, size.mlp_ratio, qkv_bias,
                                      layer_scale, drop_path)
        self.norm = nn.LayerNorm(size.embed_dim, eps=LN_EPS) if final_norm else nn.Identity()
        init_weights(self)
        if pos_embed == "learned":
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self._pos_cache: dict[tuple, torch.Tensor] = {}
        self.compile_options = compile_blocks  # the MAE decoder's blocks follow it
        compile_each_block(self.blocks, compile_blocks)

    def forward(self, video: torch.Tensor, visible_idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Tokens of `video` (B, C, T, H, W); only those at `visible_idx` (B, Nv) when given."""
        grid = self.grid_of(video)
        x = self.patch_embed(video, visible_idx)
        pos = self.pos_embed_for(grid).to(x.dtype)
        x = x + (pos if visible_idx is None else gather_tokens(pos, visible_idx))
        x = run_blocks(self.blocks, x, self.act_checkpoint_every)
        return self.norm(x)

    forward_features = forward

    def grid_of(self, video: torch.Tensor) -> tuple[int, int, int]:
        """The token grid of `video`, with a clear error when its shape cannot be tokenised."""
        if video.ndim != 5 or video.shape[1] != self.in_chans:
            raise ValueError(f"expected video of shape (B, {self.in_chans}, T, H, W), got {tuple(video.shape)}")
        t, h, w = video.shape[2:]
        p = self.patch_size
        if t % self.tubelet or h % p or w % p:
            raise ValueError(f"video of {t}x{h}x{w} (TxHxW) is not divisible into {self.tubelet}x{p}x{p} tubelets")
        return (t // self.tubelet, h // p, w // p)

    def pos_embed_for(self, grid: tuple[int, int, int]) -> torch.Tensor:
        """The (1, N, D) table for `grid`: ours, resampled (learned), or regenerated (fixed)."""
        return pe.table_for_grid(self.pos_embed, self.pos_embed_kind, self.grid, grid, self._pos_cache)

    def no_weight_decay(self) -> set[str]:
        """Parameter names AdamW should not decay (1-D parameters are excluded by the engine)."""
        return {"pos_embed"} if self.pos_embed_kind == "learned" else set()

    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer groups for timm's `param_groups_layer_decay`: stem, blocks.i, final norm."""
        return dict(stem=r"^pos_embed|^patch_embed", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])
