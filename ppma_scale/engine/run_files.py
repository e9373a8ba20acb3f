"""What a run writes into its directory as it starts, and how a resume reports what it found there.

config.yaml is the run's first config and is never rewritten; a resume whose config differs writes
its own beside it. Checkpoint tags that must not be resumed (damaged, or newer than the one resumed)
are renamed aside, never deleted.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config, config_to_dict, save_config
from .checkpoint import LATEST, set_aside
from .metrics import MetricsLogger
from .resume_guard import ResumePlan


@dataclass
class RunFiles:
    """What `write_run_files` did that the resume report names (rank 0's; empty on the others)."""

    set_aside: list[tuple[Path, str | None]] = field(default_factory=list)  # (new path, why damaged / None)
    config_written: Path | None = None  # config.resume-*.yaml written for a changed resume


def write_run_files(cfg: Config, run_dir: Path, plan: ResumePlan, ds_config: dict, ckpt_root: Path) -> RunFiles:
    """Rank 0, before the first step: the configs, ds_config.json (what DeepSpeed got), tags set aside."""
    ckpt, written = plan.checkpoint, RunFiles()
    run_dir.mkdir(parents=True, exist_ok=True)
    first = run_dir / "config.yaml"
    if ckpt is None and first.exists() and _differs(first, cfg):  # an earlier attempt saved no checkpoint
        kept = _free_name(run_dir / "config.after-step_0.yaml")
        first.rename(kept)
        print(f"{run_dir} holds no checkpoint: starting afresh; the earlier attempt's config.yaml is now "
              f"{kept.name}", flush=True)
    if ckpt is None or not first.exists():
        save_config(cfg, first)
    elif plan.changes:
        written.config_written = run_dir / f"config.resume-{ckpt.tag}.yaml"
        save_config(cfg, written.config_written)
    (run_dir / "ds_config.json").write_text(json.dumps(ds_config, indent=1))
    moved = [(set_aside(path, "damaged"), reason) for path, reason in plan.damaged if path.exists()]
    moved += [(set_aside(path, f"after-{ckpt.tag}"), None) for path in plan.abandoned if path.exists()]
    if moved and ckpt is not None and ckpt.root.resolve() == Path(ckpt_root).resolve():
        (ckpt.root / LATEST).write_text(ckpt.tag)  # `latest` named a tag just moved aside
    written.set_aside = moved
    return written


def report_resume(plan: ResumePlan, written: RunFiles | None, run_dir: Path, world_size: int,
                  log: MetricsLogger) -> None:
    """The resume's events: tags set aside (damaged ones loudly), config changes, where it resumes."""
    ckpt, written = plan.checkpoint, written or RunFiles()
    for path, reason in written.set_aside:
        if reason is not None:
            log.event("damaged_checkpoint", f"WARNING: DAMAGED CHECKPOINT, moved aside to {path} (kept); "
                      f"falling back to {ckpt.tag}. {reason}", path=str(path), reason=reason)
        else:
            log.event("checkpoint_set_aside", f"resuming an earlier step: the later checkpoint {path.name} "
                      "was moved aside (kept, not deleted)", path=str(path))
    if plan.changes:
        listed = "; ".join(str(c) for c in plan.changes)
        where = (f"written to {written.config_written.name}; config.yaml keeps the first" if written.config_written
                 else "this run's config.yaml holds the new config")
        log.event("config_change", f"config changed since {ckpt.tag}: {listed} ({where})",
                  config_file=(written.config_written or run_dir / "config.yaml").name,
                  changes=[{"key": c.key, "old": c.old, "new": c.new, "kind": c.kind} for c in plan.changes])
    log.event("resume", f"resuming from {ckpt.path} at step {ckpt.step} (saved on {ckpt.world_size} ranks, "
              f"now {world_size})", step=ckpt.step, checkpoint=str(ckpt.path))


def _differs(path: Path, cfg: Config) -> bool:
    """Whether the config file at `path` resolves to another config than `cfg`."""
    import yaml
    try:
        return yaml.safe_load(path.read_text()) != yaml.safe_load(yaml.safe_dump(config_to_dict(cfg)))
    except yaml.YAMLError:
        return True


def _free_name(path: Path) -> Path:
    """`path`, or `path` with .1, .2, ... before its suffix when taken: nothing earlier is replaced."""
    candidate, k = path, 1
    while candidate.exists():
        candidate, k = path.with_name(f"{path.stem}.{k}{path.suffix}"), k + 1
    return candidate
