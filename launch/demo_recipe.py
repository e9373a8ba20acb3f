#!/usr/bin/env python
"""The whole PPMA recipe on the demo corpora, after stage 1, ending in a linear-probe table.

    python launch/demo_recipe.py --data demo_data --runs runs/demo    (after a stage-1 run in RUNS/mae)

`launch/demo.py` (what `make demo` runs) does stage 1 and ends with
`run_after_stage1(data_dir, runs_dir, ranks, stage1_run_dir)` from here, which takes the trunk and
clip geometry from the stage-1 run's config.yaml and then does:
1. render + pack the `synthetic` corpus (stick-figure "virtual humans") and the `downstream`
   corpus (same actions, rendered differently; train + held-out val);
2. stage 2, `launch/align.py --config configs/demo/align.yaml`: the stage-1 trunk classifies
   synthetic + no-human clips over their shared label space (2 CPU ranks, ZeRO-2);
3. `launch/linprobe.py --config configs/demo/linprobe.yaml` three times on `downstream` — a
   randomly initialised trunk, the MAE-only trunk (stage 1), the PPMA trunk (stage 1 + 2) — each
   frozen, features cached once, multi-view test on the val clips;
4. prints (and writes to RUNS/results.md) the table of linear-probe accuracies.
A stage whose run already finished is not run again, so a second call only reprints the table.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "launch"))

from demo import DEMO_CORPUS, finished, prepare_corpus, prepare_shards, run_stage  # noqa: E402 (after sys.path)

# 256 train + 256 held-out clips: the probe's top-1 moves in steps of 0.4 points (binomial SE ~3 near 50%)
DOWNSTREAM_CORPUS = dict(DEMO_CORPUS, clips_per_class=64, seed=1, val_fraction=0.5)
ALIGN_WEIGHTS = (0.85, 0.15)  # synthetic : labelled nohuman batches in stage 2, about their sizes
TRUNKS = (  # (row label, run name, where its weights come from: a stage run name or None = random)
    ("random init (no pretraining)", "linprobe_random", None),
    ("MAE only (stage 1 on nohuman)", "linprobe_mae", "mae"),
    ("PPMA (MAE + align on synthetic)", "linprobe_ppma", "align"),
)


def prepare_downstream(data_dir: Path) -> list[Path]:
    """Render and pack the downstream corpus's train and val splits (reused when already packed)."""
    return prepare_corpus("downstream", data_dir, DOWNSTREAM_CORPUS, splits=("train", "val"))


def final_eval(run_dir: Path) -> dict:
    files = sorted((run_dir / "eval").glob("step_*.json"))
    if not files:
        raise SystemExit(f"[demo] {run_dir} has no evaluation results in eval/")
    return json.loads(files[-1].read_text())


def format_table(rows: list[tuple[str, dict]], views: int) -> str:
    lines = ["| trunk (frozen, linear probe on `downstream`) | top-1 % | top-5 % | mean class % |",
             "|---|---:|---:|---:|"]
    for label, m in rows:
        lines.append(f"| {label} | {m['top1']:.1f} | {m['top5']:.1f} | {m['mean_class_acc']:.1f} |")
    videos = rows[0][1]["videos"]
    lines.append(f"\n{videos} held-out videos x {views} views each (clips x crops, scores averaged per video); "
                 f"chance = {100 / len(rows[0][1]['confusion']):.1f}%.")
    return "\n".join(lines)


TRUNK_KEYS = ("model.size", "model.embed_dim", "model.depth", "model.num_heads", "model.mlp_ratio", "model.patch_size",
              "model.tubelet", "model.qkv_bias", "model.layer_scale", "model.pos_embed", "data.num_frames",
              "data.img_size", "data.sampling", "data.stride", "data.window_s", "data.short_side")


def trunk_overrides(stage1_dir: Path) -> list[str]:
    """The stage-1 run's trunk and clip geometry as overrides, so later stages always fit its weights."""
    import yaml
    resolved = yaml.safe_load((stage1_dir / "config.yaml").read_text())
    out = []
    for key in TRUNK_KEYS:
        section, name = key.split(".")
        value = resolved[section][name]
        out.append(f"{key}={'null' if value is None else json.dumps(value)}")
    return out


def run_after_stage1(data_dir: Path, runs: Path, ranks: int, mae_dir: Path) -> str:
    """Stages 2 and 3 of the demo after the stage-1 run in `mae_dir`; returns the table it printed."""
    timings = {}
    synthetic = prepare_shards("synthetic", data_dir)
    nohuman = data_dir / "shards" / "nohuman" / "manifest.json"
    down_train, down_val = prepare_downstream(data_dir)
    geometry = trunk_overrides(mae_dir)
    align_dir = runs / "align"
    mix = (f"data.train=[{{manifest: {synthetic}, weight: {ALIGN_WEIGHTS[0]}}}, "
           f"{{manifest: {nohuman}, weight: {ALIGN_WEIGHTS[1]}}}]")
    timings["align"] = run_stage("launch/align.py", "configs/demo/align.yaml", align_dir,
                                 [f"model.init={mae_dir}", mix, *geometry], ranks, inputs=[mae_dir, synthetic, nohuman])
    sources = {"mae": mae_dir, "align": align_dir}
    rows = []
    for label, name, source in TRUNKS:
        init = f"model.init={sources[source]}" if source else "model.init=null"
        timings[name] = run_stage("launch/linprobe.py", "configs/demo/linprobe.yaml", runs / name,
                                  [init, f"data.train={down_train}", f"data.val={down_val}", *geometry], ranks,
                                  inputs=[*([sources[source]] if source else []), down_train, down_val])
        rows.append((label, final_eval(runs / name)))
    from ppma_scale.config import load_config
    cfg = load_config(runs / TRUNKS[0][1] / "config.yaml")
    table = format_table(rows, cfg.data.test_clips * cfg.data.test_crops)
    spent = ", ".join(f"{k} {v:.0f}s" for k, v in timings.items() if v)
    print("\n[demo] linear probe of each trunk on the downstream corpus:\n\n" + table + "\n", flush=True)
    if spent:
        print(f"[demo] wall time of the stages run now: {spent}", flush=True)
    (runs / "results.md").write_text(table + "\n")
    print(f"[demo] table written to {runs / 'results.md'}; run directories under {runs}", flush=True)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--data", type=Path, default=Path("demo_data"), help="where corpora and shards go")
    parser.add_argument("--runs", type=Path, default=Path("runs/demo"), help="where run directories go")
    parser.add_argument("--ranks", type=int, default=2, help="CPU ranks (deepspeed --num_gpus)")
    parser.add_argument("--stage1", type=Path, default=None, help="the stage-1 run (default RUNS/mae)")
    args = parser.parse_args(argv)
    data_dir, runs = args.data.resolve(), args.runs.resolve()
    stage1 = (args.stage1 or runs / "mae").resolve()
    if not finished(stage1):
        raise SystemExit(f"[demo] {stage1} holds no finished stage-1 run: run `python launch/demo.py` (all "
                         "stages) or pass --stage1")
    run_after_stage1(data_dir, runs, args.ranks, stage1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
