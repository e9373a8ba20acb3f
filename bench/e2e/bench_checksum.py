"""What the checkpoint checksums cost: a save of a ViT-B MAE's training state (fp32 weights and both
Adam moments, as one rank of a ZeRO world of one writes it) against the checksum of the files it wrote.

Each round: torch.save + fsync (the baseline: what a save cost before), then `file_checksum` of the
file (read back from the page cache, as the save does), then the same sum again as a resume's deep
check does it. Rounds alternate; the median of each is reported.

    python bench/e2e/bench_checksum.py --rounds 5 [--dir /scratch/somewhere]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import sys

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ppma_scale.config import build_config  # noqa: E402
from ppma_scale.engine.checkpoint import file_checksum  # noqa: E402
from ppma_scale.models import build_mae  # noqa: E402


def training_state(size: str) -> dict[str, torch.Tensor]:
    cfg = build_config({"run": {"task": "mae"}, "model": {"size": size}})
    model = build_mae(cfg.model, cfg.mae, num_frames=16, img_size=224)
    state = {}
    for name, param in model.named_parameters():
        state[name] = param.detach().float()
        state[name + ".exp_avg"] = torch.randn_like(state[name])
        state[name + ".exp_avg_sq"] = torch.rand_like(state[name])
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="b")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    state = training_state(args.size)
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = Path(folder) / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
        saves, sums, resums = [], [], []
        for _ in range(args.rounds):
            start = time.perf_counter()
            torch.save(state, path)
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
            saves.append(time.perf_counter() - start)
            start = time.perf_counter()
            first = file_checksum(path)
            sums.append(time.perf_counter() - start)
            start = time.perf_counter()
            assert file_checksum(path) == first
            resums.append(time.perf_counter() - start)
        size_mb = path.stat().st_size / 2**20
    result = {"size": args.size, "file_mib": round(size_mb), "rounds": args.rounds,
              "save_fsync_s": statistics.median(saves), "checksum_s": statistics.median(sums),
              "resume_check_s": statistics.median(resums),
              "checksum_over_save": statistics.median(sums) / statistics.median(saves),
              "checksum_gb_per_s": size_mb / 1024 / statistics.median(sums), "all": [saves, sums, resums]}
    print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items() if k != "all"}))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
