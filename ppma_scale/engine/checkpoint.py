"""DeepSpeed checkpoints plus our per-rank state, saved so that a crash mid-save never loses the last one.

Layout of `RUN_DIR/checkpoints/`:

    latest                      tag of the newest *complete* checkpoint (the file DeepSpeed's loaders
                                and zero_to_fp32 read too)
    step_00001000/              DeepSpeed's files (model states, ZeRO optimizer partitions)
        rank_00000.pt ...       our state per rank: data-stream cursor, RNG states
        ppma_complete.json      written last, by rank 0, once every rank's files are on disk
        universal/              a world-size-free copy, made on demand when resuming on other ranks

A save writes everything, waits for every rank, then writes the marker and only then moves
`latest` (both by atomic rename). A process killed anywhere in between leaves a tag without a
marker, which resume ignores and the next save of that step replaces. A *complete* tag is never
deleted by a save: one in the way (a damaged one, or the future of a run resumed from an earlier
step) is renamed aside to `step_N.<reason>`, which rotation and resume ignore.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from ..atomic import write_text_atomic
from .dist import DistInfo, barrier, computed_on_rank0, gathered_on_rank0

LATEST = "latest"
MARKER = "ppma_complete.json"
UNIVERSAL = "universal"
UNIVERSAL_BEAT_S = 30.0  # how often the ranks waiting for the conversion hear from rank 0
_SUM_THREADS = 8  # files checksummed at once by a deep check (zlib releases the GIL)
_TAG = re.compile(r"^step_(\d+)$")
# Test hook: `STEP` or `STEP:RANK` makes that rank (every rank without `:RANK`) SIGKILL itself midway
# through saving checkpoint STEP: after DeepSpeed wrote its files, before the checkpoint is complete.
FAULT_KILL_IN_SAVE = "PPMA_FAULT_KILL_IN_SAVE"


def _fault_requested(step: int, rank: int) -> bool:
    spec = os.environ.get(FAULT_KILL_IN_SAVE, "")
    want_step, _, want_rank = spec.partition(":")
    return want_step == str(step) and want_rank in ("", str(rank))


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint on disk."""

    path: Path  # the tag directory
    step: int
    world_size: int
    zero_stage: int
    checksums: dict[str, str] = field(default_factory=dict, compare=False, hash=False)  # file -> crc, from the marker

    @property
    def tag(self) -> str:
        return self.path.name

    @property
    def root(self) -> Path:
        return self.path.parent

    def rank_file(self, rank: int) -> Path:
        return self.path / f"rank_{rank:05d}.pt"


class DamagedCheckpoint(ValueError):
    """A checkpoint marked complete whose files are missing, empty or unreadable."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path  # the tag directory


def read_marker(tag_dir: Path) -> dict[str, Any] | None:
    """The parsed marker of `tag_dir`, None without one; DamagedCheckpoint (naming the file) if unreadable."""
    marker = Path(tag_dir) / MARKER
    if not marker.is_file():
        return None
    try:
        meta = json.loads(marker.read_text())
        int(meta["step"]), int(meta["world_size"]), int(meta["zero_stage"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise DamagedCheckpoint(Path(tag_dir), f"{marker} is damaged ({type(exc).__name__}: {exc}); "
                                f"{_previous_hint(Path(tag_dir))}") from None
    return meta


def read_checkpoint(tag_dir: Path) -> Checkpoint | None:
    """The checkpoint in `tag_dir` if its marker says it is complete, else None."""
    meta = read_marker(tag_dir)
    if meta is None:
        return None
    return Checkpoint(path=Path(tag_dir), step=int(meta["step"]), world_size=int(meta["world_size"]),
                      zero_stage=int(meta["zero_stage"]), checksums=dict(meta.get("checksums") or {}))


def _previous_hint(tag_dir: Path) -> str:
    """Where to resume instead of a damaged `tag_dir`: the newest older tag that has a marker."""
    match = _TAG.match(tag_dir.name)
    older = [p for s, p in tag_dirs(tag_dir.parent) if match and s < int(match.group(1)) and (p / MARKER).is_file()]
    if older:
        return f"the previous complete checkpoint is {older[-1]} (use it instead, e.g. --resume {older[-1]})"
    return "no older complete checkpoint is left in " + str(tag_dir.parent)


def _zip_problem(path: Path) -> str | None:
    """Why `path` is not a readable torch (zip) file, reading only its central directory (no CRC pass)."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if size == 0:
        return "empty (0 bytes)"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            end = max((i.header_offset + i.compress_size for i in archive.infolist()), default=0)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        return f"truncated or not a torch zip archive ({exc}; {size} bytes)"
    if not any(name.endswith("data.pkl") for name in names):
        return "a zip archive without torch's data.pkl"
    if end > size:
        return f"truncated ({size} bytes, its directory says at least {end})"
    return None


def file_checksum(path: Path, chunk_bytes: int = 16 << 20) -> str:
    """'crc32:<8 hex digits>' of the file's bytes. zlib's CRC runs at 1-2 GB/s and releases the GIL,
    so a checkpoint's files can be summed in parallel threads."""
    import zlib
    crc, buffer = 0, bytearray(chunk_bytes)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as stream:
        while read := stream.readinto(buffer):
            crc = zlib.crc32(view[:read], crc)
    return f"crc32:{crc:08x}"


def _checksum_problems(files: dict[str, Path], recorded: dict[str, str]) -> list[str]:
    """The files whose bytes differ from the checksums recorded in the marker when they were saved."""
    from concurrent.futures import ThreadPoolExecutor
    named = [(name, want) for name, want in sorted(recorded.items()) if name in files]
    with ThreadPoolExecutor(max(1, min(_SUM_THREADS, len(named)))) as pool:
        found = list(pool.map(lambda item: _checksum_or_error(files[item[0]]), named))
    return [f"{files[name]}: contents changed since it was saved ({got}, the marker recorded {want})"
            for (name, want), got in zip(named, found) if got != want]


def _checksum_or_error(path: Path) -> str:
    try:
        return file_checksum(path)
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"


def checkpoint_problems(ckpt: Checkpoint, deep: bool = True) -> list[str]:
    """What is wrong with the files of a complete-marked checkpoint: every file the marker's world
    size and ZeRO stage imply is present and, when `deep`, non-empty, an intact-looking zip and (for
    checkpoints whose marker records checksums) byte for byte what was saved; [] if fine. `deep`
    reads every file once (rank 0 alone in a multi-rank job). Not `deep`: one directory listing, no
    per-file stat or open (a 512-rank checkpoint has over a thousand files, and every rank of a job
    checks before its process group exists)."""
    ranks = range(ckpt.world_size)
    with os.scandir(ckpt.path) as entries:
        files = {e.name: Path(e.path) for e in entries if e.is_file()}
    expected = [f"rank_{r:05d}.pt" for r in ranks]
    if ckpt.zero_stage == 3:
        expected += [f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in ranks]
    else:
        expected.append("mp_rank_00_model_states.pt")
    optim = sorted(n for n in files if n.endswith("_optim_states.pt"))
    if ckpt.zero_stage > 0 or optim:  # ZeRO partitions, or bf16's per-rank optimizer files at stage 0
        prefix = "bf16_" if optim and all(n.startswith("bf16_") for n in optim) else ""
        expected += [f"{prefix}zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in ranks]
    problems = [f"{ckpt.path / name}: missing" for name in expected if name not in files]
    for name in sorted(files) if deep else ():
        if name.endswith(".pt") and (why := _zip_problem(files[name])):
            problems.append(f"{files[name]}: {why}")
    if deep and not problems:
        problems = _checksum_problems(files, ckpt.checksums)
    return problems


def verify_checkpoint(ckpt: Checkpoint, deep: bool = True) -> None:
    """Raise DamagedCheckpoint naming the bad files (and the previous complete tag) before anything loads
    it; `deep=False` checks only that every file is there (see checkpoint_problems)."""
    problems = checkpoint_problems(ckpt, deep)
    if problems:
        raise DamagedCheckpoint(ckpt.path, f"checkpoint {ckpt.path} is marked complete but damaged: "
                                + "; ".join(problems) + f". {_previous_hint(ckpt.path).capitalize()}")


def set_aside(tag_dir: Path, reason: str) -> Path:
    """Rename `tag_dir` to `step_N.<reason>[.k]` beside it (never deleted; ignored by rotation and resume)."""
    target = tag_dir.with_name(f"{tag_dir.name}.{reason}")
    k = 1
    while target.exists():
        target, k = tag_dir.with_name(f"{tag_dir.name}.{reason}.{k}"), k + 1
    os.replace(tag_dir, target)
    return target


def tag_dirs(root: Path) -> list[tuple[int, Path]]:
    """(step, path) of every `step_N` directory under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _TAG.match(p.name))]
    return sorted(found)


def latest_checkpoint(root: Path) -> Checkpoint | None:
    """The newest complete checkpoint: the highest `step_N` tag with a marker. `latest` is not trusted
    (a kill between the marker and the `latest` rewrite leaves it naming an older tag); tags set aside
    (`step_N.<reason>`) never match. Agrees with resume_guard.newest_intact, which also skips damaged tags."""
    for _, path in reversed(tag_dirs(root)):
        if (ckpt := read_checkpoint(path)) is not None:
            return ckpt
    return None


def find_resume_checkpoint(resume: str, run_dir: Path) -> Checkpoint | None:
    """Resolve `--resume`: 'auto' (this run's latest, if any), 'off', or a run / checkpoints / tag path."""
    if resume in ("off", "none", "no", "false"):
        return None
    if resume == "auto":
        return latest_checkpoint(run_dir / "checkpoints")
    return find_checkpoint(resume, what="--resume")


def find_checkpoint(location: str | Path, what: str = "checkpoint", deep: bool = True) -> Checkpoint:
    """The complete checkpoint `location` names: a run directory or its checkpoints/ folder (their
    latest), or one step_N folder. `what` names the argument in the error; a damaged checkpoint is a
    DamagedCheckpoint naming the bad file (export, evaluate and model.init read through here)."""
    path = Path(location).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{what} {location}: no such file or directory")
    for candidate in (path, path / "checkpoints"):
        ckpt = read_checkpoint(candidate) or latest_checkpoint(candidate)
        if ckpt is not None:
            verify_checkpoint(ckpt, deep)
            return ckpt
    raise FileNotFoundError(f"{what} {location}: found no complete checkpoint there (expected a run "
                            f"directory, its checkpoints/ folder, or a step_N folder holding {MARKER})")


def _fsync_existing(paths: Iterable[Path]) -> list[Path]:
    """fsync each of `paths` (files or directories) that exists; the ones synced."""
    synced = []
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        synced.append(path)
    return synced


def write_error(exc: OSError | RuntimeError, folder: Path) -> OSError:
    """A failed checkpoint write as an OSError. torch.save reports a full disk or quota not as one
    but as a RuntimeError ("basic_ios::clear: iostream error", "[enforce fail at inline_container.cc]
    unexpected pos ..."), which named neither the folder nor the cause: both are added, with the free
    space left."""
    if isinstance(exc, OSError):
        return exc
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:,.1f} MiB free there"
    except OSError:
        free = "free space unknown"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return OSError(f"writing checkpoint files in {folder} failed ({first}); {free}: a full disk or quota?")


def _save_deepspeed_files(engine, root: str, tag: str, client_state: dict) -> OSError | None:
    """`engine.save_checkpoint`, with a failed file write (a full disk, a quota) returned instead of
    raised: DeepSpeed ends its save in a barrier, which a rank leaving early would leave its peers
    waiting in, where returning lets every rank reach it and then agree on the error."""
    writer = engine.checkpoint_engine
    own = vars(writer).get("save")  # normally none: the class's method
    write = writer.save
    failures: list[OSError] = []

    def save(state_dict, path):
        try:
            return write(state_dict, path)
        except (OSError, RuntimeError) as exc:  # torch.save's full disk is a RuntimeError
            failures.append(write_error(exc, Path(path).parent))

    writer.save = save
    try:
        engine.save_checkpoint(root, tag=tag, client_state=client_state, save_latest=False)
    finally:
        if own is None:
            del writer.save
        else:
            writer.save = own
    return failures[0] if failures else None


class CheckpointManager:
    """Saves, rotates and finds checkpoints of one run. Every rank calls `save` and `load`."""

    def __init__(self, root: Path, dist: DistInfo, keep_last: int) -> None:
        if keep_last < 1:
            raise ValueError(f"train.keep_last must be >= 1 (checkpoints to keep), got {keep_last}")
        self.root = Path(root)
        self.dist = dist
        self.keep_last = keep_last

    def save(self, engine, step: int, rank_state: dict[str, Any], meta: dict[str, Any]) -> Checkpoint:
        """Write checkpoint `step` on every rank; mark it complete and move `latest` once all are done.

        Each rank fsyncs the files it wrote (not its peers': that would be W^2 syncs) before the ranks
        agree that all are written; rank 0 then fsyncs the tag directory (every rank's file names),
        writes the marker and syncs the directory again before rotation deletes anything. A rank whose
        write or sync fails raises its error and every other rank a PeerFailure naming it, instead of
        waiting for it in a barrier."""
        from deepspeed.checkpoint.constants import (UNIVERSAL_CHECKPOINT_INFO, UNIVERSAL_CHECKPOINT_VERSION_KEY,
                                                    UNIVERSAL_CHECKPOINT_VERSION_VALUE)

        from .agreement import agree
        tag_dir = self.root / tag_for(step)
        if self.dist.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            if (tag_dir / MARKER).is_file():  # never delete a complete checkpoint (resume sets these aside first)
                moved = set_aside(tag_dir, "replaced")
                print(f"WARNING: {tag_dir} already held a complete checkpoint; moved it to {moved}",
                      file=sys.stderr, flush=True)
            elif tag_dir.exists():  # left by a save that died
                shutil.rmtree(tag_dir)
        barrier()
        client_state = {UNIVERSAL_CHECKPOINT_INFO: {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE},
                        "ppma_step": step}
        error = _save_deepspeed_files(engine, str(self.root), tag_dir.name, client_state)
        try:
            if error is not None:
                raise error
            torch.save(rank_state, tag_dir / f"rank_{self.dist.rank:05d}.pt")
            # On disk, not only in this node's write-back cache, before the marker calls them complete (a
            # node crash is what requeues a job). The files this rank wrote, named as DeepSpeed's
            # _get_zero_ckpt_name / _get_ckpt_name name them (see checkpoint_problems): its ZeRO or bf16
            # optimizer partition, its ZeRO-3 model states, and on rank 0 the model states of stages 0-2.
            # A fixed handful of names each: no rank lists the directory or syncs another rank's files.
            r = self.dist.rank
            own = [f"rank_{r:05d}.pt", f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt",
                   f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt", f"zero_pp_rank_{r}_mp_rank_00_model_states.pt"]
            own += ["mp_rank_00_model_states.pt"] if self.dist.is_main else []
            synced = _fsync_existing(tag_dir / name for name in own)
            sums = {path.name: file_checksum(path) for path in synced}  # read back from the page cache
        except (OSError, RuntimeError) as exc:  # e.g. a full disk, or EIO from fsync (the data did not reach the disk)
            error, sums = write_error(exc, tag_dir), {}
        if _fault_requested(step, self.dist.rank):
            os.kill(os.getpid(), signal.SIGKILL)
        agree(error, False, f"writing its files of checkpoint {tag_dir}", self.dist.device)  # the barrier
        sums = gathered_on_rank0(sums)
        ckpt = Checkpoint(path=tag_dir, step=step, world_size=self.dist.world_size,
                          zero_stage=int(engine.zero_optimization_stage()))
        error = None
        if self.dist.is_main:
            try:
                _fsync_existing([tag_dir])  # the names of every rank's files, all written by now
                marker = {"step": step, "world_size": ckpt.world_size, "zero_stage": ckpt.zero_stage,
                          "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **meta,
                          "checksums": dict(sorted(item for part in sums for item in part.items()))}
                write_text_atomic(tag_dir / MARKER, json.dumps(marker, indent=1))
                _fsync_existing([tag_dir])  # the marker's name: durable before rotation deletes older tags
                write_text_atomic(self.root / LATEST, tag_dir.name)
                self.rotate()
            except Exception as exc:  # noqa: BLE001 - re-raised here by agree(), PeerFailure on the others
                error = exc
        agree(error, False, f"marking checkpoint {tag_dir} complete", self.dist.device)  # the barrier
        return ckpt

    def rotate(self) -> list[Path]:
        """Delete all but the newest `keep_last` complete checkpoints, and unfinished ones older than those."""
        latest = latest_checkpoint(self.root)
        keep_from = None
        complete = [(s, p) for s, p in tag_dirs(self.root) if (p / MARKER).is_file()]
        if len(complete) >= self.keep_last:
            keep_from = complete[-self.keep_last][0]
        removed = []
        for step, path in tag_dirs(self.root):
            if latest is not None and path == latest.path:
                continue
            if keep_from is not None and step < keep_from:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        return removed

    def prepare_load(self, ckpt: Checkpoint, zero_stage: int) -> tuple[Path, str, bool]:
        """(load_dir, tag, load_universal) for DeepSpeed; converts to a universal checkpoint when the
        optimizer state is partitioned per rank and the world size or the ZeRO stage changed."""
        if ckpt.zero_stage != zero_stage and 3 in (ckpt.zero_stage, zero_stage):
            raise ValueError(f"{ckpt.path} was saved with ZeRO-{ckpt.zero_stage}; resuming it with "
                             f"train.zero_stage={zero_stage} is not supported (DeepSpeed converts between "
                             f"stages 0-2 only). Keep train.zero_stage={ckpt.zero_stage}, or export the weights "
                             f"(python -m ppma_scale.export) and start a new run from them")
        partitioned = any(ckpt.path.glob("*zero_pp_rank_*_optim_states.pt"))
        same_layout = ckpt.world_size == self.dist.world_size and ckpt.zero_stage == zero_stage
        if same_layout or not partitioned:
            return ckpt.root, ckpt.tag, False
        if ckpt.root.resolve() == self.root.resolve():
            load_dir, tag = ckpt.path, UNIVERSAL  # beside the run's own checkpoint, made once
        else:  # another run's checkpoint: never write into it (it may be read-only, or someone else's)
            load_dir, tag = self.root.parent / UNIVERSAL, ckpt.tag
        target = load_dir / tag

        def convert() -> None:
            if not (target / MARKER).is_file():
                error = convert_to_universal(ckpt.path, target)
                if error:
                    raise RuntimeError(error)

        # rank 0 converts while the others wait: for a large model on many ranks longer than a collective may
        computed_on_rank0(convert, f"converting {ckpt.path} to a universal checkpoint", expected=(RuntimeError, OSError),
                          raise_as=RuntimeError, beat_s=UNIVERSAL_BEAT_S)
        return load_dir, tag, True

    def load_rank_states(self, ckpt: Checkpoint, ranks: Iterable[int]) -> list[dict[str, Any]]:
        """The saved per-rank states of `ranks` (plain data and tensors: no pickled code is run)."""
        states = []
        for rank in ranks:
            path = ckpt.rank_file(rank)
            if not path.is_file():
                raise FileNotFoundError(f"{ckpt.path} is marked complete but lacks {path.name}")
            states.append(torch.load(path, map_location="cpu", weights_only=True))
        return states


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def run_ignoring_stop_signals(cmd: list[str]) -> subprocess.CompletedProcess:
    """`cmd` with SLURM's and launchers' stop signals ignored (an ignored signal stays ignored across
    exec). They reach the whole process group; the rank handles them by stopping cleanly after this
    work, but they killed the child, and the run exited 1 with an empty error, so it was not requeued."""
    def ignore() -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
    return subprocess.run(cmd, capture_output=True, text=True, preexec_fn=ignore)


def exit_status(code: int) -> str:
    """'exit code 1' or 'killed by SIGKILL'."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def convert_to_universal(tag_dir: Path, target: Path) -> str | None:
    """Run DeepSpeed's ds_to_universal on `tag_dir` into `target` (atomically); an error text or None."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(tag_dir),
           "--output_folder", str(tmp), "--inject_missing_state", "--num_extract_workers", "2"]
    done = run_ignoring_stop_signals(cmd)
    if done.returncode != 0:
        return (f"converting {tag_dir} to a universal checkpoint (to resume on a different number of "
                f"ranks) failed ({exit_status(done.returncode)}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    (tmp / MARKER).write_text(json.dumps({"source": str(tag_dir)}))
    os.replace(tmp, target)
    return None
