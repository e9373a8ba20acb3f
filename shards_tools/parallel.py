"""Encode inputs in worker processes and hand the results back in input order.

Order matters: shard contents must not depend on the number of workers. A bounded window of
futures keeps every worker busy while the writer consumes results strictly in order, and keeps
memory bounded however long the input list is. A worker killed by a native crash (FFmpeg fault,
out-of-memory) breaks the pool: the window is then replayed one input per fresh process so the one
input that kills a worker is rejected and the rest are packed.
"""
from __future__ import annotations

import os
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from shards_tools.inputs import SourceItem
from shards_tools.transcode import EncodeSettings, Rejected, encode_source

CRASH_REASON = "the worker process died while decoding this input (FFmpeg crash or out of memory)"


@dataclass
class ItemResult:
    """An encoded clip (`data`, `meta`) or the reason it was rejected."""

    item: SourceItem
    data: bytes | None = None
    meta: dict[str, Any] | None = None
    reason: str | None = None


def encode_item(item: SourceItem, settings: EncodeSettings) -> ItemResult:
    """Never raises for a bad input: one broken file must not stop a pack of a million."""
    try:
        data, meta = encode_source(item.path, settings)
        return ItemResult(item, data, meta)
    except Rejected as exc:
        return ItemResult(item, reason=str(exc))
    except Exception as exc:  # noqa: BLE001 - anything else an odd input provokes is still that input's fault
        return ItemResult(item, reason=f"unexpected error while decoding: {type(exc).__name__}: {exc}")


def default_workers() -> int:
    """The cores this process may use (respects taskset / Slurm / container CPU sets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: a pack killed with -9 must not leave encoders running on its behalf."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, initializer=_exit_with_parent, initargs=(os.getpid(),))


def _encode_isolated(item: SourceItem, settings: EncodeSettings, encode: Callable) -> ItemResult:
    with _pool(1) as pool:
        try:
            return pool.submit(encode, item, settings).result()
        except BrokenProcessPool:
            return ItemResult(item, reason=CRASH_REASON)


def encode_in_order(items: Iterable[SourceItem], settings: EncodeSettings, workers: int,
                    window_per_worker: int = 4, encode: Callable = encode_item) -> Iterator[ItemResult]:
    """Yield `encode(item, settings)` results in the order of `items`, computed by `workers` processes."""
    if workers <= 1:
        for item in items:
            yield encode(item, settings)
        return
    remaining = iter(items)
    pending: deque = deque()
    pool = _pool(workers)
    try:
        while True:
            while len(pending) < workers * window_per_worker:
                item = next(remaining, None)
                if item is None:
                    break
                try:
                    future = pool.submit(encode, item, settings)
                except BrokenProcessPool:  # a worker died since the last result: replay from here
                    future = None
                pending.append((item, future))
                if future is None:
                    break
            if not pending:
                return
            item, future = pending[0]
            try:
                if future is None:
                    raise BrokenProcessPool("a worker died before this item was handed out")
                result = future.result()
            except BrokenProcessPool:
                pool.shutdown(cancel_futures=True)
                replay = list(pending)
                pending.clear()
                for lost, done in replay:  # keep what finished before the crash, redo the rest one by one
                    finished = done is not None and done.done() and not done.cancelled() and done.exception() is None
                    yield done.result() if finished else _encode_isolated(lost, settings, encode)
                pool = _pool(workers)
                continue
            pending.popleft()
            yield result
    finally:
        pool.shutdown(cancel_futures=True)
