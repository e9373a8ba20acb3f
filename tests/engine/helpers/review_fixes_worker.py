"""Real trainer + DeepSpeed runs (ToyTask, one rank, one process) for test_review_fixes.py:
`python review_fixes_worker.py OUT`.

OUT/run:   2 steps, then resumed with another optim.lr / weight_decay / betas and model.drop_path
           (--allow-config-change) to 4.
OUT/stale: a copy of OUT/run whose `latest` still names step 2 (a kill between step 4's marker and the
           `latest` rewrite), resumed with --resume auto to 6 steps.
OUT/outcomes.json: per run, the error (or None) and the step reached.
"""
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from toy_task import ToyTask, toy_config  # noqa: E402

from ppma_scale.engine.trainer import run  # noqa: E402

out = Path(sys.argv[1])
outcomes = {}


def attempt(name, run_dir, max_steps, resume, changed):
    cfg = toy_config(max_steps=max_steps, zero_stage=0, precision="fp32", ckpt_every=0)
    if changed:
        cfg.optim.lr, cfg.model.drop_path = 5e-4, 0.1
        cfg.optim.weight_decay, cfg.optim.betas = 0.3, [0.8, 0.9]
    task = ToyTask(cfg)
    try:
        result = run(cfg, run_dir, resume=resume, task=task, allow_config_change=True)
        outcomes[name] = {"error": None, "step": result.step,
                          "groups": [[g["weight_decay"], list(g["betas"])] for g in task.engine.optimizer.param_groups]}
    except ValueError as exc:
        outcomes[name] = {"error": f"{type(exc).__name__}: {exc}"}


attempt("first", out / "run", 2, "off", changed=False)
attempt("changed", out / "run", 4, "auto", changed=True)
shutil.copytree(out / "run", out / "stale")
(out / "stale" / "checkpoints" / "latest").write_text("step_00000002")
attempt("stale_latest", out / "stale", 6, "auto", changed=True)
(out / "outcomes.json").write_text(json.dumps(outcomes))

from ppma_scale.engine.dist import exit_rank, shutdown  # noqa: E402

shutdown()
exit_rank(0)  # as the launch scripts do: no interpreter teardown with gloo threads still running
