"""Random-access reads of samples from WebDataset tars: `(url, index in shard) -> sample dict`.

Local tars are indexed once by their headers (tarfile seeks over member data, so building the index
reads a few KB per sample, not the videos) and then read by offset: a consumer that starts in the
middle of a shard, or resumes there, pays nothing for the samples before it. Streams (`pipe:`,
http) can only be read forwards: one stream per reader is kept open and continued while requests
move forwards, and a shuffled block is read ahead in file order (`prefetch`), holding the block's
encoded samples in memory as any shuffle buffer over a stream must. A missing or truncated shard is recorded once in
`problems` and its unreadable samples come back as None; nothing raises, nothing waits.
"""
from __future__ import annotations

import os
import tarfile
from collections import OrderedDict
from typing import Any, Iterator

from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_iterator

from ppma_scale.data.shards import is_local, local_path

Sample = dict[str, Any]
_INDEX_CACHE = 16  # shard indices kept per reader (each is ~100 bytes per sample)


class _LocalShard:
    """Header index of a local tar: per sample its key and (extension -> (offset, size))."""

    def __init__(self, path: str):
        self.path = path
        self.samples: list[tuple[str, dict[str, tuple[int, int]]]] = []
        self.truncated = False
        size = os.path.getsize(path)
        self.handle = open(path, "rb")
        cut: str | None = None  # key of the sample whose file the end cuts, when known
        try:
            with tarfile.open(fileobj=self.handle, mode="r:") as tar:
                for member in tar:
                    if not member.isreg() or member.name.startswith("__"):
                        continue
                    key, ext = _split(member.name)
                    if member.offset_data + member.size > size:
                        self.truncated, cut = True, key
                        break
                    if not self.samples or self.samples[-1][0] != key:
                        self.samples.append((key, {}))
                    self.samples[-1][1][ext] = (member.offset_data, member.size)
        except tarfile.ReadError:
            self.truncated = True  # a header cut short: keep the samples read so far
        if self.truncated and self.samples and cut in (None, self.samples[-1][0]):
            self.samples.pop()  # cut inside it, or unknown where: the last sample may miss its later files

    def read(self, index: int) -> Sample | None:
        if index >= len(self.samples):
            return None
        key, files = self.samples[index]
        sample: Sample = {"__key__": key}
        for ext, (offset, size) in files.items():
            self.handle.seek(offset)
            sample[ext] = self.handle.read(size)
        return sample

    def close(self) -> None:
        self.handle.close()


class _StreamShard:
    """A forward-only tar stream with the index of the next sample it will produce."""

    def __init__(self, url: str):
        self.url = url
        self.stream = gopen(url, "rb")
        files = ({**f, "__url__": url} for f in tar_file_iterator(self.stream))
        self.samples: Iterator[Sample] = group_by_keys(files)
        self.next_index = 0
        self.ended = False
        self.truncated = False

    def read(self, index: int) -> Sample | None:
        while not self.ended and self.next_index <= index:
            try:
                sample = next(self.samples)
            except StopIteration:
                self.ended = True
                break
            except (tarfile.ReadError, OSError, ValueError):
                self.ended = self.truncated = True
                break
            self.next_index += 1
            if self.next_index - 1 == index:
                return sample
        return None

    def close(self) -> None:
        try:
            self.stream.close()
        except Exception:  # noqa: BLE001 - a pipe closed early may report SIGPIPE; nothing to do
            pass


def _split(name: str) -> tuple[str, str]:
    parts = base_plus_ext(name)
    if parts is None or parts[0] is None:
        return name, ""
    return parts[0], parts[1].lower()


class ShardReader:
    """Reads samples by (url, index); records each unreadable shard once in `problems`."""

    def __init__(self, expected: dict[str, int] | None = None):
        self.expected = expected or {}
        self.problems: list[dict[str, str]] = []
        self._reported: set[str] = set()
        self._local: OrderedDict[str, _LocalShard | None] = OrderedDict()
        self._stream: _StreamShard | None = None
        self._stream_limits: dict[str, int] = {}  # stream url -> readable samples, once known short
        self._ahead: dict[tuple[str, int], Sample | None] = {}  # stream samples read ahead of their turn
        self._groups: dict[int, list[tuple[str, int]]] = {}  # which read-ahead samples belong to which caller
        self.opens = 0  # stream (re)openings: a shuffled block is read ahead so this stays ~ one per shard

    def prefetch(self, wanted: list[tuple[str, int]], group: int = 0) -> None:
        """Read the stream samples of `wanted` (a shuffled block) ahead, in file order, so that a
        forward-only stream can then serve them in any order. Local shards seek and need no help.
        What the group's previous block left unread is dropped (a block is read ahead once)."""
        for stale in self._groups.pop(group, []):
            self._ahead.pop(stale, None)
        todo = sorted({w for w in wanted if not is_local(w[0]) and w not in self._ahead})
        for url, index in todo:
            self._ahead[(url, index)] = self._read_stream(url, index)
        self._groups[group] = todo

    def read(self, url: str, index: int) -> Sample | None:
        """The `index`-th sample of shard `url`, or None if the shard is missing or ends before it."""
        if (url, index) in self._ahead:
            return self._ahead.pop((url, index))
        if is_local(url):
            shard = self._local_shard(url)
            sample = None if shard is None else shard.read(index)
            if sample is None and shard is not None:
                self._report(url, f"truncated: holds {len(shard.samples)} readable samples, "
                                  f"manifest says {self.expected.get(url, '?')}")
            return sample
        return self._read_stream(url, index)

    def _local_shard(self, url: str) -> _LocalShard | None:
        if url in self._local:
            self._local.move_to_end(url)
            return self._local[url]
        try:
            shard: _LocalShard | None = _LocalShard(local_path(url))
        except OSError as exc:
            self._report(url, f"cannot open: {exc.strerror or exc}")
            shard = None
        if shard is not None and shard.truncated:
            self._report(url, f"truncated: holds {len(shard.samples)} readable samples, "
                              f"manifest says {self.expected.get(url, '?')}")
        self._local[url] = shard
        while len(self._local) > _INDEX_CACHE:
            _, old = self._local.popitem(last=False)
            if old is not None:
                old.close()
        return shard

    def _read_stream(self, url: str, index: int) -> Sample | None:
        if index >= self._stream_limits.get(url, index + 1):
            return None
        stream = self._stream
        if stream is None or stream.url != url or stream.next_index > index:
            if stream is not None:
                stream.close()
            self.opens += 1
            try:
                stream = self._stream = _StreamShard(url)
            except Exception as exc:  # noqa: BLE001 - any transport failure means "unreadable"
                self._stream = None
                self._stream_limits[url] = 0
                self._report(url, f"cannot open: {exc}")
                return None
        sample = stream.read(index)
        if sample is None:
            self._stream_limits[url] = stream.next_index
            reason = "truncated" if stream.truncated else "ends early"
            self._report(url, f"{reason}: holds {stream.next_index} readable samples, "
                              f"manifest says {self.expected.get(url, '?')}")
        return sample

    def _report(self, url: str, reason: str) -> None:
        if url not in self._reported:
            self._reported.add(url)
            self.problems.append({"url": url, "reason": reason})

    def close(self) -> None:
        for shard in self._local.values():
            if shard is not None:
                shard.close()
        self._local.clear()
        if self._stream is not None:
            self._stream.close()
            self._stream = None
