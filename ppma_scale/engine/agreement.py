"""Ranks fail together: a rank that cannot read its next batch tells the others before anyone computes.

Without this, a rank whose data fails (too many unreadable samples, a label mismatch, an evaluation
that read none of its videos) raises alone while the other ranks go on into the next collective
(the gradient reduction, the gather of evaluation results). What they see there depends on the
transport: gloo reports "Connection closed by peer" once the failed process is gone, NCCL an
aborted communicator or, when the failed process does not exit, nothing until
`train.dist_timeout_s`. Either way the healthy ranks' logs do not say what failed, and with
DeepSpeed's multi-node hostfile (pdsh) launcher each node only has its own log.

So every batch fetch on every rank ends with one small collective: has any rank failed, has any
rank run out, and (when the caller passes its `StopRequest`) has a stop signal reached any rank?
Each other rank then raises `PeerFailure` naming the failed rank and its error; on a stop every rank
raises `StopAgreed` at that same fetch, so a long pass (an evaluation) ends on time for the save
without a collective of its own.
Its cost is one more tiny all-reduce per micro-batch next to the one the trainer already makes per
step for stop signals. At a step's first micro-batch the device has just been synchronised by that
stop check, so only the collective's latency is added; with gradient accumulation each later fetch
also waits for the previous micro-batch's backward. Not yet measured on a GPU.
"""
from __future__ import annotations

from typing import Iterable, Iterator, TypeVar

import torch
import torch.distributed as dist

from .signals import StopRequest

T = TypeVar("T")


class PeerFailure(RuntimeError):
    """Another rank failed; this one stops with it instead of waiting for it in a collective."""


class StopAgreed(Exception):
    """A stop signal reached some rank: every rank leaves its pass over batches at the same fetch.
    Not a RuntimeError, so that no handler of data errors takes it for one."""


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def agree(error: BaseException | None, ended: bool, what: str, device: torch.device | str = "cpu",
          stop: bool = False) -> None:
    """Collective: raise `error` on the rank that has it and `PeerFailure` on every other rank when any
    rank failed; a RuntimeError on all ranks when some ran out of batches while others did not (they
    would otherwise wait for each other in the next collective); `StopAgreed` on all ranks when any
    passed `stop` and the batches have not ended (a pass that has read everything is left to finish)."""
    if not _active():
        if error is not None:
            raise error
        if stop and not ended:
            raise StopAgreed(f"a stop signal arrived while {what}")
        return
    flags = torch.tensor([int(error is not None), int(ended), int(stop)], dtype=torch.int64, device=device)
    dist.all_reduce(flags)  # summed: how many ranks failed, ended, were asked to stop
    failed, ended_count, stopping = flags.tolist()
    world = dist.get_world_size()
    if failed:
        messages: list = [None] * world
        mine = f"{type(error).__name__}: {error}" if error is not None else None
        dist.all_gather_object(messages, mine)
        if error is not None:
            raise error
        named = [(rank, text) for rank, text in enumerate(messages) if text]
        rank, text = named[0]
        more = f" (and {len(named) - 1} more ranks)" if len(named) > 1 else ""
        raise PeerFailure(f"rank {rank} failed while {what}{more}: {text}. Every rank stops here instead of "
                          "waiting for it; that rank's log has the traceback")
    if 0 < ended_count < world:
        raise RuntimeError(f"{ended_count} of {world} ranks ran out of batches while {what}, the others did not: "
                           "the ranks' data streams are uneven (this is a bug in the stream's split)")
    if stopping and not ended_count:
        raise StopAgreed(f"a stop signal reached {stopping} of {world} ranks while {what}: every rank stops at "
                         "this batch")


def agreed(batches: Iterable[T], what: str, device: torch.device | str = "cpu",
           stop: StopRequest | None = None) -> Iterator[T]:
    """`batches`, with every fetch (the last, ending one included) agreed on by all ranks (see `agree`;
    `device`: where the process group's collectives run, this rank's GPU under NCCL). `what`
    completes "rank N failed while ...", e.g. "reading its training batch". With `stop`, a stop
    signal on any rank raises `StopAgreed` on every rank at the same fetch, `batches` closed first
    (an evaluation stream's decode workers end before the caller saves)."""
    iterator = iter(batches)
    while True:
        item, error, ended = None, None, False
        try:
            item = next(iterator)
        except StopIteration:
            ended = True
        except Exception as exc:  # noqa: BLE001 - re-raised by agree() on this rank
            error = exc
        try:
            agree(error, ended, what, device, stop=stop is not None and stop.requested)
        except StopAgreed:
            close = getattr(iterator, "close", None)
            if callable(close):
                close()
            raise
        if ended:
            return
        yield item
