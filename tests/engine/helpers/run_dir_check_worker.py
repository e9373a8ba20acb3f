"""One rank of a two-process job started without a launcher (see tests/conftest.py `two_ranks_without_launcher`).

`python run_dir_check_worker.py check OUT` runs `check_shared_run_dir` case after case and writes
OUT/check_<rank>.json with what each rank saw (None, or the error). "unshared" gives rank 1 another
directory than rank 0, as a run directory on node-local disk looks from a second node.

`python run_dir_check_worker.py fsync OUT` runs the real trainer + DeepSpeed (ToyTask) on both ranks
for each ZeRO stage / precision case, with os.fsync wrapped to record the path of every file or
directory synced, and writes OUT/fsync_<rank>.json: per case, the paths synced under the run's
checkpoints/ folder, and (rank 0) the files of every checkpoint tag.
"""
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

mode, out = sys.argv[1], Path(sys.argv[2])
rank = int(os.environ["RANK"])


def outcome(fn) -> dict:
    try:
        fn()
        return {"error": None}
    except Exception as exc:  # noqa: BLE001 - recorded for the test to judge
        return {"error": f"{type(exc).__name__}: {exc}"}


if mode == "check":
    from ppma_scale.engine.dist import barrier, init_distributed, shutdown
    from ppma_scale.engine.run_dir_check import TOKEN_PREFIX, check_shared_run_dir
    info = init_distributed(timeout_s=60)
    if rank == 0:
        (out / "a_file").write_text("not a directory")  # rank 0 cannot create a run directory under it
    cases = {
        "shared": lambda: check_shared_run_dir(out / "shared" / "run", info),
        "unshared": lambda: check_shared_run_dir(out / f"node{rank}" / "run", info, wait_s=1.0),
        "rank0_cannot_write": lambda: check_shared_run_dir(out / "a_file" / "run", info),
        "after": lambda: check_shared_run_dir(out / "shared" / "run", info),  # the group still works
    }
    results = {name: outcome(fn) for name, fn in cases.items()}
    barrier()  # rank 0 removes the last token after the check's gather: look once it has
    results["left_behind"] = sorted(str(p.relative_to(out)) for p in out.rglob(TOKEN_PREFIX + "*"))
    results["rank1_dir_created"] = (out / "node1").exists()
    (out / f"check_{rank}.json").write_text(json.dumps(results))
    shutdown()
else:
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    os.fsync = recording_fsync

    from toy_task import ToyTask, toy_config
    from ppma_scale.engine.checkpoint import tag_dirs
    from ppma_scale.engine.dist import shutdown
    from ppma_scale.engine.trainer import run

    results = {}
    for name, train in {"z2_bf16": {"zero_stage": 2, "precision": "bf16"},
                        "z3_fp32": {"zero_stage": 3, "precision": "fp32"}}.items():
        run_dir = out / name
        cfg = toy_config(max_steps=2, ckpt_every=1, dist_timeout_s=120, **train)
        synced.clear()
        run(cfg, run_dir, resume="off", task=ToyTask(cfg))
        root = (run_dir / "checkpoints").resolve()
        results[name] = {
            "synced": [os.path.relpath(p, root) for p in synced if Path(p) == root or root in Path(p).parents],
            "tags": {path.name: sorted(p.name for p in path.iterdir()) for _, path in tag_dirs(root)},
        }
    (out / f"fsync_{rank}.json").write_text(json.dumps(results))
    shutdown()

from ppma_scale.engine.dist import exit_rank  # noqa: E402

exit_rank(0)
