"""Process-group set-up that works the same under `deepspeed`, `torchrun`, `srun` and plain `python`.

Launchers announce a rank differently: `deepspeed` and `torchrun` export RANK / WORLD_SIZE /
LOCAL_RANK / MASTER_ADDR / MASTER_PORT; `srun` (one task per GPU) exports SLURM_PROCID /
SLURM_STEP_NUM_TASKS / SLURM_LOCALID; a plain `python launch/pretrain.py` exports nothing and is a
world of one. We normalise all three to the env:// variables, then start torch.distributed ourselves
(NCCL on GPUs, gloo on CPUs) so DeepSpeed finds an initialised group and does no discovery of its own.
"""
from __future__ import annotations

import datetime
import os
import socket
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NoReturn, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


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


def slurm_job_port(job_id: int | str) -> int:
    """The rendezvous port a SLURM job uses unless MASTER_PORT says otherwise: one per job id, so two
    jobs sharing a node do not both bind 29500. 20000-32767, below Linux's default ephemeral range
    (32768-60999) where outgoing connections take their local ports. launch/slurm/*.sbatch compute
    the same number in shell."""
    return 20000 + int(job_id) % 12768


def _slurm_step_world(env: dict[str, str]) -> str | None:
    """The number of tasks of the srun job step this process is a task of, or None when SLURM did not
    start it as one.

    A batch script, and so a plain `python launch/evaluate.py` run in it, also sees SLURM_PROCID=0 and
    SLURM_NTASKS = every task of the job; read as a launch, that process would wait forever for 31
    peers. srun adds SLURM_STEP_NUM_TASKS (and SLURM_STEP_ID) to each task of a step, and the batch
    environment has no SLURM_STEP_NUM_TASKS. Without SLURM_JOB_ID (which SLURM always sets)
    SLURM_PROCID / SLURM_NTASKS were set by hand or by another tool, and name a launch as they say."""
    if "SLURM_PROCID" not in env:
        return None
    if "SLURM_STEP_NUM_TASKS" in env:
        return env["SLURM_STEP_NUM_TASKS"]  # = SLURM_NTASKS, unless srun --preserve-env kept the job's
    if "SLURM_JOB_ID" not in env and "SLURM_NTASKS" in env:
        return env["SLURM_NTASKS"]
    return None  # the batch script (or an salloc shell) outside any job step


def resolve_launch_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The env:// variables this process should use, derived from whichever launcher started it."""
    env = dict(os.environ if env is None else env)
    step_world = None if "RANK" in env else _slurm_step_world(env)
    if step_world is not None:
        env["RANK"] = env["SLURM_PROCID"]
        env["WORLD_SIZE"] = step_world
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
        if "MASTER_ADDR" not in env:
            raise ValueError("running under srun without MASTER_ADDR: export MASTER_ADDR (the first node "
                             "of the allocation) and MASTER_PORT in the sbatch script, see launch/slurm/")
        if "SLURM_JOB_ID" in env:
            env.setdefault("MASTER_PORT", str(slurm_job_port(env["SLURM_JOB_ID"])))
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


def rank_device(local_rank: int, cuda_devices: int) -> torch.device:
    """The device of the rank with this node-local rank, given how many CUDA devices it sees (0: none).

    Launchers that start every rank of a node with all its GPUs visible (deepspeed, torchrun, srun
    with --gpus-per-node) make the local rank the device ordinal. srun with --gpus-per-task=1 or
    --gpu-bind gives each task only its own GPU(s): task 3 of a node sees one device, cuda:0, and
    cuda:3 does not exist. local_rank % cuda_devices is right in both cases (and the identity in the
    first)."""
    if cuda_devices <= 0:
        return torch.device("cpu")
    return torch.device("cuda", local_rank % cuda_devices)


def init_distributed(timeout_s: int = 1800) -> DistInfo:
    """Join (or create) the process group and pick this rank's device. Idempotent."""
    env = resolve_launch_env()
    rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])
    device = rank_device(local, torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if device.type == "cuda":
        # DeepSpeed takes LOCAL_RANK for "the GPU device ID" (its engine and ZeRO-3 call set_device on
        # it), so it must name the device picked here, also where a task sees only its own GPU.
        env["LOCAL_RANK"] = str(device.index)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        os.environ[key] = env[key]
    if device.type == "cuda":
        backend = "nccl"
        torch.cuda.set_device(device)
    else:
        backend = "gloo"
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


def gathered_on_rank0(obj: T) -> list[T] | None:
    """Every rank's `obj` in rank order on rank 0 (None on the others); [obj] in a single process."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    parts: list | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, parts, dst=0)
    return parts


def computed_on_rank0(compute: Callable[[], T], what: str, expected: tuple[type[BaseException], ...] = (ValueError, OSError),
                      raise_as: type[Exception] = ValueError, beat_s: float | None = None) -> T:
    """`compute()` run by rank 0 alone, its result on every rank: for work that grows with ranks x
    files (every saved rank's state, every shard's size), done once instead of once per rank.

    An `expected` error there is raised on every rank as `raise_as` with the same message (one
    verdict in every rank's log; so also in a single process). Any other error is raised on rank 0
    as it is, and on the others as PeerFailure naming it, instead of leaving them in the broadcast.
    `what` completes "rank 0 failed while ...". Every rank must call this at the same point.

    The other ranks wait inside a collective, which fails after `train.dist_timeout_s`. For work
    that may take longer (converting a large checkpoint), `beat_s` runs it in a thread on rank 0
    and the ranks exchange a tiny "still working" broadcast every `beat_s` seconds instead."""
    grouped = dist.is_initialized() and dist.get_world_size() > 1
    if not grouped:
        outcome, caught = _attempt(compute, expected)
    elif beat_s is None:
        outcome, caught = _attempt(compute, expected) if dist.get_rank() == 0 else (None, None)
    else:
        outcome, caught = _attempt_with_heartbeat(compute, expected, beat_s)
    if grouped:
        box = [outcome]
        dist.broadcast_object_list(box, src=0)
        outcome = box[0]
    kind, value = outcome
    if kind == "ok":
        return value
    if kind == "expected":
        raise raise_as(value) from caught
    if caught is not None:
        raise caught
    from .agreement import PeerFailure
    raise PeerFailure(f"rank 0 failed while {what}: {value}. Every rank stops here instead of waiting for it; "
                      "rank 0's log has the traceback")


def _attempt(compute: Callable[[], T], expected: tuple[type[BaseException], ...]) -> tuple[tuple, BaseException | None]:
    """(("ok", result) | ("expected" | "unexpected", message), the exception or None)."""
    try:
        return ("ok", compute()), None
    except expected as exc:
        return ("expected", str(exc)), exc
    except Exception as exc:  # noqa: BLE001 - re-raised by computed_on_rank0 on rank 0, named to the others
        return ("unexpected", f"{type(exc).__name__}: {exc}"), exc


def _attempt_with_heartbeat(compute: Callable[[], T], expected: tuple[type[BaseException], ...],
                            beat_s: float) -> tuple[tuple | None, BaseException | None]:
    """Rank 0 runs `compute` in a thread and says every `beat_s` whether it is done; each such
    broadcast completes long before the collective timeout however long the work takes."""
    import threading
    result: list = [(None, None)]
    worker = None
    if dist.get_rank() == 0:
        worker = threading.Thread(target=lambda: result.__setitem__(0, _attempt(compute, expected)),
                                  name="rank0-work", daemon=True)
        worker.start()
    while True:
        if worker is not None:
            worker.join(beat_s)
        box = [worker is not None and not worker.is_alive()]
        dist.broadcast_object_list(box, src=0)
        if box[0]:
            return result[0]


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
    Skipping finalisation removes that window; nothing of ours is left to flush by then.

    Non-daemon threads are ended as the interpreter's own exit ends them (`threading._shutdown`):
    first the thread-exit hooks, which tell idle `concurrent.futures` workers (torch.compile's
    compile pool, say) to stop, then a join. Joining those workers without the hooks waits forever."""
    import atexit
    import threading
    finish_threads = getattr(threading, "_shutdown", None)
    if finish_threads is not None:
        finish_threads()
    else:  # an interpreter without the hook: join what can end by itself
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


def launched_world_size() -> int:
    """The world size the launcher announced, before any process group exists (1 for a plain
    `python`; a launch environment that cannot be read counts as several ranks: init says why)."""
    try:
        return int(resolve_launch_env()["WORLD_SIZE"])
    except (ValueError, KeyError):
        return 2
