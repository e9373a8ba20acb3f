"""Process-group set-up that works the same under `deepspeed`, `torchrun`, `srun` and plain `python`.

Launchers announce a rank differently: `deepspeed` and `torchrun` export RANK / WORLD_SIZE /
LOCAL_RANK / MASTER_ADDR / MASTER_PORT; `srun` (one task per GPU) exports SLURM_PROCID /
SLURM_NTASKS / SLURM_LOCALID; a plain `python launch/pretrain.py` exports nothing and is a world of
one. We normalise all three to the env:// variables, then start torch.distributed ourselves (NCCL on
GPUs, gloo on CPUs) so DeepSpeed finds an initialised group and does no discovery of its own.
"""
from __future__ import annotations

import datetime
import os
import socket
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NoReturn

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def resolve_launch_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The env:// variables this process should use, derived from whichever launcher started it."""
    env = dict(os.environ if env is None else env)
    if "RANK" not in env and "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        env["RANK"] = env["SLURM_PROCID"]
        env["WORLD_SIZE"] = env["SLURM_NTASKS"]
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
        if "MASTER_ADDR" not in env:
            raise ValueError("running under srun without MASTER_ADDR: export MASTER_ADDR (the first node "
                             "of the allocation) and MASTER_PORT in the sbatch script, see launch/slurm/")
    if "RANK" not in env:
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(_free_port()))
    env.setdefault("LOCAL_RANK", "0")
    env.setdefault("MASTER_PORT", "29500")
    if "WORLD_SIZE" not in env or "MASTER_ADDR" not in env:
        raise ValueError("RANK is set but WORLD_SIZE or MASTER_ADDR is not: start the job with deepspeed, "
                         "torchrun or srun, or unset RANK to run as a single process")
    return env


def init_distributed(timeout_s: int = 1800) -> DistInfo:
    """Join (or create) the process group and pick this rank's device. Idempotent."""
    env = resolve_launch_env()
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        os.environ[key] = env[key]
    rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])
    if torch.cuda.is_available():
        device, backend = torch.device("cuda", local), "nccl"
        torch.cuda.set_device(device)
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s),
                                device_id=device if device.type == "cuda" else None)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device, backend=backend)


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_max(value: float, device: torch.device) -> float:
    """The largest `value` over all ranks (one scalar collective)."""
    tensor = torch.tensor([float(value)], device=device, dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s Python object on every rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


SHM_DIR = Path("/dev/shm")
DS_SHM_PREFIX = f"deepspeed_allreduce_buffer_{os.getuid()}_"  # this user's segments, see below


def deepspeed_cpu_allreduce_buffer(rank: int, env: dict[str, str] | None = None) -> Path:
    """The shared-memory segment DeepSpeed's CPU all-reduce op (the JIT-built `shm_comm`) maps for
    `rank` when all ranks share a machine: named by user id, MASTER_ADDR, MASTER_PORT and rank."""
    env = os.environ if env is None else env
    return SHM_DIR / f"{DS_SHM_PREFIX}{env.get('MASTER_ADDR', '')}_{env.get('MASTER_PORT', '')}_{rank}"


def exit_rank(code: int) -> NoReturn:
    """End a launched rank with `code` once its work is done: exit handlers run and output is
    flushed, but the interpreter is not torn down.

    DeepSpeed keeps references to the gloo process groups that `dist.destroy_process_group` cannot
    drop, so their worker threads (pt_gloo_runloop, gloo_tcp_loop) still run after `shutdown`. They
    are then destroyed during interpreter finalisation, which now and then aborts the rank with
    SIGABRT ("terminate called without an active exception") after a run that finished and saved
    everything: a finished job reported as failed (1 of 162 two-rank CPU runs here, and once in CI).
    Skipping finalisation removes that window; nothing of ours is left to flush by then."""
    import atexit
    import threading
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # logging, multiprocessing (DataLoader workers), tempfile clean-up
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def run_rank(main: Callable[[], int]) -> NoReturn:
    """`exit_rank(main())`, also when `main` raises: the traceback is printed as Python would and the
    rank ends with 1 (a SystemExit keeps its code), so an error path cannot abort in finalisation
    either and its exit code is the one the launcher and the logs should see."""
    try:
        code = main()
    except SystemExit as exc:  # argparse's usage errors, sys.exit(...) inside main
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 130
    except BaseException:  # noqa: BLE001 - printed, then the rank ends with 1
        traceback.print_exc()
        code = 1
    exit_rank(code)


def shutdown() -> None:
    """Leave the process group; on CPU ranks also remove this rank's DeepSpeed all-reduce segment.

    DeepSpeed never unlinks that segment (~69 MB of /dev/shm, i.e. RAM, per rank and run), so every
    CPU run would leave it behind until the machine runs out of memory (a day of test runs filled
    19 GB). Unlinking at exit is safe: the peers mapped it while the group started, and a mapping
    outlives its name."""
    if not dist.is_initialized():
        return
    on_cpu, rank = dist.get_backend() == "gloo", dist.get_rank()
    dist.destroy_process_group()
    if on_cpu:
        deepspeed_cpu_allreduce_buffer(rank).unlink(missing_ok=True)
