"""CPU benchmark: one ViT-B video-MAE training step (16x224 clips, 90% masking, batch 2,
forward + backward + AdamW) for our MAE against two baselines measured in the same run:

- eager: `eager_reference.EagerVideoMAE`, explicit q@k^T softmax attention as VideoMAE's code;
- hf: transformers `VideoMAEForPreTraining` with attn_implementation="sdpa".

Steps are interleaved across the models (ours, eager, hf, ours, ...) so a busy machine slows all
three alike. Each step is timed on the wall clock and on this process's CPU clock. On a shared
machine the fastest step (min) and the CPU seconds are the steadier measures; GFLOP/s uses the min.
fp32, then bf16 autocast (AVX-512 BF16 here).

    python bench/model/cpu_mae_step.py [--threads 1] [--steps 5] [--precision fp32 bf16] [--fused-row] [--json f]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eager_reference import EagerVideoMAE  # noqa: E402

from ppma_scale.models import MAE, SIZES, VideoViT, resolve_size  # noqa: E402
from ppma_scale.models.flops import flops_per_clip, mask_counts  # noqa: E402


def build(name: str, size: str, frames: int, img: int) -> torch.nn.Module:
    s = resolve_size(size)
    if name == "ours":
        return MAE(VideoViT(s, num_frames=frames, img_size=img), decoder_dim=s.decoder_dim, decoder_depth=4)
    if name == "eager":
        return EagerVideoMAE(s.embed_dim, s.depth, s.num_heads, s.decoder_dim, s.decoder_heads,
                             num_frames=frames, img_size=img, patch=s.patch_size, mlp_ratio=s.mlp_ratio)
    from transformers import VideoMAEConfig, VideoMAEForPreTraining
    config = VideoMAEConfig(hidden_size=s.embed_dim, num_hidden_layers=s.depth, num_attention_heads=s.num_heads,
                            intermediate_size=s.mlp_hidden, decoder_hidden_size=s.decoder_dim,
                            decoder_num_attention_heads=s.decoder_heads, decoder_intermediate_size=4 * s.decoder_dim,
                            image_size=img, patch_size=s.patch_size, num_frames=frames, norm_pix_loss=True)
    return VideoMAEForPreTraining._from_config(config, attn_implementation="sdpa")


def step_fn(name: str, model: torch.nn.Module, video: torch.Tensor, mask: torch.Tensor, precision: str,
            fused: bool = False):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
    hf_video = video.transpose(1, 2).contiguous()  # transformers wants (B, T, C, H, W)

    def step() -> tuple[float, float]:
        """(wall seconds, CPU seconds of this process) of one training step."""
        wall, cpu = time.perf_counter(), time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            if name == "ours":
                loss, _ = model(video, mask)
            elif name == "eager":
                loss = model(video, mask)
            else:
                loss = model(hf_video, bool_masked_pos=mask).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - wall, time.process_time() - cpu
    return step


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    s = SIZES[args.size]
    grid = (args.frames // 2, args.img // s.patch_size, args.img // s.patch_size)
    num_tokens = grid[0] * grid[1] * grid[2]
    visible, masked = mask_counts(grid, args.mask_ratio)
    mask = torch.argsort(torch.rand(args.batch, num_tokens), dim=1) >= visible  # exactly `masked` True per row
    video = torch.randn(args.batch, 3, args.frames, args.img, args.img)
    models = {name: build(name, args.size, args.frames, args.img).train() for name in ("ours", "eager", "hf")}
    flops = flops_per_clip(models["ours"], args.mask_ratio) * args.batch
    results = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                           "torch": torch.__version__, "isa": torch.backends.cpu.get_cpu_capability()},
               "setup": {"size": args.size, "frames": args.frames, "img": args.img, "batch": args.batch,
                         "mask_ratio": args.mask_ratio, "visible": visible, "masked": masked,
                         "params_m": {k: sum(p.numel() for p in m.parameters()) / 1e6 for k, m in models.items()},
                         "tflop_per_step": flops / 1e12}, "runs": {}}
    rows = {"ours": ("ours", False), "eager": ("eager", False), "hf": ("hf", False)}
    if args.fused_row:
        rows["ours+fused"] = ("ours", True)  # AdamW(fused=True): one kernel per step on the CPU too
    for precision in args.precision:
        steps = {row: step_fn(name, models[name], video, mask, precision, fused) for row, (name, fused) in rows.items()}
        times: dict[str, list[tuple[float, float]]] = {row: [] for row in rows}
        for i in range(args.warmup + args.steps):
            order = list(rows)[i % len(rows):] + list(rows)[:i % len(rows)]
            for row in order:
                elapsed = steps[row]()
                if i >= args.warmup:
                    times[row].append(elapsed)
        wall = {row: statistics.median(t[0] for t in ts) for row, ts in times.items()}
        fastest = {row: min(t[0] for t in ts) for row, ts in times.items()}
        cpu = {row: statistics.median(t[1] for t in ts) for row, ts in times.items()}
        results["runs"][precision] = {
            row: {"wall_median_s": wall[row], "wall_min_s": fastest[row], "cpu_median_s": cpu[row],
                  "steps": times[row], "gflop_per_wall_s": flops / fastest[row] / 1e9,
                  "median_vs_eager": wall[row] / wall["eager"], "median_vs_hf": wall[row] / wall["hf"],
                  "min_vs_eager": fastest[row] / fastest["eager"], "min_vs_hf": fastest[row] / fastest["hf"],
                  "cpu_vs_eager": cpu[row] / cpu["eager"], "cpu_vs_hf": cpu[row] / cpu["hf"]}
            for row in rows}
    return results


def print_table(results: dict) -> None:
    setup = results["setup"]
    print(f"\nViT-{setup['size'].upper()} MAE step, {setup['frames']}x{setup['img']}, batch {setup['batch']}, "
          f"{setup['mask_ratio']:.0%} masked ({setup['visible']} visible tokens), "
          f"{setup['tflop_per_step']:.3f} TFLOP/step; {results['machine']}")
    print(f"{'precision':9} {'model':10} {'median s':>8} {'min s':>6} {'cpu s':>6} {'GFLOP/s':>8} "
          f"{'vs eager (median/min/cpu)':>26} {'vs hf (median/min/cpu)':>23}")
    for precision, runs in results["runs"].items():
        for name, r in runs.items():
            print(f"{precision:9} {name:10} {r['wall_median_s']:8.2f} {r['wall_min_s']:6.2f} {r['cpu_median_s']:6.2f} "
                  f"{r['gflop_per_wall_s']:8.1f} {r['median_vs_eager']:12.2f} {r['min_vs_eager']:5.2f} "
                  f"{r['cpu_vs_eager']:5.2f} {r['median_vs_hf']:11.2f} {r['min_vs_hf']:5.2f} {r['cpu_vs_hf']:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="b", choices=sorted(SIZES))
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--img", type=int, default=224)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--mask-ratio", type=float, default=0.9)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--fused-row", action="store_true", help="add ours with AdamW(fused=True)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    results = run(args)
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
