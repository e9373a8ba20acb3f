"""GPU check of the MAE decoder's last-block shortcut (`run_blocks(..., keep_last=M)`) per SDPA
backend: the kernels get a query shorter than the keys, a case worth checking on each backend.
Used by model_bench.py; imports only torch and ppma_scale.models.
"""
from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ppma_scale.models import resolve_size
from ppma_scale.models.flops import mask_counts
from ppma_scale.models.vit import make_blocks, run_blocks

BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}


def last_block_check(size_name: str, frames: int, img: int, device: torch.device) -> list[dict]:
    """The MAE decoder's last block computed on the reconstructed tokens only (`keep_last`) vs the
    full block then sliced, per SDPA backend, bf16 on this device. Both are compared with an fp32
    explicit-attention reference: a correct shortcut has errors of the same size as the full path
    (bf16 rounding), for the output and the gradients of the input and of the qkv weight."""
    size = resolve_size(size_name)
    grid = (frames // 2, img // size.patch_size, img // size.patch_size)
    tokens = grid[0] * grid[1] * grid[2]
    _, targets = mask_counts(grid, 0.9)
    torch.manual_seed(0)
    with device:
        blocks = make_blocks(size.decoder_dim, 1, size.decoder_heads, size.mlp_ratio, True, None, 0.0)
        x = torch.randn(2, tokens, size.decoder_dim)
        grad = torch.randn(2, targets, size.decoder_dim)

    def run(model, inputs, keep, backend):
        """(output, input grad, qkv weight grad) as fp32, of the last `targets` tokens."""
        inputs = inputs.detach().requires_grad_(True)
        model.zero_grad(set_to_none=True)
        with sdpa_kernel(backend):
            out = run_blocks(model, inputs, 0, keep_last=keep)
        out = out if keep else out[:, -targets:]
        out.backward(grad.to(out.dtype))
        return out.detach().float(), inputs.grad.float(), model[0].attn.qkv.weight.grad.float()

    reference = run(blocks, x, None, SDPBackend.MATH)
    low = blocks.to(torch.bfloat16)
    rows = []
    for name, backend in BACKENDS.items():
        row = {"backend": name}
        try:
            for path, keep in (("last_only", targets), ("full", None)):
                got = run(low, x.to(torch.bfloat16), keep, backend)
                for what, g, r in zip(("out", "grad_x", "grad_qkv"), got, reference):
                    row[f"{path}_{what}"] = ((g - r).abs().max() / r.abs().max()).item()
        except RuntimeError as err:
            row["error"] = str(err).splitlines()[0][:160]
        rows.append(row)
    return rows
