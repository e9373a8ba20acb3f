#!/usr/bin/env python
"""Multi-view test of a classification run (clips x crops per video, scores averaged per video):
top-1, top-5, mean per-class accuracy and the confusion matrix, as JSON in RUN_DIR/eval/.

    python launch/evaluate.py RUN_DIR [data.val=/data/ucf101/test/manifest.json] [data.test_clips=5 ...]
    deepspeed --num_gpus 8 launch/evaluate.py RUN_DIR --checkpoint RUN_DIR/checkpoints/step_00001000

A stop signal (SIGTERM, SIGUSR1, a first Ctrl-C) ends every rank at the next batch, writes nothing and
exits with 128 + the signal's number (143 for SIGTERM); the same command then tests from the start.

The resolved config that trained the checkpoint being tested is used (its marker's copy, else the
run's config file in force when it was saved: config.yaml or a later config.resume-*.yaml), unless
--config names another.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout works without `pip install -e`


def checkpoint_config(location: str | Path, overrides: list[str]):
    """The checkpoint `location` names (a run directory, its checkpoints/ folder or a step_N folder)
    and the validated config that trained it, with `key.sub=value` overrides applied. The caller
    tests that checkpoint, not `location` again: a run still training may save a newer one meanwhile."""
    import copy
    from ppma_scale.config import apply_overrides, build_config
    from ppma_scale.engine.checkpoint import find_checkpoint, read_marker
    from ppma_scale.engine.resume_guard import saved_config
    ckpt = find_checkpoint(location, what="checkpoint to evaluate", deep=False)  # its files are opened when read
    saved, where = saved_config(ckpt, read_marker(ckpt.path) or {})
    if saved is None:
        raise FileNotFoundError(f"found no config for {ckpt.path} (its marker holds none and {where} does not "
                                "exist): name one with --config")
    raw, sources = copy.deepcopy(saved), {}
    apply_overrides(raw, sources, overrides)
    return build_config(raw, sources), ckpt.path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="launch/evaluate.py", description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("run_dir", type=Path, help="the classification run to test")
    parser.add_argument("--checkpoint", default=None, help="checkpoint to test (default: the run's latest)")
    parser.add_argument("--config", type=Path, default=None, help="config (default: the checkpoint's own)")
    parser.add_argument("--out", default=None, help="metrics JSON (default: RUN_DIR/eval/test_<tag>.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace the metrics JSON if it exists")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    args = parser.parse_intermixed_args(argv)
    from ppma_scale.config import ConfigError, load_config
    from ppma_scale.cli import EXIT_PEER_FAILED
    from ppma_scale.engine.agreement import PeerFailure
    from ppma_scale.engine.standalone_eval import EvaluationStopped, evaluate_checkpoint
    try:
        source = args.checkpoint or args.run_dir
        if args.config:
            cfg = load_config(args.config, args.overrides)
        else:
            cfg, source = checkpoint_config(source, args.overrides)
        evaluate_checkpoint(cfg, source, args.out, overwrite=args.overwrite)
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"launch/evaluate.py: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except EvaluationStopped as exc:  # 128 + signal: the status of a command a signal ended, as shells report it
        print(f"launch/evaluate.py: {exc}", file=sys.stderr, flush=True)
        return 128 + exc.signum
    except PeerFailure as exc:  # another rank's data failed; its log has the traceback
        print(f"launch/evaluate.py: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_PEER_FAILED
    return 0


if __name__ == "__main__":
    from ppma_scale.engine.dist import run_rank
    run_rank(lambda: main(sys.argv[1:]))
