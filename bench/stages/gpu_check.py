"""GPU check of the stages after stage 1 (one CUDA rank, bf16): what the CPU tests cannot show.

    python bench/stages/gpu_check.py --work /tmp/stages_gpu [--out DIR]

On tiny real shards (tests/conftest.py's recipe) it runs, through the real deepspeed launcher on
one GPU: align (ZeRO-2, bf16) from an MAE weights file; the linear probe (ZeRO-2 and ZeRO-3, bf16,
features cached by calling the frozen trunk outside the engine's forward); fine-tuning with adaptive
averaging (ZeRO-3, bf16); then launch/evaluate.py on the probe. It checks exit codes, finite losses,
a bit-identical frozen trunk (in the module's bf16), a learned alpha and that the standalone test
reproduces the in-training one, and writes a JSON summary. Not a benchmark: no timings are claimed.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def launch(script: str, config: str, run_dir: Path, *overrides: str) -> dict:
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "1", "--master_port", "29731",
           str(REPO / "launch" / script), "--config", str(REPO / "configs" / "demo" / config), "--output",
           str(run_dir), "train.precision=bf16", *overrides]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=400)
    (run_dir.parent / f"{run_dir.name}.log").write_text(done.stdout + done.stderr)
    result = {"run": run_dir.name, "rc": done.returncode, "wall_s": round(time.perf_counter() - start, 1)}
    if done.returncode == 0:
        metrics = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
        result["losses"] = [round(m["loss"], 4) for m in metrics]
        result["finite"] = all(math.isfinite(m["loss"]) for m in metrics)
        evals = sorted((run_dir / "eval").glob("step_*.json"))
        if evals:
            result["eval"] = {k: json.loads(evals[-1].read_text())[k] for k in ("top1", "top5", "videos")}
    else:
        result["tail"] = (done.stdout + done.stderr)[-3000:]
    print(json.dumps(result), flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import torch
    from safetensors.torch import save_file
    from conftest import _build_tiny_shards
    from ppma_scale.config import load_config
    from ppma_scale.engine.pretrained import read_state_dict
    from ppma_scale.models import build_mae

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    summary: dict = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"}
    shards = _build_tiny_shards(work / "shards", "h264")
    cfg = load_config(REPO / "configs" / "demo" / "pretrain_test.yaml", ["data.train=unused"])
    torch.manual_seed(11)
    mae = build_mae(cfg.model, cfg.mae, cfg.data.num_frames, cfg.data.img_size)
    weights = work / "mae.safetensors"
    save_file({k: v.contiguous() for k, v in mae.state_dict().items()}, str(weights))
    down = [f"data.train={shards['downstream_train']}", f"data.val={shards['downstream_val']}"]
    mix = f"data.train=[{{manifest: {shards['synthetic']}}}, {{manifest: {shards['nohuman']}}}]"

    runs = {}
    runs["align"] = launch("align.py", "align_test.yaml", work / "align", f"model.init={weights}", mix,
                           f"data.val={shards['downstream_val']}")
    for stage in (2, 3):
        runs[f"lp_zero{stage}"] = launch("linprobe.py", "linprobe_test.yaml", work / f"lp_zero{stage}",
                                         f"model.init={work / 'align'}", f"train.zero_stage={stage}", *down)
    runs["avg_zero3"] = launch("finetune.py", "finetune_test.yaml", work / "avg_zero3", "model.init=null",
                               f"model.average=[{weights}, {work / 'align'}]", "train.zero_stage=3", *down)
    summary["runs"] = runs

    checks = {}
    if runs["align"]["rc"] == 0:
        aligned = read_state_dict(work / "align")
        for name in ("lp_zero2", "lp_zero3"):
            if runs[name]["rc"] == 0:
                probe = read_state_dict(work / name)
                keys = [k for k in probe if k.startswith("encoder.")]
                # the engine holds the frozen trunk in bf16: identical to the init cast to bf16
                checks[f"{name}_trunk_identical"] = bool(keys) and all(
                    torch.equal(probe[k].to(torch.bfloat16), aligned[k].to(torch.bfloat16)) for k in keys)
    if runs["avg_zero3"]["rc"] == 0:
        alpha = read_state_dict(work / "avg_zero3")["encoder.alpha"]
        checks["alpha_learned"] = bool(alpha.abs().max() > 0)
        checks["alpha"] = alpha.tolist()
    if runs.get("lp_zero2", {}).get("rc") == 0:
        done = subprocess.run([sys.executable, str(REPO / "launch" / "evaluate.py"), str(work / "lp_zero2")],
                              capture_output=True, text=True, cwd=REPO, timeout=300)
        checks["evaluate_rc"] = done.returncode
        if done.returncode == 0:
            standalone = json.loads(next((work / "lp_zero2" / "eval").glob("test_step_*.json")).read_text())
            trained = json.loads(sorted((work / "lp_zero2" / "eval").glob("step_*.json"))[-1].read_text())
            checks["evaluate_top1"] = [standalone["top1"], trained["top1"]]
        else:
            checks["evaluate_tail"] = done.stderr[-2000:]
    summary["checks"] = checks
    text = json.dumps(summary, indent=1)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "stages_gpu_check.json").write_text(text)
        for log in work.glob("*.log"):
            (args.out / log.name).write_text(log.read_text()[-20000:])
    ok = all(r["rc"] == 0 and r.get("finite") for r in runs.values()) and all(
        v for k, v in checks.items() if k.endswith(("identical", "learned")))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
