"""One training job at a time writes a run folder: a second launch on it is refused, naming the first.

Two jobs on one --output (a job submitted twice, or SLURM templates whose default RUN_DIR is the job
name) used to both train and both report "finished", their checkpoints and metrics interleaved."""
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
SCRIPT = REPO / "launch" / "pretrain.py"

pytestmark = pytest.mark.distributed


def test_a_second_job_on_a_running_jobs_folder_is_refused_and_the_first_finishes(tmp_path, tiny_shards):
    run_dir = tmp_path / "run"
    args = ["--config", str(REPO / "configs" / "demo" / "pretrain_test.yaml"), "--output", str(run_dir),
            f"data.train={tiny_shards['nohuman']}", "train.max_steps=400", "train.ckpt_every=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, str(SCRIPT), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, cwd=REPO, env=env)  # runs until stopped below
    deadline = time.monotonic() + 120
    while not (run_dir / "metrics.jsonl").is_file() and time.monotonic() < deadline:
        assert first.poll() is None, first.stdout.read()[-3000:]
        time.sleep(0.05)
    second = subprocess.run([sys.executable, str(SCRIPT), *args, "optim.lr=5e-3",
                             "--allow-config-change"], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert second.returncode == 2, second.stderr[-3000:]
    assert f"{run_dir} is being written by another training job (pid {first.pid} on host" in second.stderr
    assert "Traceback" not in second.stderr
    assert first.poll() is None, "the first job ended before the second was refused"
    first.send_signal(signal.SIGTERM)  # it saves and stops
    output, _ = first.communicate(timeout=120)
    assert first.returncode == 0, output[-3000:]
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1))  # the first job's steps, once each
    assert not list(run_dir.glob("config.after-*")) and not (run_dir / ".run.lock").exists()
