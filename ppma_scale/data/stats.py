"""Counting and naming what the stream skipped: per-batch deltas in workers, one log in the main process.

Undecodable and unreadable samples count against one share limit (`data.max_decode_failures`): a
run whose shards are mostly gone stops instead of training on the remnant.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("ppma_scale.data")
MAX_NAMED_FAILURES = 20  # failure names carried per batch (counts are always exact)
LOGGED_FAILURES = 50  # failure names logged one by one; after that, counts only (stats() keeps the last ones)
MIN_JUDGED = 100  # samples seen before a running share is judged (a few early failures are noise)
COUNTS = ("samples", "decode_failures", "unreadable")


@dataclass
class Stats:
    """Counts since the last batch, shipped with it from a worker to the main process."""

    samples: int = 0
    decode_failures: int = 0
    unreadable: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    shard_problems: list[dict[str, str]] = field(default_factory=list)

    def fail(self, key: str, dataset: str, reason: str, shard: str = "") -> None:
        self.decode_failures += 1
        if len(self.failed) < MAX_NAMED_FAILURES:
            self.failed.append({"key": key, "dataset": dataset, "shard": shard, "reason": reason})

    def take(self, shard_problems: list[dict[str, str]]) -> dict[str, Any]:
        """This delta (with the reader's new shard problems), and start a new one."""
        self.shard_problems.extend(shard_problems)
        shard_problems.clear()
        out = dict(self.__dict__)
        self.__init__()
        return out


def check_skipped_share(counts: dict[str, Any], share: float | None, minimum: int = MIN_JUDGED,
                        failed: list[dict[str, str]] = (), shards: list[dict[str, str]] = ()) -> None:
    """Raise if more than `share` of the samples seen were skipped (undecodable or unreadable)."""
    seen = sum(int(counts.get(name, 0)) for name in COUNTS)
    skipped = int(counts.get("decode_failures", 0)) + int(counts.get("unreadable", 0))
    if share is None or seen < max(minimum, 1) or skipped <= share * seen:
        return
    names = [f["key"] for f in failed[-5:]]
    bad = [p["url"] for p in shards[:5]]
    raise RuntimeError(f"{skipped} of {seen} samples were skipped ({counts.get('decode_failures', 0)} undecodable, "
                       f"{counts.get('unreadable', 0)} unreadable), more than data.max_decode_failures={share}; "
                       f"recent undecodable: {names}; unreadable shards: {bad}")


class StatsLog:
    """Totals of one rank; logs each failure name (up to a limit) and each bad shard once."""

    def __init__(self, decoder: str, max_failure_share: float | None = None):
        self.totals: dict[str, Any] = {"samples": 0, "decode_failures": 0, "unreadable": 0, "failed": [],
                                       "shard_problems": [], "decoder": decoder}
        self.max_failure_share = max_failure_share
        self._reported: set[str] = set()

    def merge(self, delta: dict[str, Any]) -> None:
        totals = self.totals
        for name in COUNTS:
            totals[name] += delta.get(name, 0)
        for failure in delta.get("failed", []):
            if totals["decode_failures"] <= LOGGED_FAILURES:
                shard = f" in {failure['shard']}" if failure.get("shard") else ""
                log.warning("skipped sample %s (%s%s): %s", failure.get("key"), failure.get("dataset", "?"), shard,
                            failure.get("reason"))
            totals["failed"] = (totals["failed"] + [failure])[-LOGGED_FAILURES:]
        for problem in delta.get("shard_problems", []):
            if problem["url"] not in self._reported:  # every worker reports once; log once per rank
                self._reported.add(problem["url"])
                totals["shard_problems"].append(problem)
                log.warning("shard %s skipped: %s", problem["url"], problem["reason"])
        self.check()

    def check(self, since: dict[str, int] | None = None, minimum: int = MIN_JUDGED) -> None:
        """Apply the share limit to the totals (or to what came after the counts `since`)."""
        counts = {n: self.totals[n] - (since or {}).get(n, 0) for n in COUNTS}
        check_skipped_share(counts, self.max_failure_share, minimum, self.totals["failed"],
                            self.totals["shard_problems"])

    def counts(self) -> dict[str, int]:
        return {n: self.totals[n] for n in COUNTS}

    def snapshot(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self.totals.items()}
