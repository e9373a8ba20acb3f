"""Runs the real trainer on ToyTask for each case given as JSON: `python engine_worker.py OUT_DIR CASES_JSON`.

One process, one rank, several runs (each initialises and tears down its process group). Writes
OUT_DIR/<case>/ run directories and OUT_DIR/<case>.json with the outcome.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from toy_task import ToyTask, toy_config  # noqa: E402

from ppma_scale.engine.trainer import NonFiniteError, run  # noqa: E402
from ppma_scale.export import consolidated_state_dict  # noqa: E402
from ppma_scale.engine.checkpoint import tag_dirs, read_checkpoint  # noqa: E402
import torch  # noqa: E402
from deepspeed.utils import safe_get_full_fp32_param  # noqa: E402

out, cases = Path(sys.argv[1]), json.loads(sys.argv[2])
for case in cases:
    cfg = toy_config(**case["train"])
    outcome = {"error": None}
    task = ToyTask(cfg, case.get("poison", ()))
    resume = str(out / case["resume_from"]) if "resume_from" in case else "off"
    try:
        result = run(cfg, out / case["name"], resume=resume, task=task)
        outcome["step"] = result.step
    except (NonFiniteError, ValueError) as exc:
        outcome["error"] = f"{type(exc).__name__}: {exc}"
        if not hasattr(task, "engine"):  # failed before DeepSpeed started
            (out / f"{case['name']}.json").write_text(json.dumps(outcome))
            continue
    live = {}  # the engine's fp32 master weights at the end, gathered from whatever ZeRO keeps
    for name, param in task.engine.module.named_parameters():
        full = safe_get_full_fp32_param(param)
        live[name] = (full if full is not None else param.detach()).float().clone()
    torch.save(live, out / f"{case['name']}_live.pt")
    outcome["group_lrs"] = [group["lr"] for group in task.engine.optimizer.param_groups]
    # consolidated weights of every checkpoint, to compare steps (a skipped step must not change them)
    sums = {}
    for step, path in tag_dirs(out / case["name"] / "checkpoints"):
        state = consolidated_state_dict(read_checkpoint(path))
        sums[step] = {k: float(v.double().sum()) for k, v in state.items()}
    outcome["weight_sums"] = sums
    (out / f"{case['name']}.json").write_text(json.dumps(outcome))

from ppma_scale.engine.dist import exit_rank, shutdown  # noqa: E402

shutdown()
exit_rank(0)  # as the launch scripts do: no interpreter teardown with gloo threads still running
