"""CPU side-by-side: our q/k/v split (`VideoAttention`) against timm's, same weights, one process.

ViT-B MAE forward + backward (16x224, 90% masked, batch 2), steps interleaved between the two;
prints whether loss and gradients are bit-identical, the median and min step seconds, and the
`aten::copy_` calls and milliseconds of one profiled step each.

    python bench/model/qkv_split.py [--steps 5] [--precision fp32|bf16]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import profile

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "bench" / "gpu")]
from timm_split import use_timm_split  # noqa: E402

from ppma_scale.models import MAE, VideoViT, resolve_size  # noqa: E402
from ppma_scale.models.flops import mask_counts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args()
    torch.manual_seed(0)
    size = resolve_size("b")
    ours = MAE(VideoViT(size, num_frames=16, img_size=224), decoder_depth=4).train()
    models = {"ours": ours, "timm split": use_timm_split(copy.deepcopy(ours))}
    visible, _ = mask_counts(ours.encoder.grid, 0.9)
    mask = torch.argsort(torch.rand(2, ours.encoder.num_patches), dim=1) >= visible
    video = torch.randn(2, 3, 16, 224, 224)

    def step(model: torch.nn.Module) -> tuple[torch.Tensor, list[torch.Tensor]]:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss, _ = model(video, mask)
        loss.backward()
        grads = [p.grad for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        return loss.detach(), grads

    (loss_a, grads_a), (loss_b, grads_b) = (step(m) for m in models.values())
    same = torch.equal(loss_a, loss_b) and all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))
    print(f"loss and gradients bit-identical: {same}")
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.steps):
        for name, model in models.items():
            start = time.perf_counter()
            step(model)
            times[name].append(time.perf_counter() - start)
    for name, model in models.items():
        with profile() as prof:
            step(model)
        copies = next((e for e in prof.key_averages() if e.key == "aten::copy_"), None)
        calls, ms = (copies.count, copies.self_cpu_time_total / 1e3) if copies else (0, 0.0)
        print(f"{name:10} median {statistics.median(times[name]):.3f} s  min {min(times[name]):.3f} s  "
              f"aten::copy_ {calls} calls {ms:.1f} ms")


if __name__ == "__main__":
    main()
