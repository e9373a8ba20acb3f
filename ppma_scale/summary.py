"""One row per run, for scaling studies and sweeps: what it trained, how far, how fast, how well.

    python -m ppma_scale.summary runs/mae_vit* runs/align_* [--csv table.csv] [--overwrite]

Only what a run writes as it goes is read (config.yaml, metrics.jsonl, events.jsonl; never a
checkpoint), so it works on runs still training, on a copy without checkpoints, and on a login node.
Rates (and the share of step time spent waiting for data: near 1, the run is input-bound) are
medians over the logged windows of the run's latest attempt, its first window left out (start-up:
data workers filling, kernels warming); loss is the last logged; top-1/top-5 come from the latest
evaluation.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from .engine.metrics import EVENTS_FILE, METRICS_FILE, read_jsonl, standing_evals


@dataclass
class RunRow:
    """A run's line in the table; None where the run has not logged it (yet)."""

    run: str
    task: str | None = None
    model: str | None = None
    ranks: int | None = None
    global_batch: int | None = None
    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    status: str | None = None
    loss: float | None = None
    clips_per_s: float | None = None
    data_wait: float | None = None  # share of the step time spent waiting for the next batch
    tflops_per_gpu: float | None = None
    mfu: float | None = None
    peak_mem_gb: float | None = None
    top1: float | None = None
    top5: float | None = None


def _median(records: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in records if isinstance(r.get(key), (int, float))]
    return statistics.median(values) if values else None


def _model(config: dict[str, Any]) -> str | None:
    model, data = config.get("model") or {}, config.get("data") or {}
    if not model.get("size"):
        return None
    shape = f" {data['num_frames']}x{data['img_size']}" if data.get("num_frames") and data.get("img_size") else ""
    return f"ViT-{str(model['size']).upper()}{shape}"


def summarize_run(run_dir: str | Path) -> RunRow:
    """The row of the run in `run_dir`; ValueError when it is not a run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir} is not a directory")
    config_file, events_file = run_dir / "config.yaml", run_dir / EVENTS_FILE
    if not config_file.is_file() and not events_file.is_file():
        raise ValueError(f"{run_dir} is not a run directory: it holds neither config.yaml nor {EVENTS_FILE}")
    try:
        config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{config_file} is not readable YAML: {exc}") from None
    config = config if isinstance(config, dict) else {}
    events, metrics = read_jsonl(events_file), read_jsonl(run_dir / METRICS_FILE)
    row = RunRow(run=str(run_dir), task=(config.get("run") or {}).get("task"), model=_model(config))
    starts = [e for e in events if e.get("event") == "start"]
    latest_start = starts[-1] if starts else {}
    row.ranks = latest_start.get("world_size")
    row.total_steps = latest_start.get("total_steps")
    row.global_batch = latest_start.get("global_batch")
    if row.global_batch is None and row.ranks:  # runs from before the start event recorded it
        train = config.get("train") or {}
        if isinstance(train.get("micro_batch"), int):
            row.global_batch = train["micro_batch"] * int(train.get("grad_accum") or 1) * row.ranks
    if metrics:
        last = metrics[-1]
        row.step, row.epoch, row.loss = last.get("step"), last.get("epoch"), last.get("loss")
        attempt = [r for r in metrics if r.get("step", 0) > latest_start.get("step", 0)] or metrics
        steady = attempt[1:] or attempt
        row.clips_per_s = _median(steady, "clips_per_s")
        row.data_wait = _median(steady, "data_wait")
        row.tflops_per_gpu = _median(steady, "tflops_per_gpu")
        row.mfu = _median(steady, "mfu")
        peaks = [r["peak_mem_gb"] for r in metrics if isinstance(r.get("peak_mem_gb"), (int, float))]
        row.peak_mem_gb = max(peaks) if peaks else None
    ends = [e for e in events if e.get("event") in ("start", "end", "stop")]
    if ends:
        final = ends[-1]
        row.status = {"end": "finished", "stop": f"stopped ({final.get('signal')})"}.get(final["event"], "started")
        if final["event"] == "end" and row.step is None:
            row.step = final.get("step")
    evals = standing_evals(events)  # not those of training a rewind abandoned
    if evals:
        row.top1, row.top5 = evals[-1].get("top1"), evals[-1].get("top5")
    return row


def _cell(value: Any, name: str) -> str:
    if value is None:
        return "-"
    if name in ("mfu", "data_wait"):
        return f"{value:.1%}"
    if isinstance(value, float):
        return f"{value:.4g}" if name in ("loss", "epoch") or abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int) and name not in ("step", "total_steps"):
        return f"{value:,}"
    return str(value)


def format_table(rows: list[RunRow]) -> str:
    """An aligned text table; columns no run has a value for are left out."""
    names = [f.name for f in fields(RunRow) if any(getattr(r, f.name) is not None for r in rows)]
    cells = [[_cell(getattr(r, n), n) for n in names] for r in rows]
    widths = [max(len(n), *(len(c[i]) for c in cells)) for i, n in enumerate(names)]
    lines = ["  ".join(n.ljust(w) for n, w in zip(names, widths))]
    lines += ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
              for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def write_csv(rows: list[RunRow], path: Path) -> None:
    """Every column, raw values (empty where None), written atomically."""
    names = [f.name for f in fields(RunRow)]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        writer.writerows([["" if getattr(r, n) is None else getattr(r, n) for n in names] for r in rows])
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    from .cli import refuse_overwriting_inputs, refuse_replacing_outputs, run_tool
    parser = argparse.ArgumentParser(prog="python -m ppma_scale.summary", description=__doc__.split("\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (a shell glob such as runs/mae_*)")
    parser.add_argument("--csv", type=Path, default=None, help="also write every column to this CSV file")
    parser.add_argument("--overwrite", action="store_true", help="replace the --csv file if it exists")
    args = parser.parse_args(argv)

    def work() -> int:
        rows = [summarize_run(run) for run in args.runs]  # every path checked before anything is written
        if args.csv is not None:
            refuse_replacing_outputs([args.csv], args.overwrite)
            refuse_overwriting_inputs([args.csv], [run / name for run in args.runs
                                                   for name in ("config.yaml", METRICS_FILE, EVENTS_FILE)])
            write_csv(rows, args.csv)
        print(format_table(rows))
        return 0

    return run_tool("ppma_scale.summary", work)


if __name__ == "__main__":
    sys.exit(main())
