"""Crash-safe writing of a shard set: tars appear only when complete, progress survives kill -9.

- `ShardFile` writes a tar (webdataset `TarWriter`) under a hidden temporary name, fsyncs it,
  hashes it and renames it into place, so a reader never sees a partial shard.
- `Journal` is an append-only JSON-lines log, one line per finished shard, naming the span of
  input positions it covers and the inputs rejected in that span. A re-run with the same inputs
  and settings (same fingerprint) resumes after the last logged shard; a torn last line (killed
  mid-write) is ignored. The journal, fingerprint first, is on disk before the first shard, so tars
  in a folder without one were not written by a pack that can be resumed there.
- `OutputLock` makes one pack job at a time the writer of a folder (`flock` on `.pack.lock`, held
  for the whole job): two jobs writing the same shards and journal would corrupt the set.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from pathlib import Path
from typing import Any

import webdataset as wds

from ppma_scale.atomic import write_text_atomic
from ppma_scale.folder_lock import FolderLock, FolderLocked

JOURNAL_NAME = ".pack-journal.jsonl"
LOCK_NAME = ".pack.lock"  # hidden, and no shard name: never taken for a shard or a file another job wrote
TAR_MTIME = 0  # fixed member timestamps: identical inputs give byte-identical shards (an int: a float
# mtime costs every member an extra PAX header)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ShardFile:
    """One tar being written; `finish()` makes it visible under its final name."""

    def __init__(self, folder: Path, name: str):
        self.path = folder / name
        self.tmp = folder / f".{name}.tmp"
        self._handle = open(self.tmp, "wb")
        self._tar = wds.TarWriter(self._handle, mtime=TAR_MTIME)
        self.samples = self.frames = 0
        self.seconds = 0.0

    @property
    def bytes(self) -> int:
        return self._tar.tarstream.offset  # archive position (the file itself lags: tar buffers records)

    def size_with(self, member_bytes: int) -> int:
        """The closed tar's size if a sample of `member_bytes` (headers included) were added now:
        tar ends with two zero blocks and is padded to whole records."""
        end = self.bytes + member_bytes + 2 * tarfile.BLOCKSIZE
        return -(-end // tarfile.RECORDSIZE) * tarfile.RECORDSIZE

    def write(self, sample: dict[str, Any], frames: int, seconds: float) -> None:
        self._tar.write(sample)
        self.samples += 1
        self.frames += frames
        self.seconds += seconds

    def finish(self) -> dict[str, Any]:
        self._tar.close()  # ends the archive; the handle is ours to flush and close
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        info = {"url": self.path.name, "samples": self.samples, "bytes": self.tmp.stat().st_size,
                "sha256": sha256_file(self.tmp), "frames": self.frames, "seconds": self.seconds}
        os.replace(self.tmp, self.path)
        _fsync_dir(self.path.parent)
        return info

    def discard(self) -> None:
        """Drop an unfinished tar (an interrupted job): its temporary file goes, nothing is renamed."""
        try:
            self._tar.close()  # ends the tar stream (else it writes into a closed file when collected)
        except (OSError, ValueError):
            pass  # e.g. a full disk, or already closed: the file is deleted anyway
        finally:
            self._handle.close()
            self.tmp.unlink(missing_ok=True)


class Journal:
    """Which shards are finished, for one (inputs, settings) fingerprint."""

    def __init__(self, folder: Path, fingerprint: str):
        self.path = folder / JOURNAL_NAME
        self.fingerprint = fingerprint

    def recorded_fingerprint(self) -> str | None:
        if not self.path.is_file():
            return None
        first = self.path.read_text().split("\n", 1)[0]
        try:
            return json.loads(first).get("fingerprint")
        except json.JSONDecodeError:
            return None

    def entries(self) -> list[dict[str, Any]]:
        """Finished shards whose files are still intact (same size); stops at the first that is not."""
        if self.recorded_fingerprint() != self.fingerprint:
            return []
        kept = []
        for line in self.path.read_text().split("\n")[1:]:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                break  # torn write at the kill; everything after it is redone
            url = entry.get("url")
            if url is not None:
                shard = self.path.parent / url
                if not shard.is_file() or shard.stat().st_size != entry["bytes"]:
                    break
            kept.append(entry)
        return kept

    def start(self, entries: list[dict[str, Any]]) -> None:
        """(Re)write the journal holding exactly `entries`, atomically."""
        lines = [json.dumps({"fingerprint": self.fingerprint})] + [json.dumps(e) for e in entries]
        write_text_atomic(self.path, "\n".join(lines) + "\n")
        _fsync_dir(self.path.parent)  # durable before any shard: shards without a journal are not ours

    def append(self, entry: dict[str, Any]) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(entry) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def shard_files(folder: Path, prefix: str) -> list[Path]:
    """The tars of `prefix` and their temporary files in `folder` (what a pack there may replace), sorted."""
    pattern = re.compile(rf"^\.?{re.escape(prefix)}-\d+\.tar(\.tmp)?$")
    return sorted(path for path in folder.iterdir() if pattern.match(path.name))


def remove_unlisted_shards(folder: Path, prefix: str, keep: set[str]) -> None:
    """Delete temporary files and tars of `prefix` that no journal entry vouches for."""
    for path in shard_files(folder, prefix):
        if path.name not in keep:
            path.unlink()


OutputLocked = FolderLocked  # another pack job holds the output folder's lock


class OutputLock(FolderLock):
    """The pack job's lock on its output folder (`FolderLock` on `.pack.lock`)."""

    def __init__(self, folder: Path):
        super().__init__(folder, LOCK_NAME, "ppma-pack job", "wait for it to finish (rerunning the same "
                         "command then resumes or reuses its set) or choose another --output")
