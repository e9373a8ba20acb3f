"""One rank of a two-process job started without a launcher (as each node's processes are under
DeepSpeed's pdsh launcher: nothing kills the others when one fails).

`python rank_failure_worker.py agree OUT` runs `agreed` over in-memory batches, case after case, and
writes what each rank saw; `... stop OUT` does the same with a real SIGUSR1 to rank 1 (and a real
StopRequest on each rank); `python rank_failure_worker.py train OUT` runs the real trainer and
DeepSpeed on ToyTask with rank 1's stream failing at its third batch. Rank and world come from the
env:// variables the test sets.
"""
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

mode, out = sys.argv[1], Path(sys.argv[2])
rank = int(os.environ["RANK"])


def outcome(fn) -> dict:
    try:
        return {"items": fn(), "error": None}
    except Exception as exc:  # noqa: BLE001 - recorded for the test to judge
        return {"items": None, "error": f"{type(exc).__name__}: {exc}"}


def failing_at(fail_rank: int, index: int, count: int):
    """`count` batches; on `fail_rank`, fetch number `index` raises (index == count: the ending fetch)."""
    for i in range(count + 1):
        if rank == fail_rank and i == index:
            raise RuntimeError(f"rank {rank} data broke at fetch {i}")
        if i == count:
            return
        yield i


if mode == "agree":
    from ppma_scale.engine.agreement import agreed
    from ppma_scale.engine.dist import init_distributed, shutdown
    init_distributed(timeout_s=60)
    cases = {
        "clean": lambda: list(agreed(range(3), "reading")),
        "rank1_mid": lambda: list(agreed(failing_at(1, 1, 3), "reading its training batch")),
        "rank1_at_end": lambda: list(agreed(failing_at(1, 3, 3), "reading its evaluation videos")),
        "both": lambda: list(agreed(failing_at(rank, 2, 3), "reading")),
        "uneven": lambda: list(agreed(range(3 + rank), "reading")),
        "after": lambda: list(agreed(range(2), "reading")),  # the group still works after the failures
    }
    (out / f"agree_{rank}.json").write_text(json.dumps({name: outcome(fn) for name, fn in cases.items()}))
    shutdown()
elif mode == "stop":
    import signal
    from ppma_scale.engine.agreement import StopAgreed, agreed
    from ppma_scale.engine.dist import init_distributed, shutdown
    from ppma_scale.engine.signals import StopRequest
    init_distributed(timeout_s=60)

    def signalled_after(item: int, count: int = 4) -> list:
        """The items every rank got from `agreed(range(count))` while rank 1 signals itself on `item`."""
        got, stop = [], StopRequest()
        try:
            for i in agreed(range(count), "reading its evaluation videos", stop=stop):
                got.append(i)
                if rank == 1 and i == item:
                    os.kill(os.getpid(), signal.SIGUSR1)
        except StopAgreed as exc:
            got.append(f"StopAgreed: {exc}")
        finally:
            stop.close()
        return got

    cases = {
        "mid": lambda: signalled_after(1),
        "at_end": lambda: signalled_after(3),  # after the last batch: the pass has read everything, it ends
        "without_stop": lambda: list(agreed(range(2), "reading")),  # the flag is this call's only
    }
    (out / f"stop_{rank}.json").write_text(json.dumps({name: outcome(fn) for name, fn in cases.items()}))
    shutdown()
else:
    from toy_task import ToyStream, ToyTask, toy_config
    from ppma_scale.engine.agreement import PeerFailure
    from ppma_scale.engine.dist import shutdown
    from ppma_scale.engine.trainer import run

    class BreakingStream(ToyStream):
        def __iter__(self):
            for batch in super().__iter__():
                if self.rank == 1 and self.index == 3:
                    raise RuntimeError("dataset toy: 51 samples in a row could not be read (rank 1's shards)")
                yield batch

    class BreakingTask(ToyTask):
        def build_train_stream(self, dist, engine):
            return BreakingStream(dist.rank, self.cfg.train.micro_batch)

    cfg = toy_config(max_steps=6, dist_timeout_s=600)
    result = {"error": None}
    try:
        run(cfg, out / "run", resume="off", task=BreakingTask(cfg))
    except PeerFailure as exc:
        result["error"] = f"PeerFailure: {exc}"
    except RuntimeError as exc:
        result["error"] = f"RuntimeError: {exc}"
    (out / f"train_{rank}.json").write_text(json.dumps(result))
    shutdown()

from ppma_scale.engine.dist import exit_rank  # noqa: E402

exit_rank(0)
