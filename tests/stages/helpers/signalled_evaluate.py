"""launch/evaluate.py as one rank of a job, where rank SIGNALLED sends itself SIGTERM while it scores its
first batch of views, so the signal lands inside the evaluation without guessing at timing:
`python signalled_evaluate.py COUNTS SIGNALLED EVALUATE_ARGS...` (rank and world from env://).
COUNTS_<rank>.json gets the number of views this rank has put through the model, after every forward
(the launcher ends its ranks with os._exit, so nothing can be written at exit).
"""
import json
import os
import runpy
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))
counts, signalled, evaluate_args = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
rank = int(os.environ.get("RANK", "0"))

import ppma_scale.engine.classify as classify  # noqa: E402 - evaluate_classifier scores through it

score_eval_batches = classify.score_eval_batches
views = []


def counted_scoring(predict, batches, views_per_forward):
    def predict_counted(video):
        if rank == signalled and not views:
            os.kill(os.getpid(), signal.SIGTERM)
        views.append(video.shape[0])
        Path(f"{counts}_{rank}.json").write_text(json.dumps(sum(views)))
        return predict(video)
    return score_eval_batches(predict_counted, batches, views_per_forward)


classify.score_eval_batches = counted_scoring
sys.argv = [str(REPO / "launch" / "evaluate.py"), *evaluate_args]
runpy.run_path(sys.argv[0], run_name="__main__")
