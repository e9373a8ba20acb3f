"""Resume scenarios on the real trainer + DeepSpeed (ToyTask, one rank, one process): `python resume_worker.py OUT`.

Writes OUT/outcomes.json: per scenario, the error (or None), the step reached, whether DeepSpeed
was started and which files of the run directory it changed. Scenarios run in order on the same
run directories (see test_resume_guards.py).
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from toy_task import ToyTask, toy_config  # noqa: E402

from ppma_scale.engine.trainer import run  # noqa: E402

out = Path(sys.argv[1])
main, other = out / "main", out / "other"
outcomes = {}


def snapshot(run_dir):
    return {str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(run_dir.rglob("*")) if p.is_file()} if run_dir.exists() else {}


def attempt(name, run_dir, resume="auto", allow=False, cfg_edit=None, before=None, **train):
    cfg = toy_config(ckpt_every=1, **train)
    if cfg_edit:
        cfg_edit(cfg)
    if before:
        before()
    task = ToyTask(cfg)
    files = snapshot(run_dir)
    try:
        result = run(cfg, run_dir, resume=resume, task=task, **({"allow_config_change": True} if allow else {}))
        outcomes[name] = {"error": None, "step": result.step}
    except ValueError as exc:
        outcomes[name] = {"error": f"{type(exc).__name__}: {exc}"}
    outcomes[name]["deepspeed_started"] = hasattr(task, "engine")
    after = snapshot(run_dir)
    outcomes[name]["changed"] = sorted(k for k in set(files) | set(after) if files.get(k) != after.get(k))


def damage_latest():
    tag = main / "checkpoints" / "step_00000003"
    model = tag / "mp_rank_00_model_states.pt"
    model.write_bytes(model.read_bytes()[:100])
    with open(main / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 4, "loss": 0.')  # a crash mid-line


def set_lr(value):
    return lambda cfg: setattr(cfg.optim, "lr", value)


def set_depth(cfg):
    cfg.model.depth = 3


attempt("first", main, max_steps=3)
attempt("fallback", main, max_steps=4, before=damage_latest)
attempt("lr_changed", main, max_steps=6, cfg_edit=set_lr(2e-3))
attempt("depth_changed", main, max_steps=6, allow=True, cfg_edit=set_depth)
attempt("past_end", main, max_steps=2)
attempt("already_done", main, max_steps=4)
attempt("other", other, max_steps=2, cfg_edit=lambda cfg: setattr(cfg.run, "seed", 1))
attempt("foreign", main, resume=str(other / "checkpoints" / "step_00000002"), max_steps=6)
attempt("lr_allowed", main, max_steps=5, allow=True, cfg_edit=set_lr(2e-3))
(out / "outcomes.json").write_text(json.dumps(outcomes, indent=1))

from ppma_scale.engine.dist import exit_rank, shutdown  # noqa: E402

shutdown()
exit_rank(0)  # as the launch scripts do: no interpreter teardown with gloo threads still running
