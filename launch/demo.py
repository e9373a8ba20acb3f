#!/usr/bin/env python
"""`make demo`: render the demo corpus, pack it into shards, pretrain a tiny video MAE on 2 CPU ranks.

    python launch/demo.py --data demo_data --runs runs/demo

Steps (each skipped when its output already exists, so a second call resumes rather than redoes):
1. `shards_tools.synth` renders the figure-free `nohuman` corpus (procedural scenes, 8 classes);
2. `shards_tools.pack` writes it as WebDataset shards + manifest.json;
3. `deepspeed --num_gpus 2 launch/pretrain.py --config configs/demo/pretrain.yaml` trains (ZeRO-2,
   gloo on CPU), resuming from `latest` if an earlier demo run was interrupted;
4. the MAE loss at the start and the end of the run is printed from metrics.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEMO_CORPUS = dict(num_classes=8, frames=32, width=128, height=96, fps=15.0, seed=0, val_fraction=0.0)
# clips per class: stage 2 needs many figures to learn the actions rather than each clip's look
DEMO_CLIPS_PER_CLASS = {"nohuman": 24, "synthetic": 128}
DEMO_PACK = dict(short_side=72, gop=8, min_frames=16, max_samples=24)
DEMO_WORKERS = min(4, os.cpu_count() or 1)  # render / pack processes


def prepare_shards(kind: str, data_dir: Path) -> Path:
    """Render and pack one demo corpus; returns its manifest path (reused when already packed)."""
    from shards_tools.pack import pack
    from shards_tools.synth import render_corpus
    shards = data_dir / "shards" / kind
    manifest = shards / "manifest.json"
    if manifest.is_file():
        print(f"[demo] {kind} shards: {manifest} (already there)")
        return manifest
    print(f"[demo] rendering the {kind} corpus ...", flush=True)
    paths = render_corpus(kind, data_dir / "corpora" / kind, clips_per_class=DEMO_CLIPS_PER_CLASS[kind],
                          workers=DEMO_WORKERS, **DEMO_CORPUS)
    print(f"[demo] packing {kind} into shards ...", flush=True)
    pack(paths["train"], shards, dataset=kind, workers=DEMO_WORKERS, progress=False, **DEMO_PACK)
    return manifest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def deepspeed_command(ranks: int, script: str, args: list[str]) -> list[str]:
    """`deepspeed --num_gpus N script args` with this interpreter's launcher (no PATH assumptions)."""
    launcher = shutil.which("deepspeed", path=str(Path(sys.executable).parent)) or shutil.which("deepspeed")
    head = [launcher] if launcher else [sys.executable, "-m", "deepspeed.launcher.runner"]
    return [*head, "--num_gpus", str(ranks), "--master_port", str(_free_port()), str(REPO / script), *args]


def run_stage(script: str, config: str, run_dir: Path, overrides: list[str], ranks: int) -> None:
    cmd = deepspeed_command(ranks, script, ["--config", str(REPO / config), "--output", str(run_dir), *overrides])
    print("[demo] " + " ".join(cmd), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or ranks) // ranks))}
    done = subprocess.run(cmd, cwd=REPO, env=env)
    if done.returncode != 0:
        raise SystemExit(f"[demo] {script} failed with exit code {done.returncode}; run `make demo` again "
                         f"to resume from its last checkpoint")


def loss_fall(run_dir: Path, share: float = 0.1) -> dict[str, float]:
    """First and last logged MAE loss, and the means over the first and last `share` of the records."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    logged = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    if not logged:
        raise SystemExit(f"[demo] {run_dir}/metrics.jsonl holds no losses")
    k = max(1, int(len(logged) * share))
    return {"first_step": logged[0][0], "first": logged[0][1], "last_step": logged[-1][0], "last": logged[-1][1],
            "head_mean": sum(l for _, l in logged[:k]) / k, "tail_mean": sum(l for _, l in logged[-k:]) / k}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("demo_data"), help="where corpora and shards go")
    parser.add_argument("--runs", type=Path, default=Path("runs/demo"), help="where run directories go")
    parser.add_argument("--ranks", type=int, default=2, help="CPU ranks (deepspeed --num_gpus)")
    args = parser.parse_args(argv)
    data_dir, runs = args.data.resolve(), args.runs.resolve()
    start = time.perf_counter()
    nohuman = prepare_shards("nohuman", data_dir)
    mae_dir = runs / "mae"
    run_stage("launch/pretrain.py", "configs/demo/pretrain.yaml", mae_dir, [f"data.train={nohuman}"], args.ranks)
    fall = loss_fall(mae_dir)
    print(f"\n[demo] stage 1, video MAE on 2 CPU ranks (ZeRO-2): loss {fall['first']:.3f} at step "
          f"{fall['first_step']} -> {fall['last']:.3f} at step {fall['last_step']} (means of the first / last "
          f"10% of logged steps: {fall['head_mean']:.3f} -> {fall['tail_mean']:.3f}, "
          f"{100 * (1 - fall['tail_mean'] / fall['head_mean']):.0f}% lower)")
    print(f"[demo] run directory: {mae_dir} (config.yaml, metrics.jsonl, checkpoints/)")
    from demo_recipe import run_after_stage1  # stages 2 and 3: align, linear probes, the table
    run_after_stage1(data_dir, runs, args.ranks, mae_dir)
    print(f"[demo] done in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
