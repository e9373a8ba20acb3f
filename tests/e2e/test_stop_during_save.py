"""A stop signal that arrives while a checkpoint is being written: the run stops at that checkpoint.

It used to train one more step and write a second full checkpoint, which under a launcher's
SIGTERM -> SIGKILL grace period (30 s for DeepSpeed's) a large model may not finish."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HELPER = REPO / "tests" / "helpers" / "slow_save_launch.py"

pytestmark = pytest.mark.distributed


def test_a_signal_during_a_save_stops_at_that_checkpoint(tmp_path, tiny_shards):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(HELPER), "--config", str(REPO / "configs" / "demo" / "pretrain_test.yaml"),
           "--output", str(run_dir), f"data.train={tiny_shards['nohuman']}", "train.max_steps=10",
           "train.ckpt_every=4"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "SLOW_SAVE_S": "2"})
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoints" / "step_00000004").is_dir() and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    time.sleep(0.5)  # inside the step-4 save (its first file write sleeps 2 s)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output[-3000:]
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [(e["event"], e["step"]) for e in events if e["event"] in ("checkpoint", "stop")] == \
        [("checkpoint", 4), ("stop", 4)]
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == ["step_00000004"]
