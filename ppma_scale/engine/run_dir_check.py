"""Refuse a run directory that the nodes of a job do not share, before anything is written into it.

Every rank writes its own checkpoint files into the run directory, and rank 0 alone marks a
checkpoint complete, moves `latest` and deletes old checkpoints. On node-local storage (`/tmp`,
`/scratch/local`, a local NVMe) each node gets its own copy of the directory: the other nodes' files
are not where rank 0 looks, rotation frees space on node 0 only, and the first resume is the first
thing to notice. So the trainer checks once, right after the process group starts: rank 0 writes a
fresh random token into the directory, every other rank reads it back through its own path, and
every rank raises the same ConfigError (exit 2) naming the ranks (and hosts) that could not see it.

A filesystem that is shared but caches directory lookups (NFS's attribute cache, acdirmax 60 s by
default) may show a new file on other nodes only after a while, so a rank that does not find the
token yet looks again for up to `wait_s` seconds before it reports it missing.
"""
from __future__ import annotations

import secrets
import socket
import sys
import time
from pathlib import Path

import torch.distributed as torch_dist

from ..atomic import write_text_atomic
from ..config import ConfigError
from .dist import DistInfo, computed_on_rank0

TOKEN_PREFIX = ".ppma_shared_check."
WAIT_S = 60.0  # how long a rank looks for the token before it reports it missing
_SHOWN = 8  # hosts named in the error; the rest are counted


def _read_token(path: Path, token: str, wait_s: float, rank: int) -> str | None:
    """None when `path` holds `token`; otherwise why not (after looking for up to `wait_s` seconds)."""
    deadline, delay, told = time.monotonic() + wait_s, 0.05, False
    while True:
        try:
            seen = path.read_text()
        except FileNotFoundError:
            why = "the file is not there"
        except Exception as exc:  # noqa: BLE001 - reported by every rank, not raised by this one alone
            why = f"reading it failed ({type(exc).__name__}: {exc})"
        else:
            if seen == token:
                return None
            return "the file holds another token (another job or node wrote it)"
        if time.monotonic() >= deadline:
            return why
        if not told and wait_s >= 5:
            print(f"rank {rank}: {path} (written by rank 0) is not visible here yet; waiting up to "
                  f"{wait_s:.0f} s for this filesystem to show it", file=sys.stderr, flush=True)
            told = True
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 2.0)


def _ranges(ranks: list[int]) -> str:
    """`[0, 1, 2, 5]` -> `0-2, 5`."""
    parts, start = [], None
    for i, rank in enumerate(ranks):
        if start is None:
            start = rank
        if i + 1 == len(ranks) or ranks[i + 1] != rank + 1:
            parts.append(str(start) if start == rank else f"{start}-{rank}")
            start = None
    return ", ".join(parts)


def _message(run_dir: str, host0: str, missing: list[tuple[int, str, str, str]], world_size: int) -> str:
    """The error every rank raises; built from gathered data only, so it is the same text on every rank."""
    by_host: dict[str, list[tuple[int, str, str]]] = {}
    for rank, host, path, why in missing:
        by_host.setdefault(host, []).append((rank, path, why))
    lines = []
    for host, entries in list(by_host.items())[:_SHOWN]:
        ranks = [rank for rank, _, _ in entries]
        paths = sorted({path for _, path, _ in entries})
        whys = sorted({why for _, _, why in entries})
        where = "" if paths == [run_dir] else f" (it looked in {', '.join(paths)})"
        lines.append(f"rank{'s' if len(ranks) > 1 else ''} {_ranges(ranks)} on host {host}{where}: {'; '.join(whys)}")
    if len(by_host) > _SHOWN:
        lines.append(f"and {len(by_host) - _SHOWN} more hosts")
    count = len(missing)
    return (f"the run directory {run_dir} is not shared by every rank: {count} of {world_size} ranks could not "
            f"read the file rank 0 (host {host0}) wrote there: " + "; ".join(lines) + ". Every rank writes its "
            "checkpoint files into the run directory and rank 0 alone marks them complete and deletes old "
            "ones, so it must be on a filesystem every node shares, at the same path on every node (not "
            "/tmp or node-local scratch): set --output (run.output) to such a directory")


def check_shared_run_dir(run_dir: Path, dist_info: DistInfo, *, wait_s: float = WAIT_S) -> None:
    """Collective (every rank calls it, after the process group started): raise the same ConfigError on
    every rank when some rank cannot see a file rank 0 writes into `run_dir` (each rank passes its own
    `run_dir`), or when rank 0 cannot write there. Creates `run_dir` (rank 0); leaves no file behind.
    A world of one returns at once and touches nothing."""
    if dist_info.world_size <= 1:
        return
    run_dir = Path(run_dir)
    host = socket.gethostname()

    def write_token() -> dict[str, str]:
        token = secrets.token_hex(16)
        name = TOKEN_PREFIX + token[:12]  # a fresh name: no cached or leftover copy of it can exist anywhere
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(run_dir / name, token)
        except OSError as exc:
            raise ConfigError(f"rank 0 (host {host}) could not create its check file in the run directory "
                              f"{run_dir}: {type(exc).__name__}: {exc}. The run directory must be writable and on "
                              "a filesystem every node shares (set --output / run.output)") from exc
        return {"token": token, "name": name, "host": host, "dir": str(run_dir)}

    # sent once the file is written: this is the first barrier
    setup = computed_on_rank0(write_token, f"writing a check file into {run_dir}", expected=(ConfigError,),
                              raise_as=ConfigError)
    mine = None
    if not dist_info.is_main:
        why = _read_token(run_dir / setup["name"], setup["token"], wait_s, dist_info.rank)
        if why is not None:
            mine = (dist_info.rank, host, str(run_dir), why)
    gathered: list = [None] * dist_info.world_size
    torch_dist.all_gather_object(gathered, mine)  # every rank has read the file: the second barrier
    if dist_info.is_main:
        try:
            (run_dir / setup["name"]).unlink(missing_ok=True)
        except OSError:  # best effort: raising here, on rank 0 alone, would leave the others waiting
            pass
    missing = [entry for entry in gathered if entry is not None]
    if missing:
        raise ConfigError(_message(setup["dir"], setup["host"], missing, dist_info.world_size))
