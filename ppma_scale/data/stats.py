"""Counting and naming what the stream skipped: per-batch deltas in workers, one log in the main process."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("ppma_scale.data")
MAX_NAMED_FAILURES = 20  # failure names carried per batch (counts are always exact)
LOGGED_FAILURES = 50  # failure names logged one by one; after that, counts only (stats() keeps the last ones)


@dataclass
class Stats:
    """Counts since the last batch, shipped with it from a worker to the main process."""

    samples: int = 0
    decode_failures: int = 0
    unreadable: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    shard_problems: list[dict[str, str]] = field(default_factory=list)

    def fail(self, key: str, dataset: str, reason: str) -> None:
        self.decode_failures += 1
        if len(self.failed) < MAX_NAMED_FAILURES:
            self.failed.append({"key": key, "dataset": dataset, "reason": reason})

    def take(self, shard_problems: list[dict[str, str]]) -> dict[str, Any]:
        """This delta (with the reader's new shard problems), and start a new one."""
        self.shard_problems.extend(shard_problems)
        shard_problems.clear()
        out = dict(self.__dict__)
        self.__init__()
        return out


class StatsLog:
    """Totals of one rank; logs each failure name (up to a limit) and each bad shard once."""

    def __init__(self, decoder: str, max_failure_share: float | None = None):
        self.totals: dict[str, Any] = {"samples": 0, "decode_failures": 0, "unreadable": 0, "failed": [],
                                       "shard_problems": [], "decoder": decoder}
        self.max_failure_share = max_failure_share
        self._reported: set[str] = set()

    def merge(self, delta: dict[str, Any]) -> None:
        totals = self.totals
        for name in ("samples", "decode_failures", "unreadable"):
            totals[name] += delta.get(name, 0)
        for failure in delta.get("failed", []):
            if totals["decode_failures"] <= LOGGED_FAILURES:
                log.warning("skipped sample %s (%s): %s", failure.get("key"), failure.get("dataset", "?"),
                            failure.get("reason"))
            totals["failed"] = (totals["failed"] + [failure])[-LOGGED_FAILURES:]
        for problem in delta.get("shard_problems", []):
            if problem["url"] not in self._reported:  # every worker reports once; log once per rank
                self._reported.add(problem["url"])
                totals["shard_problems"].append(problem)
                log.warning("shard %s skipped: %s", problem["url"], problem["reason"])
        seen = totals["samples"] + totals["decode_failures"]
        share = self.max_failure_share
        if share is not None and seen >= 100 and totals["decode_failures"] > share * seen:
            names = [f["key"] for f in totals["failed"][-5:]]
            raise RuntimeError(f"{totals['decode_failures']} of {seen} samples failed to decode, more than "
                               f"data.max_decode_failures={share}; recent: {names}")

    def snapshot(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self.totals.items()}
