"""Shared command line of the launch scripts: `--config FILE [key=value ...] --output DIR --resume ...`.

Every stage's script is `run_rank(lambda: launch(sys.argv[1:], stage=..., tasks=(...)))`. The config is
loaded and checked before torch.distributed, DeepSpeed or the run directory are touched, so a
mistake in it costs a second and leaves nothing behind.
"""
from __future__ import annotations

import argparse
import os
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .config import Config, ConfigError, RunConfig, _where, build_config, fill_missing, missing_keys, read_config

EXIT_CONFIG_ERROR = 2
EXIT_NONFINITE = 3
EXIT_PEER_FAILED = 4  # this rank stopped because another rank failed
DRY_RUN_MFU = 0.3  # the MFU a dry run's GPU-hours assume unless --mfu (our H100 ViT-L MAE step: 32%)


@dataclass
class LaunchArgs:
    config: Path
    overrides: list[str]
    output: str | None
    resume: str
    allow_config_change: bool = False
    dry_run: bool = False
    world_size: int | None = None  # a dry run's job size (None: the launch's)
    mfu: float = DRY_RUN_MFU
    peak_tflops: float | None = None  # None: an H100 SXM's, from the table models.flops reads MFU by


def parse_launch_args(argv: list[str], stage: str) -> LaunchArgs:
    parser = argparse.ArgumentParser(
        prog=f"launch/{stage}.py", allow_abbrev=False,
        description=f"Run the {stage} stage. Works under `deepspeed`, `torchrun`, `srun` or as a plain process.",
        epilog="Example: deepspeed --num_gpus 8 launch/pretrain.py --config configs/vitl.yaml "
               "data.train=/data/nohuman/manifest.json train.micro_batch=16")
    parser.add_argument("--config", required=True, type=Path, help="YAML config (may name a `base:`)")
    parser.add_argument("--output", default=None,
                        help="run directory (config.yaml, metrics.jsonl, checkpoints/); default run.output")
    parser.add_argument("--resume", default="auto",
                        help="'auto' (default): continue from the run directory's latest checkpoint if any; "
                             "'off': start fresh; or a run / checkpoints / step_N directory to start from")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="resume even though run-defining keys (optim.*, augment.*, micro_batch, ...) changed "
                             "since the checkpoint; the changes are logged and the first config.yaml is kept")
    parser.add_argument("--dry-run", action="store_true",
                        help="check everything a launch checks before start-up and print the plan (resume point, "
                             "model, data, batch, steps, compute, memory of the model states), then exit: no "
                             "process group, nothing written. Run it with plain python, e.g. on a login node")
    parser.add_argument("--world-size", type=int, default=None,
                        help="with --dry-run: the number of ranks (GPUs) to plan for (default: this launch's)")
    parser.add_argument("--mfu", type=float, default=DRY_RUN_MFU,
                        help=f"with --dry-run: model FLOPs utilisation assumed for the GPU-hours (default {DRY_RUN_MFU})")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="with --dry-run: per-GPU peak TFLOP/s for the GPU-hours (default 989, H100 SXM bf16)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    args = parser.parse_intermixed_args(argv)
    if not args.dry_run and args.world_size is not None:
        parser.error("--world-size plans a --dry-run; a launch's ranks come from its launcher")
    if args.world_size is not None and args.world_size < 1:
        parser.error(f"--world-size must be >= 1, got {args.world_size}")
    if not 0 < args.mfu <= 1 or (args.peak_tflops is not None and args.peak_tflops <= 0):
        parser.error(f"--mfu must be in (0, 1] and --peak-tflops positive, got {args.mfu} and {args.peak_tflops}")
    output = args.output
    if output is not None and output.startswith("~"):  # bash leaves a quoted "~/x" alone: not a folder named ~
        try:
            output = str(Path(output).expanduser())
        except RuntimeError:  # no home directory to expand it to: the path as given
            pass
    return LaunchArgs(config=args.config, overrides=list(args.overrides), output=output, resume=args.resume,
                      allow_config_change=args.allow_config_change, dry_run=args.dry_run, world_size=args.world_size,
                      mfu=args.mfu, peak_tflops=args.peak_tflops)


def _fail(stage: str, message: str, code: int) -> int:
    print(f"launch/{stage}.py: error: {message}", file=sys.stderr, flush=True)
    return code


def _check_task(raw: dict, sources: dict[str, str], stage: str, tasks: tuple[str, ...]) -> None:
    """Refuse a config written for another stage's launcher, before its `???` keys are asked for."""
    run = raw.get("run")
    task = run.get("task", RunConfig.task) if isinstance(run, dict) else RunConfig.task
    if isinstance(task, str) and task in typing.get_args(typing.get_type_hints(RunConfig)["task"]) \
            and task not in tasks:  # an unknown task is left to the schema's message
        raise ConfigError(f"run.task={task!r}{_where('run.task', sources)}, but launch/{stage}.py runs "
                          f"{' or '.join(repr(t) for t in tasks)}: use the launch script of that stage")


def _load_for_resume(args: LaunchArgs, stage: str, tasks: tuple[str, ...] | None = None) -> Config:
    """The validated config; when it leaves keys `???` and the run it resumes has values for them
    (align's `model.init` on a restart), those values are taken, and said so: a resume reads its
    weights from the checkpoint, so the user need not repeat what only the first launch used.
    `tasks`: the launcher's; a config whose run.task is another is refused first."""
    raw, sources = read_config(args.config, args.overrides)
    if tasks is not None:
        _check_task(raw, sources, stage, tasks)
    if missing_keys(raw):
        from .engine.resume_guard import resumed_run_config
        output = args.output if args.output is not None else (raw.get("run") or {}).get("output")
        saved, where = resumed_run_config(output if isinstance(output, str) else None, args.resume)
        if saved is not None:
            source = f"{where}, the config of the run being resumed"
            filled = fill_missing(raw, sources, saved, source)
            from .engine.dist import resolve_launch_env
            if filled and resolve_launch_env()["RANK"] == "0":  # said once, by the rank the launcher calls 0
                print(f"launch/{stage}.py: resuming: {', '.join(filled)} left as ??? in {args.config}; "
                      f"using the resumed run's values from {where}", flush=True)
    return build_config(raw, sources)


def launch(argv: list[str], *, stage: str, tasks: tuple[str, ...]) -> int:
    """Parse, load and validate the config, train; the process exit code."""
    args = parse_launch_args(argv, stage)
    try:
        if args.output is not None and not args.output.strip():  # not the config's run.output instead
            raise ConfigError("--output is an empty path; was a shell variable unset?")
        cfg = _load_for_resume(args, stage, tasks)
        if args.output is not None:  # before the resume checks compare configs: the run's directory is --output's
            cfg.run.output = str(Path(args.output))
        if cfg.run.task not in tasks:
            raise ConfigError(f"run.task={cfg.run.task!r}, but launch/{stage}.py runs "
                              f"{' or '.join(repr(t) for t in tasks)}: use the launch script of that stage")
        if args.resume not in ("auto", "off", "none", "no", "false") and not Path(args.resume).exists():
            raise FileNotFoundError(f"--resume {args.resume}: no such file or directory")
        from .engine.tasks import build_task
        from .engine.preflight import validate
        task = build_task(cfg)
        if args.dry_run:
            from .engine.dist import launched_world_size
            task.planned_world_size = args.world_size or launched_world_size()
        plan = validate(cfg, task, args.output if args.output is not None else cfg.run.output, args.resume,
                        args.allow_config_change, deep=True if args.dry_run else None)
        if args.dry_run:
            return _dry_run(stage, args, cfg, task, plan)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        return _fail(stage, str(exc), EXIT_CONFIG_ERROR)
    from .engine.agreement import PeerFailure
    from .engine.dist import shutdown
    from .engine.trainer import NonFiniteError, run
    try:
        run(cfg, args.output, resume=args.resume, task=task, allow_config_change=args.allow_config_change, plan=plan)
    except NonFiniteError as exc:
        return _fail(stage, str(exc), EXIT_NONFINITE)
    except PeerFailure as exc:  # another rank's data failed (its log has the traceback): one line here
        return _fail(stage, str(exc), EXIT_PEER_FAILED)
    except ConfigError as exc:  # found while building the model, e.g. a model.init that does not fit it
        return _fail(stage, str(exc), EXIT_CONFIG_ERROR)
    finally:
        shutdown()  # `run` leaves the process group up, so one process can run several stages
    return 0


def _dry_run(stage: str, args: LaunchArgs, cfg: Config, task, plan) -> int:
    """Print the plan of a validated launch (engine.dry_run); nothing is started or written."""
    from .engine.dry_run import describe_run
    from .models.flops import peak_tflops
    world = task.planned_world_size
    lines = describe_run(cfg, task, plan, world, mfu=args.mfu, peak_tflops=args.peak_tflops or peak_tflops("H100"))
    print(f"launch/{stage}.py --dry-run: {args.config} on {world} rank(s): every check passed; nothing was started "
          "or written", *lines, sep="\n", flush=True)
    return 0


def run_tool(prog: str, work: Callable[[], int]) -> int:
    """Run a command-line tool's body: a mistake in its inputs (ValueError, or an OSError such as a
    missing file or an unwritable output) is printed as one line naming the tool, with exit code 2,
    instead of a traceback."""
    try:
        return work()
    except (ValueError, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR


def refuse_overwriting_inputs(outputs: Sequence[str | Path], inputs: Sequence[str | Path]) -> None:
    """Raise ValueError when a file a tool is about to write is one it reads (the same path, a
    link to it, or a weights file inside an input folder): the input would be lost."""
    from .models.convert import weights_files
    for source in inputs:
        try:
            read = weights_files(source)
        except (FileNotFoundError, ValueError):
            read = [Path(source).expanduser()]  # not there yet, or a run folder: the path itself
        for output in outputs:
            if any(_same_file(Path(output).expanduser(), file) for file in read):
                raise ValueError(f"the output {output} would overwrite the input {source}: write to another path")


def refuse_replacing_outputs(outputs: Sequence[str | Path], overwrite: bool) -> None:
    """Raise ValueError when a file a tool would write is already there and `overwrite` was not
    given: weights a user exported or averaged earlier are not replaced without being asked."""
    existing = [str(Path(output).expanduser()) for output in outputs if Path(output).expanduser().exists()]
    if existing and not overwrite:
        raise ValueError(f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}: "
                         "write to another path, or pass --overwrite to replace it")


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False
