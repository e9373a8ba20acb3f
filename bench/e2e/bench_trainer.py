"""What the training loop costs on top of DeepSpeed, and what a checkpoint costs, in one process.

    PYTHONPATH=. python bench/e2e/bench_trainer.py                      # CPU: the demo's tiny MAE
    PYTHONPATH=. python bench/e2e/bench_trainer.py --size b --frames 16 --img 224 --micro 32 \
        --precision bf16 --steps 40                                     # a GPU: ViT-B MAE, 16x224

Both variants train the same MAE (from `ppma_scale.models`) on the same in-memory uint8 clips,
with the same normalisation and masks (`ppma_scale.data`), through the same DeepSpeed engine
config (`ds_config_for`); data decoding is left out on purpose, it is bench/data's subject.

- baseline: a bare `deepspeed.initialize` loop: forward, backward, step, nothing else;
- trainer:  `ppma_scale.engine.run` (lr schedule, non-finite checks, stop-signal all-reduce, metrics,
            throughput accounting), steady-state clips/s from its own metrics.jsonl.

Then the trainer's checkpoint save (DeepSpeed files + per-rank state + marker + rotation) is timed,
and on one rank the conversion of that checkpoint to a universal one (for a 2 -> 1 resume).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ppma_scale.config import build_config  # noqa: E402
from ppma_scale.engine.tasks import MAETask, StepContext  # noqa: E402


class MemoryStream:
    """A fixed set of uint8 clips, cycled; enough of the TrainStream interface for the trainer."""

    steps_per_epoch = 10**6

    def __init__(self, clips: torch.Tensor, micro: int) -> None:
        self.clips, self.micro, self.index = clips, micro, 0

    def __iter__(self):
        while True:
            start = (self.index * self.micro) % (len(self.clips) - self.micro + 1)
            self.index += 1
            yield {"video": self.clips[start:start + self.micro]}

    def state_dict(self):
        return {"index": self.index}

    def load_state_dict(self, state):
        self.index = state["index"]

    def stats(self):
        return {}


class MemoryMAETask(MAETask):
    """The real MAE task (model, masks, loss) fed from memory."""

    def __init__(self, cfg, clips: torch.Tensor) -> None:
        super().__init__(cfg)
        self.clips = clips

    def validate(self) -> None:
        pass

    def build_train_stream(self, dist, engine):
        self.engine = engine
        return MemoryStream(self.clips, self.cfg.train.micro_batch)


def make_config(args, run_dir: Path):
    return build_config({
        "run": {"task": "mae", "seed": 0, "output": str(run_dir)},
        "model": {"size": args.size, "act_checkpoint_every": args.act_ckpt},
        "mae": {"mask_ratio": args.mask_ratio},
        "data": {"num_frames": args.frames, "img_size": args.img, "repeat_aug": 1},
        "optim": {"lr": 1e-4, "warmup_steps": 2, "clip_grad": 1.0},
        "train": {"micro_batch": args.micro, "max_steps": args.steps, "zero_stage": args.zero,
                  "precision": args.precision, "log_every": args.warmup, "ckpt_every": 0, "keep_last": 1},
    })


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop(cfg, task: MAETask, dist, clips: torch.Tensor, steps: int, warmup: int) -> float:
    """clips/s of forward + backward + step with nothing around them."""
    import deepspeed

    from ppma_scale.engine.optimizer import build_optimizer
    from ppma_scale.engine.trainer import _compute_dtype, ds_config_for
    torch.manual_seed(0)
    model = task.build_model(dist)
    optimizer = build_optimizer(task.param_groups(model), betas=[0.9, 0.95], eps=1e-8, offload="none",
                                device=dist.device)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config_for(cfg, 1))
    dtype, micro = _compute_dtype(engine), cfg.train.micro_batch
    stream = iter(MemoryStream(clips, micro))
    for step in range(steps):
        if step == warmup:
            sync(dist.device)
            started = time.perf_counter()
        ctx = StepContext(step=step, micro_step=0, epoch=0.0, dist=dist, dtype=dtype, seed=0, run_dir=Path("."))
        loss, _ = task.loss(engine, next(stream), ctx)
        engine.backward(loss)
        engine.step()
    sync(dist.device)
    rate = (steps - warmup) * micro / (time.perf_counter() - started)
    engine.destroy()
    del engine, model, optimizer
    if dist.device.type == "cuda":
        torch.cuda.empty_cache()
    return rate


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--img", type=int, default=64)
    parser.add_argument("--micro", type=int, default=16)
    parser.add_argument("--mask-ratio", type=float, default=0.75)
    parser.add_argument("--zero", type=int, default=2)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--act-ckpt", type=int, default=0)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--saves", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="alternating baseline/trainer rounds; best of each")
    parser.add_argument("--universal", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the conversion to a universal checkpoint")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from ppma_scale.engine.checkpoint import CheckpointManager, convert_to_universal
    from ppma_scale.engine.dist import init_distributed
    from ppma_scale.engine.trainer import run

    work = Path(tempfile.mkdtemp(prefix="bench_trainer_"))
    dist = init_distributed()
    cfg = make_config(args, work / "run")
    clips = torch.randint(0, 256, (4 * args.micro, 3, args.frames, args.img, args.img), dtype=torch.uint8)
    if dist.device.type == "cuda":
        clips = clips.to(dist.device)  # both variants read batches already on the device

    baselines, trainers = [], []
    for round_index in range(args.rounds):  # alternate, so drift in machine load hits both alike
        baselines.append(bare_loop(cfg, MemoryMAETask(cfg, clips), dist, clips, args.steps, args.warmup))
        task = MemoryMAETask(cfg, clips)
        run_dir = work / f"run{round_index}"
        run(cfg, run_dir, resume="off", task=task)
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        steady = records[1:]  # the first window holds the warm-up steps
        trainers.append(sum(r["clips_per_s"] * r["step_time_s"] for r in steady) / sum(r["step_time_s"] for r in steady))
        if round_index < args.rounds - 1:
            task.engine.destroy()
    baseline, trainer = max(baselines), max(trainers)
    tflops = [r.get("tflops_per_gpu") for r in steady if r.get("tflops_per_gpu")]
    mfu = [r.get("mfu") for r in steady if r.get("mfu")]

    manager = CheckpointManager(work / "saves", dist, keep_last=1)
    save_times = []
    for i in range(args.saves):
        sync(dist.device)
        started = time.perf_counter()
        ckpt = manager.save(task.engine, args.steps + i + 1, {"stream": {}, "rng": {}}, {})
        save_times.append(time.perf_counter() - started)
    ckpt_mb = sum(f.stat().st_size for f in ckpt.path.iterdir() if f.is_file()) / 2**20
    universal_s, error = None, None
    if args.universal:
        started = time.perf_counter()
        error = convert_to_universal(ckpt.path, ckpt.path / "universal")
        universal_s = None if error else time.perf_counter() - started

    device = torch.cuda.get_device_name(dist.device) if dist.device.type == "cuda" else "cpu"
    result = {"device": device, "args": vars(args) | {"json": str(args.json)}, "baseline_clips_per_s": baseline, "baseline_rounds": baselines, "trainer_rounds": trainers,
              "trainer_clips_per_s": trainer, "trainer_over_baseline": trainer / baseline,
              "trainer_tflops_per_gpu": sum(tflops) / len(tflops) if tflops else None,
              "trainer_mfu": sum(mfu) / len(mfu) if mfu else None,
              "checkpoint_mb": ckpt_mb, "save_s_median": sorted(save_times)[len(save_times) // 2],
              "universal_convert_s": universal_s, "universal_error": error}
    print(f"\ndevice {device}: ViT-{args.size} MAE {args.frames}x{args.img}, micro {args.micro}, "
          f"ZeRO-{args.zero} {args.precision}, {args.steps - args.warmup} timed steps")
    print(f"{'variant (best of ' + str(args.rounds) + ')':<28}{'clips/s':>10}{'ratio':>8}")
    print(f"{'bare DeepSpeed loop':<28}{baseline:>10.1f}{1.0:>8.3f}")
    print(f"{'ppma_scale trainer':<28}{trainer:>10.1f}{trainer / baseline:>8.3f}")
    if result["trainer_tflops_per_gpu"]:
        mfu_text = f", MFU {100 * result['trainer_mfu']:.1f}%" if result["trainer_mfu"] else ""
        print(f"trainer model TFLOP/s per GPU {result['trainer_tflops_per_gpu']:.3g}{mfu_text}")
    print(f"checkpoint: {ckpt_mb:.1f} MiB, save {result['save_s_median']:.2f} s (median of {args.saves}), "
          f"universal conversion {universal_s if universal_s is None else round(universal_s, 2)} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
