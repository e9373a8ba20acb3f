"""One rank of a 2-rank job (no launcher) whose rank 1 cannot write DeepSpeed's files of checkpoint 2:
`python save_fail_worker.py OUT [oserror|torch]`. `oserror`: ENOSPC, as a full disk or quota does
to a plain write; `torch`: the RuntimeError torch.save raises instead on a full disk. Writes
OUT/rank<R>.json with the error each rank ended with and how long it took."""
import errno
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine  # noqa: E402
from toy_task import ToyTask, toy_config  # noqa: E402

from ppma_scale.engine.dist import exit_rank, shutdown  # noqa: E402
from ppma_scale.engine.trainer import run  # noqa: E402

rank, out = int(os.environ["RANK"]), Path(sys.argv[1])
kind = sys.argv[2] if len(sys.argv) > 2 else "oserror"
write = TorchCheckpointEngine.save


def failing_write(self, state_dict, path):
    if rank == 1 and "step_00000002" in str(path):
        if kind == "torch":
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4736 vs 4630")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    return write(self, state_dict, path)


TorchCheckpointEngine.save = failing_write
cfg = toy_config(max_steps=4, ckpt_every=2, dist_timeout_s=60)
start, result = time.time(), {}
try:
    run(cfg, out / "run", resume="off", task=ToyTask(cfg))
    result["error"] = None
except Exception as exc:  # noqa: BLE001 - what each rank ended with is the result
    result["error"] = f"{type(exc).__name__}: {exc}"
result["seconds"] = time.time() - start
(out / f"rank{rank}.json").write_text(json.dumps(result))
shutdown()
exit_rank(1 if result["error"] else 0)
