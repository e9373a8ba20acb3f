"""One rank of a two-rank linear probe whose feature pass gets a stop signal:
`python feature_stop_worker.py OUT RUN_DIR TRAIN VAL` (rank and world from env://).

The real trainer, DeepSpeed engine and LinearProbeTask over the tiny shard sets
(configs/demo/linprobe_test.yaml, random trunk). Rank 1 sends itself SIGUSR1 while it encodes its
first batch of training videos for the feature cache (one video per batch: the feature pass reads
evaluation-style batches of micro_batch // 2 videos).
Writes OUT/outcome_<rank>.json: the run's result, the views the rank encoded and the views per video.
"""
import json
import os
import signal
import sys
from pathlib import Path

out, run_dir, train, val = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
rank = int(os.environ["RANK"])
CONFIG = Path(__file__).resolve().parents[3] / "configs" / "demo" / "linprobe_test.yaml"

from ppma_scale.config import load_config  # noqa: E402
from ppma_scale.engine.classify import LinearProbeTask  # noqa: E402
from ppma_scale.engine.dist import exit_rank, shutdown  # noqa: E402
from ppma_scale.engine.trainer import run  # noqa: E402


class SignalledProbe(LinearProbeTask):
    """Counts the views it encodes; rank 1 signals itself at its first forward."""

    encoded = 0

    def _features(self, model, dist, video):
        if rank == 1 and self.encoded == 0:
            os.kill(os.getpid(), signal.SIGUSR1)
        self.encoded += video.shape[0]
        return super()._features(model, dist, video)


cfg = load_config(CONFIG, ["model.init=null", f"data.train={train}", f"data.val={val}", "train.micro_batch=2",
                           "train.max_steps=4"])
task = SignalledProbe(cfg)
result = run(cfg, run_dir, resume="auto", task=task)
(out / f"outcome_{rank}.json").write_text(json.dumps({"step": result.step, "stopped_by": result.stopped_by,
                                                     "checkpoint": result.checkpoint and str(result.checkpoint),
                                                     "encoded": task.encoded,
                                                     "views_per_video": cfg.data.test_clips * cfg.data.test_crops}))
shutdown()
exit_rank(0)
