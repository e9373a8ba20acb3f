#!/usr/bin/env python
"""`make demo`: render the demo corpus, pack it into shards, pretrain a tiny video MAE on 2 CPU ranks.

    python launch/demo.py --data demo_data --runs runs/demo

Steps (each skipped when its output already exists, so a second call resumes rather than redoes; a
`demo_stamp.json` in each shard folder and run directory records what it was made from, and one made
by another version of the recipe is reported, never reused or overwritten):
1. `shards_tools.synth` renders the figure-free `nohuman` corpus (procedural scenes, 8 classes);
2. `shards_tools.pack` writes it as WebDataset shards + manifest.json;
3. `deepspeed --num_gpus 2 launch/pretrain.py --config configs/demo/pretrain.yaml` trains (ZeRO-2,
   gloo on CPU), resuming from `latest` if an earlier demo run was interrupted;
4. the MAE loss at the start and the end of the run is printed from metrics.jsonl.
"""
from __future__ import annotations

import argparse
import hashlib
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


STAMP = "demo_stamp.json"  # in every shard folder and run directory the demo makes: what it was made from


def claim(directory: Path, stamp: dict) -> None:
    """Let the demo reuse `directory` only when it was made from exactly `stamp` (an update that changed
    the recipe would otherwise print the old recipe's results as the new one's); stamps a new one."""
    stamp = json.loads(json.dumps(stamp, sort_keys=True))  # tuples -> lists, as read back from the file
    path = directory / STAMP
    if path.is_file():
        made_from = json.loads(path.read_text())
        if made_from == stamp:
            return
        changed = sorted(k for k in stamp.keys() | made_from.keys() if stamp.get(k) != made_from.get(k))
        reason = f"was made from other {', '.join(changed)} than this demo uses now"
    elif directory.is_dir() and any(directory.iterdir()):
        reason = f"holds output of an earlier version of the demo (it has no {STAMP})"
    else:
        directory.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")
        return
    raise SystemExit(f"[demo] {directory} {reason}; it was left as it is. Move it away, start over with "
                     "`make clean-demo` (removes the demo's data and runs), or pass other --data / --runs.")


def prepare_corpus(kind: str, data_dir: Path, corpus: dict, splits: tuple[str, ...] = ("train",)) -> list[Path]:
    """Render and pack one demo corpus, one shard folder per split; their manifests (reused when packed)."""
    from shards_tools.pack import pack
    from shards_tools.synth import render_corpus
    folders = [data_dir / "shards" / (kind if splits == ("train",) else f"{kind}_{split}") for split in splits]
    for split, folder in zip(splits, folders):
        claim(folder, {"corpus": dict(corpus, kind=kind), "split": split, "pack": DEMO_PACK})
    manifests = [folder / "manifest.json" for folder in folders]
    if all(m.is_file() for m in manifests):
        print(f"[demo] {kind} shards: {', '.join(map(str, manifests))} (already there)")
        return manifests
    print(f"[demo] rendering the {kind} corpus ...", flush=True)
    paths = render_corpus(kind, data_dir / "corpora" / kind, workers=DEMO_WORKERS, **corpus)
    print(f"[demo] packing {kind} into shards ...", flush=True)
    for split, folder in zip(splits, folders):
        pack(paths[split], folder, dataset=kind, workers=DEMO_WORKERS, progress=False, **DEMO_PACK)
    return manifests


def prepare_shards(kind: str, data_dir: Path) -> Path:
    """The train shards of the `nohuman` or `synthetic` demo corpus; returns its manifest path."""
    return prepare_corpus(kind, data_dir, dict(DEMO_CORPUS, clips_per_class=DEMO_CLIPS_PER_CLASS[kind]))[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def deepspeed_command(ranks: int, script: str, args: list[str]) -> list[str]:
    """`deepspeed --num_gpus N script args` with this interpreter's launcher (no PATH assumptions)."""
    launcher = shutil.which("deepspeed", path=str(Path(sys.executable).parent)) or shutil.which("deepspeed")
    head = [launcher] if launcher else [sys.executable, "-m", "deepspeed.launcher.runner"]
    return [*head, "--num_gpus", str(ranks), "--master_port", str(_free_port()), str(REPO / script), *args]


def finished(run_dir: Path) -> bool:
    """True when the run's latest checkpoint is its last step (the stage need not run again)."""
    from ppma_scale.engine.checkpoint import latest_checkpoint
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    if ckpt is None:
        return False
    marker = json.loads((ckpt.path / "ppma_complete.json").read_text())
    return ckpt.step >= int(marker.get("total_steps", ckpt.step + 1))


def run_stamp(script: str, config: str, overrides: list[str], inputs: list[Path]) -> dict:
    """What a stage's run is made from: script, resolved config, and the bytes of its input manifests
    (and, for an upstream run directory, that run's own stamp)."""
    from ppma_scale.config import config_to_dict, load_config
    resolved = json.dumps(config_to_dict(load_config(REPO / config, overrides)), sort_keys=True, default=str)

    def digest(path: Path) -> str:
        return hashlib.sha256((path / STAMP if path.is_dir() else path).read_bytes()).hexdigest()
    return {"script": script, "config": hashlib.sha256(resolved.encode()).hexdigest(),
            "inputs": {str(path): digest(path) for path in inputs}}


def run_stage(script: str, config: str, run_dir: Path, overrides: list[str], ranks: int,
              inputs: list[Path]) -> float:
    """Run one stage through deepspeed unless it already finished from the same inputs; its wall time (s)."""
    claim(run_dir, run_stamp(script, config, overrides, inputs))
    if finished(run_dir):
        print(f"[demo] {run_dir.name}: already finished, reusing it", flush=True)
        return 0.0
    start = time.perf_counter()
    cmd = deepspeed_command(ranks, script, ["--config", str(REPO / config), "--output", str(run_dir), *overrides])
    print("[demo] " + " ".join(cmd), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or ranks) // ranks))}
    done = subprocess.run(cmd, cwd=REPO, env=env)
    if done.returncode != 0:
        raise SystemExit(f"[demo] {script} failed with exit code {done.returncode}; run `make demo` again "
                         f"to resume from its last checkpoint")
    return time.perf_counter() - start


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--data", type=Path, default=Path("demo_data"), help="where corpora and shards go")
    parser.add_argument("--runs", type=Path, default=Path("runs/demo"), help="where run directories go")
    parser.add_argument("--ranks", type=int, default=2, help="CPU ranks (deepspeed --num_gpus)")
    args = parser.parse_args(argv)
    data_dir, runs = args.data.resolve(), args.runs.resolve()
    start = time.perf_counter()
    nohuman = prepare_shards("nohuman", data_dir)
    mae_dir = runs / "mae"
    run_stage("launch/pretrain.py", "configs/demo/pretrain.yaml", mae_dir, [f"data.train={nohuman}"], args.ranks,
              inputs=[nohuman])
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
