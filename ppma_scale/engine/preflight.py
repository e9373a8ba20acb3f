"""What a run checks before it starts: everything that can be checked before a process group exists
(on every rank, the resume checkpoint's files only listed), then the resume plan rank 0 makes with
the files opened once the group exists, which every rank follows (see resume_guard)."""
from __future__ import annotations

from pathlib import Path

from ..config import Config, ConfigError
from . import dist as distmod
from .ds_config import build_ds_config
from .metrics import METRICS_FILE, read_jsonl
from .resume_guard import RESUME_OFF, ResumePlan, marked_tags, plan_resume
from .tasks import Task


def ds_config_for(cfg: Config, world_size: int, load_universal: bool = False) -> dict:
    """The DeepSpeed config of this run (also used to validate before any work)."""
    train = cfg.train
    return build_ds_config(micro_batch=train.micro_batch * cfg.data.repeat_aug, grad_accum=train.grad_accum,
                           world_size=world_size, zero_stage=train.zero_stage, precision=train.precision,
                           offload=train.offload, offload_params=train.offload_params,
                           clip_grad=cfg.optim.clip_grad, load_universal=load_universal)


def validate(cfg: Config, task: Task, run_dir: str | Path | None = None, resume: str = "auto",
             allow_config_change: bool = False, deep: bool | None = None) -> ResumePlan:
    """Everything that can be checked before a process group or a file exists, the resume point
    included (see resume_guard); the plan to resume by (an empty one without `run_dir`). `deep`:
    also open the resume checkpoint's weight files; default only when the job is one process, since
    in a multi-rank job every rank would open every rank's files: rank 0 does that once the process
    group exists (`checked_resume_plan`)."""
    if deep is None:
        deep = distmod.launched_world_size() == 1
    if run_dir is not None:
        check_run_dir_is_a_folder(Path(run_dir))
    plan = _resume_plan(cfg, task, run_dir, resume, allow_config_change, deep)
    task.validate()
    if plan.checkpoint is not None:  # e.g. a re-packed manifest lists the same classes in another order
        task.check_checkpoint_record(plan.meta, plan.checkpoint.path)
        check_same_shards(task, plan.meta, plan.checkpoint.path)
    ds_config_for(cfg, world_size=1)
    train = cfg.train
    if train.keep_last < 1:
        raise ValueError(f"train.keep_last must be >= 1, got {train.keep_last}")
    for key in ("log_every", "max_nonfinite"):
        if getattr(train, key) < 1:
            raise ValueError(f"train.{key} must be >= 1, got {getattr(train, key)}")
    if train.ckpt_every < 0 or train.eval_every < 0:
        raise ValueError("train.ckpt_every and train.eval_every must be >= 0 (0 = only at the end)")
    if train.max_steps is None and train.epochs <= 0:
        raise ValueError(f"train.epochs must be positive (or set train.max_steps), got {train.epochs}")
    world = task.world_size()
    batches = task.batches_per_epoch(world)
    if batches is not None:  # the run's own schedule, so its checks (e.g. min_lr above the peak) come now
        from .trainer import _Schedule
        start = plan.checkpoint.step if plan.checkpoint is not None else 0
        _Schedule(cfg, batches, world, start, plan.meta.get("epoch"), plan.meta.get("epoch_before"))
    return plan


def check_run_dir_is_a_folder(run_dir: Path) -> None:
    """ValueError when `run_dir`, or the nearest of its parents that exists, is not a directory (it
    was found only when the first run file was written, after DeepSpeed had started)."""
    for folder in (run_dir, *run_dir.parents):
        if folder.exists():
            if not folder.is_dir():
                raise ValueError(f"--output {run_dir}: {folder} is a file, not a directory (a run folder holds the "
                                 "run's checkpoints, logs and config)")
            return


def check_same_shards(task: Task, meta: dict, where: Path) -> None:
    """Refuse a resume whose training datasets lie in other shards than the checkpoint's (a re-pack
    with the same name and size): the data cursor would repeat some clips and skip others. A copy of
    the same shards elsewhere is fine. Checkpoints saved before layouts were recorded pass, and so
    does a task whose validate() read no manifests."""
    saved, now, specs = meta.get("data_layouts"), task.train_layouts, task.cfg.data.train
    if not isinstance(saved, list) or now is None or len(saved) != len(now):
        return  # none recorded, or another list of datasets (the data state check names that)
    changed = [f"data.train[{i}] ({spec.manifest})" for i, (spec, old, new) in enumerate(zip(specs, saved, now))
               if old != new]
    if changed:
        raise ValueError(f"{', '.join(changed)}: not the shards {where} was trained on (re-packed, or another set "
                         "of the same name?): the resume would repeat some clips and skip others. Train on the "
                         "shards the run started with, or start a new run from this one's weights "
                         "(model.init=RUN_DIR)")


def _resume_plan(cfg: Config, task: Task, run_dir: str | Path | None, resume: str, allow_config_change: bool,
                 deep: bool) -> ResumePlan:
    plan = ResumePlan(checked_files=deep)
    if run_dir is not None and resume in RESUME_OFF:
        existing = marked_tags(Path(run_dir) / "checkpoints")
        if existing:
            raise ValueError(f"--resume off, but {run_dir} already holds checkpoints (latest: step {existing[-1][0]}); "
                             "use --resume auto to continue that run, or another --output to start a new one")
    elif run_dir is not None:
        plan = plan_resume(cfg, run_dir, resume, allow_config_change, deep)
        if plan.checkpoint is not None:
            read_jsonl(Path(run_dir) / METRICS_FILE)  # a damaged metrics.jsonl is named now, not after DeepSpeed starts
            task.resume_from = plan.checkpoint.path  # its weights come from the checkpoint (model.init is not read)
    return plan


def checked_resume_plan(plan: ResumePlan, cfg: Config, task: Task, run_dir: Path, resume: str,
                        allow_config_change: bool, dist: distmod.DistInfo) -> ResumePlan:
    """Rank 0's plan on every rank. When the ranks only listed the checkpoint's files before the
    process group existed, rank 0 now plans again opening them (falling back past damaged tags as
    `--resume auto` does) and every rank gets its plan, or raises its error (ConfigError)."""
    def deep_plan() -> ResumePlan:
        if plan.checked_files:
            return plan
        outcome = _resume_plan(cfg, task, run_dir, resume, allow_config_change, deep=True)
        if outcome.checkpoint is not None:
            task.check_checkpoint_record(outcome.meta, outcome.checkpoint.path)
        return outcome

    # DamagedCheckpoint, a changed config, ...: one message on every rank
    outcome = distmod.computed_on_rank0(deep_plan, f"checking the checkpoints in {run_dir}", raise_as=ConfigError)
    if outcome.checkpoint is not None:
        task.resume_from = outcome.checkpoint.path
    return outcome
