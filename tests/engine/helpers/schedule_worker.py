"""Run-length, stop and final-evaluation scenarios on the real trainer + DeepSpeed (ToyTask, one
rank): `python schedule_worker.py OUT`. Writes OUT/outcomes.json (step reached, stream batches
consumed, how the run stopped) and leaves each scenario's run directory under OUT.
"""
import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from toy_task import ToyStream, ToyTask, toy_config  # noqa: E402

from ppma_scale.engine.trainer import run  # noqa: E402

out = Path(sys.argv[1])
outcomes = {}


class SignalledTask(ToyTask):
    """Sends itself SIGTERM during optimizer step `signal_at` (counted from 0); evaluates if asked."""

    def __init__(self, cfg, signal_at=None):
        super().__init__(cfg)
        self.signal_at, self.evaluated = signal_at, []

    def build_train_stream(self, dist, engine):
        self.stream = ToyStream(dist.rank, self.cfg.train.micro_batch)
        return self.stream

    def loss(self, engine, batch, ctx):
        if ctx.step == self.signal_at and ctx.micro_step == 0:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().loss(engine, batch, ctx)


class EvaluatingTask(SignalledTask):
    def evaluate(self, engine, ctx):
        self.evaluated.append(ctx.step)
        return {"toy_score": float(ctx.step)}


def attempt(name, task_cls, run_dir, resume="off", signal_at=None, **train):
    cfg = toy_config(**train)
    task = task_cls(cfg, signal_at)
    result = run(cfg, out / run_dir, resume=resume, task=task)
    outcomes[name] = {"step": result.step, "stopped_by": result.stopped_by, "batches": task.stream.index,
                      "evaluated": task.evaluated}


# 8 batches per epoch with grad_accum 3: 3 epochs are 24 batches in 8 optimizer steps
attempt("accum3_epochs3", SignalledTask, "accum", grad_accum=3, epochs=3, max_steps=None, eval_every=1)
# a stop during step 5 of 6 logs the steps since the last record (log_every 4)
attempt("stop_mid_window", SignalledTask, "window", signal_at=4, log_every=4, max_steps=6)
attempt("stop_mid_window_resumed", SignalledTask, "window", resume="auto", log_every=4, max_steps=6)
# a stop during the last step skips its evaluation; the resume owes it and runs it
attempt("stop_at_end", EvaluatingTask, "final", signal_at=3, max_steps=4, eval_every=0)
attempt("stop_at_end_resumed", EvaluatingTask, "final", resume="auto", max_steps=4, eval_every=0)
attempt("stop_at_end_resumed_again", EvaluatingTask, "final", resume="auto", max_steps=4, eval_every=0)
# an earlier attempt that died before its first checkpoint: its config and records are kept aside
crashed = out / "crashed"
crashed.mkdir()
(crashed / "config.yaml").write_text("an: earlier attempt's config\n")
(crashed / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')
attempt("fresh_after_crash", SignalledTask, "crashed", resume="auto", max_steps=2)
(out / "outcomes.json").write_text(json.dumps(outcomes))

# a complete tag in the way of a save is set aside, never deleted (the real engine saves over it)
in_way = ToyTask(toy_config(max_steps=2))
run(in_way.cfg, out / "in_way", resume="off", task=in_way)
from ppma_scale.engine.checkpoint import CheckpointManager  # noqa: E402
from ppma_scale.engine.dist import init_distributed  # noqa: E402
CheckpointManager(out / "in_way" / "checkpoints", init_distributed(), keep_last=50).save(
    in_way.engine, 2, {"saved": "again"}, {})

from ppma_scale.engine.dist import exit_rank, shutdown  # noqa: E402

shutdown()
exit_rank(0)
