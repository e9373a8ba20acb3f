"""One rank of a 2-rank gloo job (env:// variables) exercising our collectives (`computed_on_rank0`,
`gather_features`). Writes OUT/<case>_<rank>.json: what the call returned or raised, and how long it
waited. Usage: collectives_worker.py CASE OUT."""
from __future__ import annotations

import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from ppma_scale.engine.dist import computed_on_rank0  # noqa: E402
from ppma_scale.engine.features import gather_features  # noqa: E402

TIMEOUT_S = 4  # the process group's collective timeout


def slow(seconds: float):
    def work():
        time.sleep(seconds)
        return {"answer": 42, "by": dist.get_rank()}
    return work


def failing(kind: type[Exception]):
    def work():
        raise kind("the saved states do not fit")
    return work


def features_of(rows: list[int]) -> dict[str, torch.Tensor]:
    """This rank's features of videos `rows` (2 views x 3 dims, values that name the video)."""
    index = torch.tensor(rows, dtype=torch.int64)
    feats = index.float()[:, None, None] + torch.arange(6, dtype=torch.float32).view(1, 2, 3) / 10
    return {"features": feats, "label": index % 5, "index": index}


def gathered(rows_by_rank: list[list[int]]):
    rows = rows_by_rank[dist.get_rank()]
    local = features_of(rows) if rows else {"features": torch.zeros(0, 1, 0), "label": torch.zeros(0, dtype=torch.long),
                                            "index": torch.zeros(0, dtype=torch.long)}  # as extract_features gives
    merged = gather_features(local, chunk_bytes=100)  # 40 bytes a row: chunks of 2 rows
    return {key: value.tolist() for key, value in merged.items()}


CASES = {
    "features_uneven": lambda: gathered([[0, 2, 4, 6, 8, 10, 12], [1, 3, 5]]),
    "features_one_rank_empty": lambda: gathered([[], [3, 1, 2]]),
    "ok": lambda: computed_on_rank0(slow(0), "answering"),
    "expected": lambda: computed_on_rank0(failing(ValueError), "answering"),
    "unexpected": lambda: computed_on_rank0(failing(KeyError), "answering"),
    "long_with_beat": lambda: computed_on_rank0(slow(3 * TIMEOUT_S), "converting", beat_s=0.5),
    "long_without_beat": lambda: computed_on_rank0(slow(3 * TIMEOUT_S), "converting"),
}


def main() -> None:
    case, out = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=TIMEOUT_S))
    start = time.monotonic()
    try:
        record = {"value": CASES[case]()}
    except Exception as exc:  # noqa: BLE001 - the test reads what was raised
        record = {"error": f"{type(exc).__name__}: {exc}"}
    record["waited_s"] = time.monotonic() - start
    (out / f"{case}_{os.environ['RANK']}.json").write_text(json.dumps(record))
    os._exit(0)  # gloo's threads may hold a timed-out group: leave without tearing it down


if __name__ == "__main__":
    main()
