"""The text report of bench/gpu/model_bench.py's results (model_bench.json -> model_bench.txt)."""
from __future__ import annotations


def table(results: dict) -> str:
    lines = [f"device {results['device']}  torch {results['torch']}  cuda {results['cuda']}  "
             f"cudnn {results['cudnn']}  peak {results['peak_tflops']} TFLOP/s (bf16 dense)"]
    for impl, r in results["flops_check"].items():
        lines.append(f"FLOPs check ({impl} attention): counted/analytic = {r['ratio']:.4f} "
                     f"({r['analytic_per_clip'] / 1e12:.4f} TFLOP/clip analytic)")
    lines.append("\ndecoder last block, bf16 vs fp32 reference, max |error| / max |reference| "
                 "(last_only should match full):")
    for r in results.get("last_block_check", []):
        if "error" in r:
            lines.append(f"  {r['backend']:9} {r['error'][:80]}")
            continue
        lines.append(f"  {r['backend']:9} " + "  ".join(
            f"{what} {r['last_only_' + what]:.2e} / {r['full_' + what]:.2e}" for what in ("out", "grad_x", "grad_qkv")))
    lines.append(f"\n{'shape':12} {'b,h,n,d':18} {'backend':9} {'ms':>8} {'TFLOP/s':>8}")
    for r in results["sdpa"]:
        value = f"{r['ms']:8.2f} {r['tflops']:8.1f}" if "ms" in r else r["error"][:60]
        lines.append(f"{r['shape']:12} {','.join(map(str, r['bhnd'])):18} {r['backend']:9} {value}")
    lines.append(f"\n{'model':15} {'size':4} {'ckpt':5} {'sdpa':9} {'compile':7} {'batch':>5} {'clips/s':>8} "
                 f"{'TFLOP/s':>8} {'MFU':>6} {'peak GB':>8} {'step ms':>8}")
    for r in results["steps"]:
        head = f"{r['model']:15} {r['size']:4} {str(r['ckpt']):5} {r['backend']:9} {str(r['compile']):7}"
        if "error" in r:
            lines.append(f"{head} {r['error'][:80]}")
        else:
            peak = f"{r['peak_gb']:8.1f}" if r["peak_gb"] is not None else f"{'-':>8}"
            lines.append(f"{head} {r['batch']:5d} {r['clips_per_s']:8.1f} {r['tflops']:8.1f} {r['mfu']:6.1%} "
                         f"{peak} {r['step_ms']:8.1f}")
    for profile in [results.get("profile"), *results.get("compiled_profiles", [])]:
        if profile:
            lines.append(f"\nkernel time per ours step, ViT-{profile['size'].upper()} batch {profile['batch']}, "
                         f"compile {profile.get('compile', 'off')} (ms): "
                         + (", ".join(f"{k} {v:.1f}" for k, v in profile.get("ms_per_step_by_kind", {}).items())
                            or profile.get("error", "")))
            if "gpu_busy_ms_per_step" in profile:
                lines.append(f"  GPU busy {profile['gpu_busy_ms_per_step']:.1f} of {profile['profiled_ms_per_step']:.1f} "
                             f"ms per profiled step; allocator retries so far: {profile.get('alloc_retries')}")
    return "\n".join(lines + results["notes"])
