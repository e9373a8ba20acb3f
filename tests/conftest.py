"""Shared fixtures: tiny real shard sets, rendered by `shards_tools.synth` and packed by `shards_tools.pack`.

`tiny_shards` (H.264/mp4) and `tiny_shards_vp9` (VP9/webm, for DALI's CPU decoder) each return

    {"synthetic": Path, "nohuman": Path, "downstream_train": Path, "downstream_val": Path}

paths of `manifest.json` files. Every set has the 4 classes wave, jump, squat, walk; clips are
24 frames of 64x48 px at 12 fps (2 s), packed at short side 48 with a keyframe every 8 frames:

- synthetic, nohuman:  4 clips per class = 16 samples in 4 shards of 4
- downstream_train:    4 clips per class = 16 samples in 4 shards of 4
- downstream_val:      2 clips per class =  8 samples in 4 shards of 2

so 2 ranks x 2 workers all get shards. Built once per test session (a few seconds); read-only —
copy a set before changing it.
"""
from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable

import pytest

from shards_tools.pack import pack
from shards_tools.synth import render_corpus

TINY = dict(num_classes=4, frames=24, width=64, height=48, fps=12.0, seed=0, workers=1)
TINY_PACK = dict(short_side=48, gop=8, min_frames=16, workers=1, progress=False)


def _build_tiny_shards(base: pathlib.Path, codec: str) -> dict[str, pathlib.Path]:
    corpora = base / "corpora"
    shards = base / "shards"
    out: dict[str, pathlib.Path] = {}
    for kind in ("synthetic", "nohuman"):
        paths = render_corpus(kind, corpora / kind, clips_per_class=4, val_fraction=0.0, codec=codec, **TINY)
        manifest = pack(paths["train"], shards / kind, dataset=kind, max_samples=4, codec=codec, **TINY_PACK)
        out[kind] = manifest_path(manifest)
    paths = render_corpus("downstream", corpora / "downstream", clips_per_class=6, val_fraction=1 / 3,
                          codec=codec, **TINY)
    for split, per_shard in (("train", 4), ("val", 2)):
        manifest = pack(paths[split], shards / f"downstream_{split}", dataset="downstream", max_samples=per_shard,
                        codec=codec, **TINY_PACK)
        out[f"downstream_{split}"] = manifest_path(manifest)
    return out


def manifest_path(manifest) -> pathlib.Path:
    return pathlib.Path(manifest.location) / "manifest.json"


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> dict[str, pathlib.Path]:
    """Manifest paths of tiny H.264 shard sets (see the module docstring for their shape)."""
    return _build_tiny_shards(tmp_path_factory.mktemp("tiny_shards_h264"), "h264")


@pytest.fixture(scope="session")
def tiny_shards_vp9(tmp_path_factory) -> dict[str, pathlib.Path]:
    """Same as `tiny_shards` but VP9 in webm: the codec DALI's CPU backend decodes."""
    return _build_tiny_shards(tmp_path_factory.mktemp("tiny_shards_vp9"), "vp9")


@pytest.fixture(scope="session", autouse=True)
def deepspeed_ops_built():
    """DeepSpeed JIT-builds its CPU ops (the shared-memory all-reduce, CPU Adam for offload) the first
    time a rank needs them: on a fresh machine that is minutes of g++ inside some test's subprocess
    timeout. Built (or found in the cache) once here, before any test starts a rank."""
    from deepspeed.accelerator import get_accelerator
    for name in ("ShareMemCommBuilder", "CPUAdamBuilder"):
        builder = get_accelerator().create_op_builder(name)
        if builder is not None and builder.is_compatible():
            builder.load(verbose=False)
    yield


@pytest.fixture(scope="session", autouse=True)
def remove_orphaned_deepspeed_shm():
    """Runs that the tests kill on purpose cannot remove DeepSpeed's CPU all-reduce segments
    (/dev/shm, ~69 MB of RAM each; ppma_scale.engine.dist.shutdown removes them on a normal exit).
    At the end of the session, remove those the session created that no process maps any more."""
    from ppma_scale.engine.dist import DS_SHM_PREFIX, SHM_DIR
    pattern = DS_SHM_PREFIX + "*"  # this user's only: others' are not ours to remove
    before = {p.name for p in SHM_DIR.glob(pattern)}
    yield
    mapped = set()
    for maps in pathlib.Path("/proc").glob("[0-9]*/maps"):
        try:
            mapped.update(line.split()[-1] for line in maps.read_text().splitlines() if DS_SHM_PREFIX in line)
        except OSError:  # the process ended while we looked, or is not ours
            continue
    for path in SHM_DIR.glob(pattern):
        if path.name not in before and str(path) not in mapped:
            path.unlink(missing_ok=True)


def _run_two_ranks(argv: list[str], timeout: int = 150) -> list[subprocess.CompletedProcess]:
    """Ranks write to files, not pipes: a pipe read only after the other rank ends fills at 64 KiB,
    and a rank blocked writing to it stalls its peer in the next collective."""
    from ppma_scale.engine.dist import resolve_launch_env
    port = resolve_launch_env({})["MASTER_PORT"]
    with tempfile.TemporaryDirectory(prefix="ranks-") as folder:
        procs, outputs = [], []
        for rank in range(2):
            env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1",
                   "PYTHONFAULTHANDLER": "1"}  # a rank killed with SIGABRT prints every thread's stack
            files = [open(pathlib.Path(folder) / f"rank{rank}.{name}", "w+") for name in ("out", "err")]
            outputs.append(files)
            procs.append(subprocess.Popen([sys.executable, *argv], env=env, cwd=pathlib.Path(__file__).parents[1],
                                          stdout=files[0], stderr=files[1], text=True))
        try:
            deadline = time.monotonic() + timeout
            for proc in procs:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the 2-rank run did not end in {timeout} s; where each rank was:\n"
                                 + "\n".join(_stacks_of(procs, outputs))) from None
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
            texts = [[_peek(file) for file in files] for files in outputs]
            for file in (file for files in outputs for file in files):
                file.close()
        return [subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
                for proc, (out, err) in zip(procs, texts)]


def _stacks_of(procs: list[subprocess.Popen], outputs: list[list]) -> list[str]:
    """SIGABRT each rank still running (faulthandler dumps its threads) and return the ends of
    every rank's output: a hang is then found from the failure message, not guessed."""
    tails = []
    for rank, proc in enumerate(procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGABRT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        stdout, stderr = (_peek(file) for file in outputs[rank])
        tails.append(f"--- rank {rank} stdout (end) ---\n{stdout[-2000:]}\n"
                     f"--- rank {rank} stderr (end) ---\n{stderr[-6000:]}")
    return tails


def _peek(file) -> str:
    file.seek(0)
    return file.read()


@pytest.fixture(scope="session")  # stateless: module fixtures may run their ranks with it too
def two_ranks_without_launcher() -> Callable[..., list[subprocess.CompletedProcess]]:
    """Start `python ARGV...` as ranks 0 and 1 of one job from env:// variables alone, as on the nodes
    of a DeepSpeed hostfile (pdsh) job: no launcher kills one rank when the other fails."""
    return _run_two_ranks
