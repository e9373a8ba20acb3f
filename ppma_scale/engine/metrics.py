"""What a run reports: per-window throughput accounting, and rank 0's console / JSONL / TensorBoard output.

`metrics.jsonl` holds one record per logged step (step, epoch, loss, lr, grad_norm, clips_per_s,
tflops_per_gpu, mfu, data_wait, peak_mem_gb, skipped_samples, ...); `events.jsonl` holds what is not
a step's numbers (start, resume, skipped non-finite steps, checkpoints, stop). Both are appended to
and flushed per line so a killed run keeps everything it logged.
"""
from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..atomic import write_text_atomic

METRICS_FILE = "metrics.jsonl"
EVENTS_FILE = "events.jsonl"


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory of this process: allocated GPU memory on CUDA, resident host memory on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def allocator_retries(device: torch.device) -> int | None:
    """How often PyTorch's CUDA caching allocator found no cached block that fit, freed its cache and
    retried: each time synchronises the GPU, so a run near its memory limit slows down without
    failing. None off CUDA."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.memory_stats(device).get("num_alloc_retries", 0))


MEMORY_PRESSURE_HINT = ("the CUDA caching allocator had to free its cache and retry (each retry stalls the GPU): "
                        "set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True, or lower train.micro_batch, or "
                        "checkpoint more blocks (model.act_checkpoint_every)")


class ThroughputWindow:
    """Clips, optimizer steps, wall time and data-wait time since the last log line."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.started = time.perf_counter()
        self.clips = 0
        self.steps = 0
        self.data_wait = 0.0

    def add_data_wait(self, seconds: float) -> None:
        self.data_wait += seconds

    def add_step(self, clips: int) -> None:
        self.clips += clips
        self.steps += 1

    def summary(self, world_size: int, flops_per_clip: float | None, peak_tflops: float | None) -> dict[str, float]:
        """Rates over the window; clips are this rank's, so the run's rate is world_size times that."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        out = {"clips_per_s": self.clips * world_size / elapsed, "step_time_s": elapsed / max(self.steps, 1),
               "data_wait": self.data_wait / elapsed}
        if flops_per_clip:
            tflops = flops_per_clip * self.clips / elapsed / 1e12
            out["tflops_per_gpu"] = tflops
            if peak_tflops:
                out["mfu"] = tflops / peak_tflops
        return out


class LossWindow:
    """Sums of the loss and of the task's extra numbers over the applied steps since the last log line.

    Kept as device tensors, so a step adds without waiting for the device; `means` reduces over
    ranks with one collective. Every rank must report the same extra names (the task's contract).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss = torch.zeros((), device=self.device)
        self.extras: dict[str, torch.Tensor] = {}
        self.steps = 0

    def add(self, loss: torch.Tensor, extras: dict[str, Any]) -> None:
        self.loss += loss
        for name, value in extras.items():
            value = torch.as_tensor(value, device=self.device).detach().float()
            self.extras[name] = self.extras[name] + value if name in self.extras else value
        self.steps += 1

    def means(self) -> dict[str, float | None]:
        """{'loss': mean over steps and ranks (None if no step was applied anywhere), extra: mean, ...}."""
        import torch.distributed as dist
        names = sorted(self.extras)
        totals = torch.stack([self.loss.float(), *[self.extras[n] for n in names],
                              torch.tensor(float(self.steps), device=self.device)]).double()
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(totals)
        values = totals.tolist()
        steps = values[-1]
        return {name: (value / steps if steps else None) for name, value in zip(["loss", *names], values[:-1])}


def _format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def format_record(record: dict[str, Any], total_steps: int, eta_s: float | None) -> str:
    """One console line for a metrics record."""
    parts = [f"step {record['step']}/{total_steps}", f"ep {record.get('epoch', 0):.2f}",
             "loss -" if record["loss"] is None else f"loss {record['loss']:.4f}", f"lr {record['lr']:.2e}"]
    if record.get("grad_norm") is not None:
        parts.append(f"gnorm {record['grad_norm']:.3f}")
    parts.append(f"| {record['clips_per_s']:.1f} clips/s")
    if "tflops_per_gpu" in record:
        parts.append(f"{record['tflops_per_gpu']:.3g} TFLOP/s/gpu")
    if "mfu" in record:
        parts.append(f"MFU {100 * record['mfu']:.1f}%")
    parts.append(f"data {100 * record['data_wait']:.0f}%")
    parts.append(f"mem {record['peak_mem_gb']:.1f}G")
    if record.get("alloc_retries_in_window"):
        parts.append(f"alloc retries {record['alloc_retries_in_window']}")
    if record.get("skipped_samples"):
        parts.append(f"skipped {record['skipped_samples']}")
    if eta_s is not None:
        parts.append(f"| eta {_format_duration(eta_s)}")
    return " ".join(parts)


def _split_jsonl(path: Path) -> tuple[list[str], int | None]:
    """The JSON lines of `path` and the line number of a torn last line that was left out (or None).
    Only the last line may be torn; an unreadable line before it is a ValueError naming file:line."""
    lines = path.read_text(errors="replace").split("\n")
    numbered = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    kept, torn = [], None
    for index, (number, line) in enumerate(numbered):
        try:
            json.loads(line)
        except ValueError as exc:
            if index == len(numbered) - 1:
                torn = number
                break
            raise ValueError(f"{path}:{number}: not a JSON record ({exc}); only a torn last line is dropped "
                             "on resume: repair or remove that line") from None
        kept.append(line)
    return kept, torn


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSONL log (none if it does not exist), a torn last line left out."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in _split_jsonl(path)[0]]


def standing_evals(events: list[dict]) -> list[dict]:
    """The `eval` events of the run as it now stands: a (re)start at step S drops the evaluations
    logged after S, which belong to training a rewind abandoned (events.jsonl keeps its whole history)."""
    evals: list[dict] = []
    for event in events:
        if event.get("event") == "start":
            evals = [e for e in evals if e.get("step", 0) <= event.get("step", 0)]
        elif event.get("event") == "eval":
            evals.append(event)
    return evals


class MetricsLogger:
    """Writes metrics and events on rank 0; a no-op elsewhere."""

    def __init__(self, run_dir: Path, is_main: bool, total_steps: int, tensorboard: bool = False) -> None:
        self.is_main = is_main
        self.total_steps = total_steps
        self.run_dir = Path(run_dir)
        self._writer = None
        self._bar = None  # a progress bar on rank 0 when the console is a terminal
        self._started = time.perf_counter()
        self._first_step: int | None = None
        if is_main and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ValueError("train.tensorboard=true needs the tensorboard package "
                                 "(pip install tensorboard, or the [tensorboard] extra)") from exc
            self._writer = SummaryWriter(str(self.run_dir / "tensorboard"))

    def keep_until(self, step: int) -> None:
        """On resume: move the records logged after `step` by the run that was interrupted (or
        abandoned, when resuming from an earlier checkpoint) to metrics.after-step_<step>.jsonl, and
        drop a torn last line (a crash or a full disk mid-write) of metrics.jsonl or events.jsonl."""
        if not self.is_main:
            return
        for name in (METRICS_FILE, EVENTS_FILE):
            path = self.run_dir / name
            if not path.is_file():
                continue
            lines, torn = _split_jsonl(path)
            if torn is not None:
                print(f"WARNING: {path}:{torn}: dropped a torn last line (the run was killed while writing it)",
                      file=sys.stderr, flush=True)
            kept, later = lines, []
            if name == METRICS_FILE:
                after = [json.loads(line).get("step", 0) > step for line in lines]
                kept = [line for line, drop in zip(lines, after) if not drop]
                later = [line for line, drop in zip(lines, after) if drop]
            if later:
                archive = path.with_name(f"{path.stem}.after-step_{step}{path.suffix}")
                with open(archive, "a") as handle:  # appended: a run may rewind to the same step twice
                    handle.write("".join(line + "\n" for line in later))
                    handle.flush()
                    os.fsync(handle.fileno())
                what = (f"resuming at step {step}" if step else
                        "no checkpoint to resume (an earlier attempt saved none)")
                print(f"{what}: moved {len(later)} later records of {path.name} to {archive.name}", flush=True)
            if torn is not None or later:
                write_text_atomic(path, "".join(line + "\n" for line in kept))

    def progress(self, step: int) -> None:
        """Advance the progress bar (rank 0, interactive consoles only) to `step`."""
        if not (self.is_main and sys.stdout.isatty()):
            return
        if self._bar is None:
            from tqdm import tqdm
            self._bar = tqdm(total=self.total_steps, initial=step - 1, unit="step", dynamic_ncols=True, leave=False)
        self._bar.update(step - self._bar.n)

    def _print(self, text: str, stream=None) -> None:
        if self._bar is not None:
            self._bar.write(text, file=stream or sys.stdout)
        else:
            print(text, file=stream or sys.stdout, flush=True)

    def log(self, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        step = record["step"]
        # ETA from the interval between the first logged step and this one: steps first+1..step
        # ran in that time. The first line has no measured interval yet, so it shows no ETA.
        if self._first_step is None:
            self._first_step, self._started = step, time.perf_counter()
        done = step - self._first_step
        eta = (time.perf_counter() - self._started) / done * (self.total_steps - step) if done > 0 else None
        self._append(METRICS_FILE, record)
        self._print(format_record(record, self.total_steps, eta))
        if self._writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._writer.add_scalar(f"train/{key}", value, step)

    def event(self, name: str, message: str | None = None, **fields: Any) -> None:
        if not self.is_main:
            return
        self._append(EVENTS_FILE, {"event": name, "time": time.time(), **fields})
        if message:
            self._print(message, sys.stderr if name in ("nonfinite", "error", "memory_pressure") else sys.stdout)

    def _append(self, name: str, record: dict[str, Any]) -> None:
        with open(self.run_dir / name, "a") as handle:
            handle.write(json.dumps(record, allow_nan=True) + "\n")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
