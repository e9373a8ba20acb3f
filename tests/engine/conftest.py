"""Shared by the engine tests that drive the real trainer in a child process (helpers/*_worker.py)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest


def _run_worker(worker: Path, out: Path) -> dict:
    """Run `python WORKER OUT` (a fresh interpreter: DeepSpeed and its process group start clean) and
    return the OUT/outcomes.json it writes."""
    done = subprocess.run([sys.executable, str(worker), str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((out / "outcomes.json").read_text())


@pytest.fixture(scope="session")
def run_worker() -> Callable[[Path, Path], dict]:
    return _run_worker
