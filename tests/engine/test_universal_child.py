"""The universal-checkpoint conversion runs in a child process. SLURM's time-limit warning (SIGUSR1)
or a launcher's SIGTERM reaches the whole process group: the rank stops cleanly after the work, but
the child died of it and the run exited 1 with an empty error (so it was not requeued)."""
from __future__ import annotations

import sys
from pathlib import Path

from ppma_scale.engine.checkpoint import convert_to_universal, exit_status, run_ignoring_stop_signals

SIGNALS_ITSELF = """
import os, signal, time
for signum in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
    os.kill(os.getpid(), signum)
time.sleep(0.2)
print("converted")
"""


def test_the_conversion_child_outlives_the_stop_signals_its_process_group_gets():
    done = run_ignoring_stop_signals([sys.executable, "-c", SIGNALS_ITSELF])
    assert done.returncode == 0 and done.stdout.strip() == "converted", done.stderr


def test_a_failed_conversion_names_how_the_child_ended(tmp_path: Path):
    assert exit_status(1) == "exit code 1" and exit_status(-9) == "killed by SIGKILL"
    error = convert_to_universal(tmp_path / "step_00000004", tmp_path / "universal" / "step_00000004")
    assert error is not None and "to a universal checkpoint (to resume on a different number of ranks) failed " \
        "(exit code " in error
