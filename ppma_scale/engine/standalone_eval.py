"""A multi-view test of a saved classification checkpoint, outside training (launch/evaluate.py).

The model is rebuilt from the config that trained the checkpoint and loaded strictly (rank 0 merges
the ZeRO partitions once), then scored by the same multi-view evaluation a run makes in training.
It has its own stop handling: a test of a large set can outlast a job's time limit.
"""
from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import torch

from .agreement import StopAgreed
from .classify import ClassifyTask, evaluate_classifier
from .evaluate import headline
from .signals import StopRequest


class EvaluationStopped(Exception):
    """A stop signal ended a standalone evaluation before its end, on every rank at the same batch:
    nothing was written, and the same command tests the checkpoint again from its first video."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


def evaluate_checkpoint(cfg, checkpoint: str | Path, out_file: str | Path | None = None,
                        overwrite: bool = False) -> dict:
    """Multi-view test of a classification run's checkpoint on data.val, on every rank of the job.

    `checkpoint` is a run directory (its latest checkpoint), a checkpoints/ folder or one step_N
    folder. The model is rebuilt from `cfg` (a blended trunk re-reads its sources, which checkpoints
    do not duplicate) and loaded strictly. Its label space is the class names the checkpoint records
    (data.classes, if set, must list the same, in order; data.train is not opened, so the training
    shards need not be on disk); a checkpoint saved before they were recorded takes this config's.
    Rank 0 writes the metrics JSON (default: RUN_DIR/eval/test_<tag>.json), which records the
    checkpoint, data and views it scored, and which replaces an earlier file only with `overwrite`;
    every rank returns them. A stop signal (SLURM's SIGTERM / SIGUSR1, a first Ctrl-C) on any rank
    ends every rank at the next batch they agree on, with `EvaluationStopped` and no file: a test of
    a large set can outlast a job's time limit.
    """
    from .checkpoint import find_checkpoint, read_marker
    from .classify import check_same_classes
    from .tasks import build_task
    if cfg.run.task not in ("classify", "linprobe"):
        raise ValueError(f"run.task is {cfg.run.task!r}: only classification runs (classify, linprobe) can be "
                         "evaluated")
    if not cfg.data.val:
        raise ValueError("data.val is empty: name the test manifests, e.g. data.val=/data/ucf101/test/manifest.json")
    # its files are only listed here: reading it (below; rank 0 alone in a multi-rank job) opens them
    ckpt = find_checkpoint(checkpoint, what="checkpoint to evaluate", deep=False)
    out = Path(out_file) if out_file else ckpt.root.parent / "eval" / f"test_{ckpt.tag}.json"
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already holds an evaluation (of {_evaluated(out)}): pass --out for "
                              "another file, or --overwrite to replace it")
    cfg.model.init = None  # the checkpoint holds the whole model
    task = build_task(cfg)
    task.resume_from = ckpt.path  # so the model is not announced as starting from random weights
    marker = read_marker(ckpt.path) or {}
    if marker.get("classes"):  # the logits' label space, as recorded: the training shards need not be on disk
        if cfg.data.classes is not None:  # a class-names file given (or in the run's config) must say the same
            from ..data.shards import label_space
            check_same_classes(marker["classes"], label_space([], cfg.data.classes), ckpt.path)
        task.classes = list(marker["classes"])  # data.val's classes are checked against it when it is read
    if not task.check_checkpoint_record(marker, ckpt.path):
        print(f"WARNING: {ckpt.path} records no class names (saved before they were recorded): its logits are "
              "read in the order of this config's label space, which must be the run's own", file=sys.stderr,
              flush=True)
    stop = StopRequest(first_ctrl_c="stopping the evaluation at the next batch, writing nothing; press Ctrl-C "
                                    "again to abort at once")
    try:
        return _evaluate_loaded(cfg, task, ckpt, out, stop)
    finally:
        stop.close()


def _evaluate_loaded(cfg, task: ClassifyTask, ckpt, out: Path, stop: StopRequest) -> dict:
    """`evaluate_checkpoint` from the distributed start-up on, with `stop` installed."""
    from . import dist as distmod
    dist = distmod.init_distributed(cfg.train.dist_timeout_s)
    try:
        model = task.build_model(dist)
        from .pretrained import merged_once, read_state_dict
        with merged_once(ckpt.path, dist, out.parent) as readable:  # rank 0 merges the ZeRO partitions once
            state = read_state_dict(readable)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{ckpt.path} does not fit the model of this config: {exc}") from None
        dtype = torch.bfloat16 if cfg.train.precision == "bf16" and dist.device.type == "cuda" else torch.float32
        model.to(dist.device, dtype).eval()

        def predict(video: torch.Tensor) -> torch.Tensor:
            from ..data.transforms import normalize_video
            x = normalize_video(video.to(dist.device), cfg.augment.mean, cfg.augment.std)
            return model(x.to(dtype))

        record = {"checkpoint": str(ckpt.path), "step": ckpt.step,
                  "data_val": [str(getattr(spec, "manifest", spec)) for spec in cfg.data.val],
                  "test_clips": cfg.data.test_clips, "test_crops": cfg.data.test_crops}
        try:
            metrics = evaluate_classifier(cfg, dist, predict, out, task.label_space(), record, stop=stop)
        except StopAgreed:
            signum = int(distmod.all_reduce_max(stop.signum, dist.device))
            raise EvaluationStopped(signum, f"stopped on {signal.Signals(signum).name} before the end of the "
                                    f"evaluation: {out} was not written; the same command tests {ckpt.path} "
                                    "again") from None
        if dist.is_main:
            print(f"[evaluate] {ckpt.path}: " + " ".join(f"{k} {v:.2f}" for k, v in headline(metrics).items())
                  + f" over {metrics['videos']} videos x {metrics['views_per_video']} views -> {out}", flush=True)
        return metrics
    finally:
        distmod.shutdown()


def _evaluated(path: Path) -> str:
    """What the metrics file at `path` says it scored, for the refusal to replace it."""
    try:
        record = json.loads(path.read_text())
        return f"{record['checkpoint']} on {', '.join(record['data_val'])}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a run whose file does not say"
