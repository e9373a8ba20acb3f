"""One rank of a two-rank classification run whose evaluation gets a stop signal:
`python eval_stop_worker.py OUT RUN_DIR TRAIN VAL SIGNAL_AT` (rank and world from env://).

The real trainer, DeepSpeed engine, ClassifyTask and multi-view evaluation stream over the tiny shard
sets (configs/demo/finetune_test.yaml, random init, 2 videos per step and rank: 4 steps per epoch,
an evaluation every epoch, 1 video of 2 views per evaluation batch: 4 batches per rank). Rank 1 sends
itself SIGUSR1 while it scores its first evaluation batch of step SIGNAL_AT (-1: never), so the
signal lands inside the evaluation without guessing at timing. The run resumes from RUN_DIR.
Writes OUT/outcome_<rank>.json: the run's result and what the task did, in order
(["train", step] per optimizer step taken from `step`, ["eval", step] per evaluation batch scored).
"""
import json
import os
import signal
import sys
from pathlib import Path

out, run_dir, train, val, signal_at = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
rank = int(os.environ["RANK"])
CONFIG = Path(__file__).resolve().parents[3] / "configs" / "demo" / "finetune_test.yaml"

from ppma_scale.config import load_config  # noqa: E402
from ppma_scale.engine.classify import ClassifyTask  # noqa: E402
from ppma_scale.engine.dist import exit_rank, shutdown  # noqa: E402
from ppma_scale.engine.trainer import run  # noqa: E402


class SignalledClassify(ClassifyTask):
    """Records its training steps and scored evaluation batches; signals itself as described above."""

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.done: list[list] = []

    def loss(self, engine, batch, ctx):
        if ctx.micro_step == 0:
            self.done.append(["train", ctx.step])
        return super().loss(engine, batch, ctx)

    def _predict(self, engine, ctx, video):  # once per evaluation batch: its 2 views are one forward
        if rank == 1 and ctx.step == signal_at and ["eval", ctx.step] not in self.done:
            os.kill(os.getpid(), signal.SIGUSR1)
        self.done.append(["eval", ctx.step])
        return super()._predict(engine, ctx, video)


cfg = load_config(CONFIG, ["model.init=null", f"data.train={train}", f"data.val={val}", "train.micro_batch=2",
                           "train.max_steps=6", "train.eval_every=1", "train.log_every=5", "train.keep_last=5"])
task = SignalledClassify(cfg)
result = run(cfg, run_dir, resume="auto", task=task)
(out / f"outcome_{rank}.json").write_text(json.dumps({"step": result.step, "stopped_by": result.stopped_by,
                                                     "done": task.done}))
shutdown()
exit_rank(0)
