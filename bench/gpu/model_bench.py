"""GPU model benchmark, one self-contained run (5-8 min on an H100): builds, checks and times everything.

1. Checks: FlopCounterMode on the GPU vs `flops_per_clip` (explicit attention must match exactly);
   the MAE decoder's last block on the reconstructed tokens only vs the full block, per SDPA backend.
2. ViT-L / ViT-H MAE steps in bf16 (16x224, 90% masked), ours and the eager explicit-attention
   baseline, activation checkpointing off and/or on (--ckpt), each at the largest micro-batch that
   fits (or --batch / --eager-batch): clips/s, TFLOP/s, MFU, peak memory.
3. Ours on the first size with each SDPA backend forced, a kernel-time profile (--profile), and
   torch.compile'd blocks (--compile static dynamic), each timed and profiled in a child process.
4. SDPA backends (flash / efficient / cuDNN / math; FlexAttention with --flex) on the MAE decoder,
   fine-tune and encoder shapes.

Imports only torch (+ timm/einops via ppma_scale.models) and bench/model/eager_reference.py. Every
configuration is time-boxed and survives OOM; $OUT/model_bench.json is rewritten after each one.

    PYTHONPATH=. python bench/gpu/model_bench.py [--profile] [--compile]   # on the GPU box
    PYTHONPATH=. python bench/gpu/model_bench.py --smoke                   # CPU check of this script
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.nn.attention import sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "bench" / "model"), str(REPO / "bench" / "gpu")]
from eager_reference import EagerVideoMAE  # noqa: E402
from last_block_check import BACKENDS, last_block_check  # noqa: E402
from kernel_profile import summarise, top_table  # noqa: E402
from report import table  # noqa: E402
from timm_split import use_timm_split  # noqa: E402

from ppma_scale.models import MAE, VideoViT, resolve_size, set_attention  # noqa: E402
from ppma_scale.models.flops import flops_per_clip, mask_counts, peak_tflops  # noqa: E402



class Bench:
    """Shared settings, the clock, and the results file."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.start = time.monotonic()
        self.out = Path(os.environ.get("OUT", "./.bench_out"))
        self.out.mkdir(parents=True, exist_ok=True)
        name = torch.cuda.get_device_name() if self.device.type == "cuda" else "cpu"
        self.peak = args.peak or peak_tflops(name) or 989.0
        self.results: dict = {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
                              "cudnn": torch.backends.cudnn.version() if self.device.type == "cuda" else None,
                              "peak_tflops": self.peak, "args": vars(args), "flops_check": {}, "sdpa": [],
                              "steps": [], "notes": []}

    def left(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.start)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def save(self) -> None:
        (self.out / "model_bench.json").write_text(json.dumps(self.results, indent=2, default=str))

    def free(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_gb(self) -> float | None:
        return torch.cuda.max_memory_allocated() / 2**30 if self.device.type == "cuda" else None



COMPILE_MODES = {"off": False, "static": {"dynamic": False}, "dynamic": {"dynamic": None}}


def build(kind: str, size_name: str, frames: int, img: int, ckpt: bool, compile_mode: str = "off"):
    size = resolve_size(size_name)
    if kind.startswith("ours"):  # "ours-timm-split": the q/k/v split's baseline
        encoder = VideoViT(size, num_frames=frames, img_size=img, act_checkpoint_every=int(ckpt),
                           compile_blocks=COMPILE_MODES[compile_mode])
        model = MAE(encoder, decoder_depth=4)
        return use_timm_split(model) if kind == "ours-timm-split" else model
    model = EagerVideoMAE(size.embed_dim, size.depth, size.num_heads, size.decoder_dim, size.decoder_heads,
                          num_frames=frames, img_size=img, patch=size.patch_size, mlp_ratio=size.mlp_ratio)
    model.checkpoint_blocks = ckpt
    return model


class MixedAdamW:
    """bf16 model, fp32 master weights and AdamW states (what DeepSpeed's bf16 mode keeps)."""

    def __init__(self, model: torch.nn.Module, fused: bool) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.master = [p.detach().float().clone() for p in self.params]
        self.opt = torch.optim.AdamW(self.master, lr=1e-4, weight_decay=0.05, fused=fused)

    def step(self) -> None:
        for master, param in zip(self.master, self.params):
            master.grad = param.grad.float()
            param.grad = None
        self.opt.step()
        with torch.no_grad():
            torch._foreach_copy_(self.params, self.master)
        for master in self.master:
            master.grad = None


def make_step(bench: Bench, kind: str, model, batch: int, ratio: float, backend: str | None):
    """A closure running one training step on a fixed random batch."""
    dev = bench.device
    frames, img = bench.args.frames, bench.args.img
    grid = model.encoder.grid if kind.startswith("ours") else model.grid
    num_tokens = grid[0] * grid[1] * grid[2]
    visible, _ = mask_counts(grid, ratio)
    mask = torch.argsort(torch.rand(batch, num_tokens), dim=1) >= visible  # CPU: ours checks it sync-free
    video = torch.randn(batch, 3, frames, img, img, device=dev, dtype=torch.bfloat16)
    optimizer = MixedAdamW(model, fused=dev.type == "cuda")
    gpu_mask = mask.to(dev)

    def context():  # a fresh context manager per step: they cannot be re-entered
        return sdpa_kernel([BACKENDS[backend]]) if backend else nullcontext()

    def step() -> None:
        with context():
            loss = model(video, mask)[0] if kind.startswith("ours") else model(video, gpu_mask)
            loss.backward()
        optimizer.step()
    return step


def time_steps(bench: Bench, step, warmup: int, steps: int, deadline: float) -> tuple[float, int]:
    for _ in range(warmup):
        step()
    bench.sync()
    start, done = time.perf_counter(), 0
    while done < steps and (done == 0 or time.monotonic() < deadline):
        step()
        done += 1
    bench.sync()
    return (time.perf_counter() - start) / done, done


def fitting_batches(bench: Bench, kind: str, model, ratio: float, backend: str | None, deadline: float) -> list[int]:
    """Micro-batches whose steps fit in memory, largest last: doubling from --start-batch (halving
    first if that does not fit), then one 1.5x probe. A probe runs two steps: the second one is the
    first to hold the optimizer state during forward and backward."""

    def fits(batch: int) -> bool:
        try:
            step = make_step(bench, kind, model, batch, ratio, backend)
            step()
            step()
            bench.sync()
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            step = None
            model.zero_grad(set_to_none=True)
            bench.free()

    batch = bench.args.start_batch
    while not fits(batch):
        if batch == 1 or time.monotonic() >= deadline:
            return []
        batch //= 2
    good, out_of_memory = [batch], False
    while good and good[-1] * 2 <= bench.args.max_batch and time.monotonic() < deadline:
        if not fits(good[-1] * 2):
            out_of_memory = True
            break
        good.append(good[-1] * 2)
    if good and out_of_memory and good[-1] >= 2 and time.monotonic() < deadline and fits(good[-1] * 3 // 2):
        good.append(good[-1] * 3 // 2)
    return good


def run_config(bench: Bench, kind: str, size: str, ckpt: bool, backend: str | None = None,
               compile_mode: str = "off", batch: int | None = None) -> dict:
    """Time one configuration at the largest batch that fits (or `batch`); never raises."""
    a = bench.args
    row = {"model": kind, "size": size, "ckpt": ckpt, "backend": backend or "default", "compile": compile_mode}
    if bench.left() < 10:
        row["error"] = "skipped: out of time"
        return row
    deadline = time.monotonic() + min(a.config_s, bench.left() - 5)
    model = None
    try:
        with bench.device:  # initialise on the GPU: ViT-H's random init takes seconds on a CPU
            model = build(kind, size, a.frames, a.img, ckpt, compile_mode)
        model = model.to(torch.bfloat16).train()
        with torch.device("meta"):  # model FLOPs of our architecture (the baseline has the same)
            flops = flops_per_clip(build("ours", size, a.frames, a.img, False), 0.9)
        candidates = [batch] if batch else fitting_batches(bench, kind, model, 0.9, backend, deadline)
        if not candidates:
            raise RuntimeError("not even one clip fits")
        timed = None
        for attempt in reversed(candidates[-2:]):  # fall back once if the timed run runs out of memory
            row["batch"] = attempt
            bench.free()
            try:
                step = make_step(bench, kind, model, attempt, 0.9, backend)
                timed = time_steps(bench, step, a.warmup, a.steps, deadline)
                break
            except torch.OutOfMemoryError:
                step = None
                model.zero_grad(set_to_none=True)
        if timed is None:
            raise RuntimeError(f"timed steps ran out of memory at batches {candidates[-2:]}")
        seconds, done = timed
        clips = attempt / seconds
        row.update(step_ms=seconds * 1e3, timed_steps=done, clips_per_s=clips,
                   tflops=flops * clips / 1e12, mfu=flops * clips / (bench.peak * 1e12),
                   peak_gb=bench.peak_gb(), tflop_per_clip=flops / 1e12)
    except Exception as exc:  # OOM at the first batch, unsupported backend, ...: record and go on
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    finally:
        model = step = None
        bench.free()
    return row



def flops_check(bench: Bench) -> dict:
    """FlopCounterMode vs flops_per_clip for a ViT-L MAE step (2 clips) on this device."""
    a = bench.args
    out = {}
    with bench.device:
        model = build("ours", a.sizes[0], a.frames, a.img, False)
    model = model.to(torch.bfloat16).train()
    expected = flops_per_clip(model, 0.9)
    for impl in ("math", "sdpa"):
        set_attention(model, impl)
        step = make_step(bench, "ours", model, 2, 0.9, None)
        with FlopCounterMode(display=False) as counter:
            step()
        out[impl] = {"counted_per_clip": counter.get_total_flops() / 2, "analytic_per_clip": expected,
                     "ratio": counter.get_total_flops() / 2 / expected}
    model = None
    bench.free()
    return out


def sdpa_shapes(size_name: str, batch: int, frames: int, img: int) -> dict[str, tuple[int, int, int, int]]:
    size = resolve_size(size_name)
    grid = (frames // 2, img // size.patch_size, img // size.patch_size)
    tokens = grid[0] * grid[1] * grid[2]
    visible, _ = mask_counts(grid, 0.9)
    return {"mae_decoder": (batch, size.decoder_heads, tokens, size.decoder_dim // size.decoder_heads),
            "finetune": (max(1, batch // 8), size.num_heads, tokens, size.head_dim),
            "mae_encoder": (batch, size.num_heads, visible, size.head_dim)}


def sdpa_bench(bench: Bench) -> list[dict]:
    """fwd+bwd time of each SDPA backend per shape; TFLOP/s counts 3x the forward matmuls."""
    a = bench.args
    rows = []
    for shape_name, (b, h, n, d) in sdpa_shapes(a.sizes[0], a.sdpa_batch, a.frames, a.img).items():
        q, k, v = (torch.randn(b, h, n, d, device=bench.device, dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        flops = 3 * 4 * b * h * n * n * d
        for name, backend in BACKENDS.items():
            row = {"shape": shape_name, "bhnd": [b, h, n, d], "backend": name}
            if bench.left() < 10:
                rows.append({**row, "error": "skipped: out of time"})
                continue
            try:
                with sdpa_kernel([backend]):
                    def step():
                        torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward()
                    seconds, _ = time_steps(bench, step, 2, a.sdpa_iters, time.monotonic() + 20)
                row.update(ms=seconds * 1e3, tflops=flops / seconds / 1e12)
            except Exception as exc:  # backend not available for this shape / device
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            rows.append(row)
        if a.flex and shape_name == "mae_encoder" and bench.device.type == "cuda" and bench.left() > 60:
            rows += flex_rows(bench, (q, k, v), flops, shape_name)
        q = k = v = None
        bench.free()
    return rows


FLEX_VARIANTS = {"flex": None, "flex_64x64": {"BLOCK_M": 64, "BLOCK_N": 64}}


def flex_rows(bench: Bench, qkv: tuple[torch.Tensor, ...], flops: int, shape_name: str) -> list[dict]:
    """FlexAttention (a compiled Triton kernel) on a short sequence: does a smaller tile than the
    fused kernels' 128 rows waste less of the 157-token encoder attention? Compile time excluded."""
    from torch.nn.attention.flex_attention import flex_attention
    rows = []
    for name, options in FLEX_VARIANTS.items():
        row = {"shape": shape_name, "bhnd": list(qkv[0].shape), "backend": name}
        try:
            attend = torch.compile(flex_attention, dynamic=False)

            def step():
                attend(*qkv, kernel_options=options).sum().backward()
            seconds, _ = time_steps(bench, step, 2, bench.args.sdpa_iters, time.monotonic() + 20)
            row.update(ms=seconds * 1e3, tflops=flops / seconds / 1e12)
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        rows.append(row)
    return rows


def profile_step(bench: Bench, size: str, batch: int, compile_mode: str = "off") -> dict:
    """Kernel time of two ours-MAE steps at the timed batch (half that if the profiler's memory
    does not fit), grouped by kind, plus the top kernels (also $OUT/profile_<size>_<compile mode>.txt)."""
    out = profile_at(bench, size, batch, compile_mode)
    if "OutOfMemoryError" in out.get("error", "") and batch > 1:
        out = profile_at(bench, size, batch // 2, compile_mode)
    return out


def profile_at(bench: Bench, size: str, batch: int, compile_mode: str) -> dict:
    from torch.profiler import ProfilerActivity, profile
    a = bench.args
    out: dict = {"size": size, "batch": batch, "compile": compile_mode}
    try:
        with bench.device:
            model = build("ours", size, a.frames, a.img, False, compile_mode)
        model = model.to(torch.bfloat16).train()
        step = make_step(bench, "ours", model, batch, 0.9, None)
        step()
        step()
        bench.sync()
        cuda = bench.device.type == "cuda"
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        started = time.perf_counter()
        with profile(activities=activities) as prof:
            step()
            step()
            bench.sync()
        out["profiled_ms_per_step"] = (time.perf_counter() - started) * 1e3 / 2
        out.update(summarise(prof, cuda, steps=2))
        if cuda:
            out["alloc_retries"] = torch.cuda.memory_stats().get("num_alloc_retries")
        text = top_table(prof, cuda)
        (bench.out / f"profile_{size}_{compile_mode}.txt").write_text(text)
        out["top"] = text.splitlines()[:40]
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    finally:
        model = step = None
        bench.free()
    return out


def compile_in_child(bench: Bench, mode: str, batch: int | None, ckpt: bool = False) -> dict:
    """torch.compile'd blocks (`mode`: static or dynamic shapes; checkpointed with `ckpt`) timed, and
    profiled with --profile, in a child process, so a slow compile cannot overrun the budget."""
    a = bench.args
    limit = int(bench.left() - 15)
    if limit < 60:
        return {"error": "skipped: out of time"}
    cmd = [sys.executable, __file__, "--only-compile", mode, "--sizes", a.sizes[0], "--frames", str(a.frames),
           "--img", str(a.img), "--steps", str(a.steps), "--warmup", str(a.warmup), "--budget-s", str(limit),
           "--config-s", str(limit - 5), "--max-batch", str(a.max_batch), "--start-batch", str(a.start_batch),
           "--ckpt", "on" if ckpt else "off"]
    cmd += (["--batch", str(batch)] if batch else []) + (["--profile"] if a.profile else [])
    cmd += ["--split-baseline"] if a.split_baseline else []
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, env={**os.environ, "OUT": str(
            bench.out / "compile")})
        return json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else \
            {"error": f"child failed: {done.stderr.strip().splitlines()[-1][:200] if done.stderr.strip() else '?'}"}
    except subprocess.TimeoutExpired:
        return {"error": f"compile + timing did not finish in {limit} s"}


def compiled_config(bench: Bench) -> dict:
    """The child's work: time the compiled blocks (their compile happens in the warm-up), then profile."""
    a = bench.args
    ckpt = a.ckpt == "on"
    row = run_config(bench, "ours", a.sizes[0], ckpt, compile_mode=a.only_compile, batch=a.batch)
    if a.split_baseline and "batch" in row:
        row["split_baseline"] = run_config(bench, "ours-timm-split", a.sizes[0], ckpt,
                                           compile_mode=a.only_compile, batch=row["batch"])
    if a.profile and "batch" in row and bench.left() > 30:
        row["profile"] = profile_step(bench, a.sizes[0], row["batch"], a.only_compile)
    return row


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny model, few steps: a CPU check of this script")
    p.add_argument("--sizes", nargs="+", default=["l", "h"])
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--start-batch", type=int, default=16)
    p.add_argument("--max-batch", type=int, default=512)
    p.add_argument("--budget-s", type=float, default=330.0, help="whole run")
    p.add_argument("--config-s", type=float, default=40.0, help="per configuration (search + timing)")
    p.add_argument("--sdpa-batch", type=int, default=64)
    p.add_argument("--sdpa-iters", type=int, default=10)
    p.add_argument("--peak", type=float, default=None, help="peak TFLOP/s for MFU (default: from the GPU name)")
    p.add_argument("--compile", nargs="*", choices=["static", "dynamic"], default=None,
                   help="also time torch.compile'd blocks, per shape mode (default static), each in a child process")
    p.add_argument("--flex", action="store_true", help="also time FlexAttention on the encoder's short sequence")
    p.add_argument("--ckpt", choices=["off", "on", "both"], default="both", help="activation checkpointing settings")
    p.add_argument("--eager-batch", type=int, default=None, help="fixed micro-batch for the eager baseline")
    p.add_argument("--profile", action="store_true", help="kernel-time breakdown of an ours step (first size)")
    p.add_argument("--no-backends", dest="backends", action="store_false", help="skip the forced-SDPA-backend steps")
    p.add_argument("--split-baseline", action="store_true", help="also time ours with timm's q/k/v split")
    p.add_argument("--batch", type=int, default=None, help="fixed micro-batch instead of the search")
    p.add_argument("--only-compile", choices=["static", "dynamic"], default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.sizes, args.frames, args.img = ["tiny"], 4, 32
        args.warmup, args.steps, args.start_batch, args.max_batch = 1, 2, 2, 4
        args.sdpa_batch, args.sdpa_iters, args.config_s = 4, 2, 30.0
    return args


CKPT_SETTINGS = {"off": (False,), "on": (True,), "both": (False, True)}


def record(bench: Bench, row: dict) -> None:
    bench.results["steps"].append(row)
    bench.save()
    print(f"[{time.monotonic() - bench.start:5.0f} s] {row}", flush=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    bench = Bench(args)
    if args.only_compile:
        print(json.dumps(compiled_config(bench), default=str))
        return
    print(f"model_bench on {bench.results['device']} (budget {args.budget_s:.0f} s)", flush=True)
    bench.results["flops_check"] = flops_check(bench)
    bench.results["last_block_check"] = last_block_check(args.sizes[0], args.frames, args.img, bench.device)
    bench.save()
    print(f"[{time.monotonic() - bench.start:5.0f} s] checks done", flush=True)
    for size in args.sizes:
        for ckpt in CKPT_SETTINGS[args.ckpt]:
            for kind in ("ours", "eager"):
                batch = args.eager_batch if kind == "eager" and args.eager_batch else args.batch
                record(bench, run_config(bench, kind, size, ckpt, batch=batch))
    ours_batch = {ckpt: next((r["batch"] for r in bench.results["steps"] if r["model"] == "ours"
                              and r["size"] == args.sizes[0] and r["ckpt"] == ckpt and "clips_per_s" in r), None)
                  for ckpt in (False, True)}
    if args.split_baseline:
        record(bench, run_config(bench, "ours-timm-split", args.sizes[0], False, batch=ours_batch[False]))
    for backend in ("flash", "cudnn", "efficient") if args.backends else ():
        record(bench, run_config(bench, "ours", args.sizes[0], False, backend=backend, batch=ours_batch[False]))
    if args.profile:
        bench.results["profile"] = profile_step(bench, args.sizes[0], ours_batch[False] or 32)
        bench.save()
        print(f"[{time.monotonic() - bench.start:5.0f} s] profile {bench.results['profile'].get('ms_per_step_by_kind')}",
              flush=True)
    for mode in (args.compile or ["static"]) if args.compile is not None else ():
        for ckpt in CKPT_SETTINGS[args.ckpt]:
            row = {"model": "ours", "size": args.sizes[0], "ckpt": ckpt, "backend": "default", "compile": mode,
                   **compile_in_child(bench, mode, ours_batch[ckpt], ckpt)}
            if "profile" in row:
                bench.results.setdefault("compiled_profiles", []).append(row.pop("profile"))
            record(bench, row)
            if "split_baseline" in row:
                record(bench, row.pop("split_baseline"))
    bench.results["sdpa"] = sdpa_bench(bench)  # last: the steps above are the headline
    bench.results["elapsed_s"] = time.monotonic() - bench.start
    bench.save()
    text = table(bench.results)
    (bench.out / "model_bench.txt").write_text(text + "\n")
    print("\n" + text, flush=True)


if __name__ == "__main__":
    main()
