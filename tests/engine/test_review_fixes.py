"""Regression tests for reviewed engine bugs: the console ETA, the config an export or evaluation
uses after a resume that changed it, views counted per video, and `--resume auto` with a stale `latest`.

Runs that need training use the real trainer + DeepSpeed on ToyTask, one rank, in a subprocess
(helpers/review_fixes_worker.py).
"""
import importlib.util
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

from ppma_scale.engine import metrics as metrics_module
from ppma_scale.engine.checkpoint import (LATEST, MARKER, DamagedCheckpoint, find_checkpoint, find_resume_checkpoint,
                                          latest_checkpoint, tag_for)
from ppma_scale.engine.dist import DistInfo
from ppma_scale.engine.evaluate import ViewAccumulator, run_evaluation
from ppma_scale.engine.metrics import read_jsonl

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from toy_task import toy_config  # noqa: E402

from ppma_scale.engine.resume_guard import newest_intact, plan_resume  # noqa: E402

WORKER = Path(__file__).parent / "helpers" / "review_fixes_worker.py"
REPO = Path(__file__).resolve().parents[2]
SOLO = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="gloo")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, run_worker):
    out = tmp_path_factory.mktemp("review_fixes")
    return out, run_worker(WORKER, out)



# 1. ETA ------------------------------------------------------------------------------------------

def test_eta_is_measured_from_the_first_logged_step(tmp_path, monkeypatch, capsys):
    clock = {"now": 100.0}
    monkeypatch.setattr(metrics_module, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"],
                                                                      time=lambda: 0.0))
    log = metrics_module.MetricsLogger(tmp_path, is_main=True, total_steps=100)
    record = {"epoch": 0, "loss": 1.0, "lr": 1e-3, "clips_per_s": 1, "data_wait": 0, "peak_mem_gb": 0}
    lines = []
    for step in (5, 10, 15):  # log_every 5, each step takes 1 s
        clock["now"] += 5.0
        log.log({"step": step, **record})
        lines.append(capsys.readouterr().out.strip())
    assert "eta" not in lines[0]  # no measured interval yet (it used to say ~0)
    assert lines[1].endswith("eta 0:01:30")  # 90 steps left at 1 s each (it used to say 75 s)
    assert lines[2].endswith("eta 0:01:25")


# 2. the checkpoint's own config in exports and evaluation -----------------------------------------

def test_export_metadata_carries_the_config_of_the_exported_checkpoint(runs):
    from safetensors import safe_open
    from ppma_scale.export import export_checkpoint
    out, outcomes = runs
    assert outcomes["first"]["error"] is None and outcomes["changed"]["error"] is None
    assert outcomes["changed"]["step"] == 4
    exported = {}
    for step in (4, 2):
        path = export_checkpoint(out / "run" / "checkpoints" / tag_for(step), out / f"step{step}.safetensors")
        with safe_open(str(path), "pt") as handle:
            meta = handle.metadata()
        assert meta["step"] == str(step)
        exported[step] = yaml.safe_load(meta["config"])
    assert (exported[4]["optim"]["lr"], exported[4]["model"]["drop_path"]) == (5e-4, 0.1)  # not config.yaml's
    assert (exported[2]["optim"]["lr"], exported[2]["model"]["drop_path"]) == (1e-3, 0.0)
    assert yaml.safe_load((out / "run" / "config.yaml").read_text())["optim"]["lr"] == 1e-3  # the first is kept


def test_a_resume_trains_with_the_new_optimizer_settings(runs):
    """Loading the optimizer state brought back the saved groups' weight decay and betas, so an
    --allow-config-change resume logged new values and kept training with the old ones."""
    _, outcomes = runs
    assert outcomes["first"]["groups"] == [[0.0, [0.9, 0.95]], [0.05, [0.9, 0.95]]]
    assert outcomes["changed"]["groups"] == [[0.0, [0.8, 0.9]], [0.3, [0.8, 0.9]]]


def test_switching_layer_decay_on_or_off_is_refused_on_resume():
    """Per-layer AdamW groups or not: the saved optimizer state has the other shape (DeepSpeed's own
    error named an alignment layout); a new value keeps the groups and is a defining change."""
    from ppma_scale.engine.resume_guard import compare_configs
    old = {"optim": {"layer_decay": None, "lr": 1e-3}}
    (change,) = compare_configs(old, {"optim": {"layer_decay": 0.75, "lr": 1e-3}})
    assert change.kind == "incompatible"
    (change,) = compare_configs({"optim": {"layer_decay": 0.75}}, {"optim": {"layer_decay": 0.65}})
    assert change.kind == "defining"


def _launch_evaluate():
    spec = importlib.util.spec_from_file_location("launch_evaluate_under_test", REPO / "launch" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_launch_evaluate_defaults_to_the_config_of_the_checkpoint_it_tests(runs, monkeypatch, tmp_path):
    import ppma_scale.engine.standalone_eval as standalone_eval
    out, _ = runs
    run_dir = out / "run"
    seen = []
    monkeypatch.setattr(standalone_eval, "evaluate_checkpoint",
                        lambda cfg, checkpoint, out_file, overwrite: seen.append((cfg, checkpoint)))
    launch = _launch_evaluate()
    assert launch.main([str(run_dir), "data.test_clips=3"]) == 0
    cfg, checkpoint = seen[-1]
    assert checkpoint == run_dir / "checkpoints" / tag_for(4)  # the run's latest, trained after the config change:
    # the very checkpoint whose config was read (a run still training may save a newer one meanwhile)
    assert (cfg.optim.lr, cfg.model.drop_path, cfg.data.test_clips) == (5e-4, 0.1, 3)
    step2 = str(run_dir / "checkpoints" / tag_for(2))
    assert launch.main([str(run_dir), "--checkpoint", step2]) == 0
    assert (seen[-1][0].optim.lr, seen[-1][0].model.drop_path, str(seen[-1][1])) == (1e-3, 0.0, step2)
    explicit = tmp_path / "explicit.yaml"  # --config still wins
    explicit.write_text((run_dir / "config.yaml").read_text())
    assert launch.main([str(run_dir), "--config", str(explicit), "optim.lr=0.25"]) == 0
    assert seen[-1][0].optim.lr == 0.25 and seen[-1][0].model.drop_path == 0.0


# 3. views per video ------------------------------------------------------------------------------

def test_a_video_given_more_views_than_clips_x_crops_is_an_error():
    twice = [(torch.randn(3, 3), torch.tensor([0, 0, 0]), torch.tensor([7, 7, 7])),
             (torch.randn(3, 3), torch.tensor([0, 0, 0]), torch.tensor([7, 7, 7])),
             (torch.randn(3, 3), torch.tensor([1, 1, 1]), torch.tensor([8, 8, 8]))]
    with pytest.raises(RuntimeError, match="video 7 got more than 3 views"):
        run_evaluation(twice, 3, expected_videos=2, views_per_video=3)
    with pytest.raises(RuntimeError, match="video 7: 3, video 8: 3"):  # too few, caught after the gather
        run_evaluation(twice[1:], 3, expected_videos=2, views_per_video=4)
    metrics = run_evaluation(twice[1:], 3, expected_videos=2, views_per_video=3)
    assert metrics["videos"] == 2 and metrics["views_per_video"] == [3]
    acc = ViewAccumulator(3, views_per_video=2)
    acc.add(torch.zeros(2, 3), torch.tensor([0, 0]), torch.tensor([4, 4]))
    with pytest.raises(RuntimeError, match="video 4 got more than 2 views"):
        acc.add(torch.zeros(1, 3), torch.tensor([0]), torch.tensor([4]))


def test_evaluate_classifier_passes_the_streams_views_per_video(monkeypatch, tmp_path, tiny_shards):
    import ppma_scale.engine.classify as classify
    from ppma_scale.config import load_config
    from ppma_scale.data.manifest import load_manifest
    real = classify.views_stream

    class FirstBatchTwice:  # the real evaluation stream over real shards, its first batch delivered again
        def __init__(self, *args):
            self.stream = real(*args)

        def __getattr__(self, name):
            return getattr(self.stream, name)

        def __iter__(self):
            batches = iter(self.stream)
            first = next(batches)
            yield first
            yield from batches
            yield first

    monkeypatch.setattr(classify, "views_stream", FirstBatchTwice)
    val = tiny_shards["downstream_val"]
    cfg = load_config(REPO / "configs" / "demo" / "linprobe_test.yaml",
                      [f"data.train={val}", f"data.val={val}", "data.num_workers=0"])
    classes = list(load_manifest(val).classes)
    with pytest.raises(RuntimeError, match=r"video \d+ got more than \d+ views"):
        classify.evaluate_classifier(cfg, SOLO, lambda x: torch.zeros(x.shape[0], len(classes)), tmp_path / "m.json",
                                     classes)


# 4. `--resume auto` and a stale `latest` -----------------------------------------------------------

def test_resume_auto_takes_the_newest_complete_tag_when_latest_is_stale(runs):
    out, outcomes = runs
    assert outcomes["stale_latest"]["error"] is None and outcomes["stale_latest"]["step"] == 6
    events = read_jsonl(out / "stale" / "events.jsonl")
    assert [e["step"] for e in events if e["event"] == "resume"] == [2, 4]  # the second resume: step 4, not 2
    assert not [e for e in events if e["event"] == "checkpoint_set_aside"]
    ckpts = out / "stale" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir() if p.is_dir()) == [tag_for(2), tag_for(4), tag_for(6)]


def test_stale_latest_everywhere_and_set_aside_tags_are_never_picked(runs, tmp_path):
    out, _ = runs
    run_dir = tmp_path / "run"
    shutil.copytree(out / "run", run_dir)
    root = run_dir / "checkpoints"
    (root / LATEST).write_text(tag_for(2))  # killed between step 4's marker and the `latest` rewrite
    assert newest_intact(root)[0].step == 4
    assert latest_checkpoint(root).step == 4
    assert find_checkpoint(run_dir).step == 4 and find_checkpoint(root).step == 4  # export, evaluate, model.init
    assert find_resume_checkpoint("auto", run_dir).step == 4
    cfg = toy_config(max_steps=6, zero_stage=0, precision="fp32", ckpt_every=0)
    cfg.optim.lr, cfg.model.drop_path = 5e-4, 0.1
    cfg.optim.weight_decay, cfg.optim.betas = 0.3, [0.8, 0.9]  # as the worker's resumed run
    plan = plan_resume(cfg, run_dir, "auto")
    assert plan.checkpoint.step == 4 and plan.abandoned == []
    assert all(c.kind == "operational" for c in plan.changes)  # step 4's own recipe: nothing defining
    # a complete tag set aside (by a resume of an earlier step, or as damaged) keeps its marker but is never taken
    for reason in ("after-step_00000004", "damaged", "replaced"):
        shutil.copytree(root / tag_for(4), root / f"{tag_for(9)}.{reason}")
    assert newest_intact(root)[0].step == 4 and latest_checkpoint(root).step == 4
    # a damaged newest tag: resume falls back past it; export names it
    model = root / tag_for(4) / "mp_rank_00_model_states.pt"
    model.write_bytes(model.read_bytes()[:100])
    ckpt, damaged = newest_intact(root)
    assert ckpt.step == 2 and [p.name for p, _ in damaged] == [tag_for(4)]
    with pytest.raises(DamagedCheckpoint, match="mp_rank_00_model_states.pt"):
        find_checkpoint(run_dir)
    assert (root / tag_for(4) / MARKER).is_file()


def test_evaluations_of_training_a_rewind_abandoned_do_not_count():
    """Rewound to step 2, the run's old eval at step 4 describes other weights: the step-4 eval of
    the rewound run is still owed (an interrupted one must run on resume), and a summary must not
    report the old top-1 as this run's."""
    from ppma_scale.engine.metrics import standing_evals
    events = [{"event": "start", "step": 0}, {"event": "eval", "step": 2, "top1": 0.2},
              {"event": "eval", "step": 4, "top1": 0.9},  # the original run
              {"event": "start", "step": 2}, {"event": "eval_interrupted", "step": 4},  # rewound, stopped in eval
              {"event": "start", "step": 4}]  # resumed
    assert [e["top1"] for e in standing_evals(events)] == [0.2]
    assert [e["top1"] for e in standing_evals(events + [{"event": "eval", "step": 4, "top1": 0.5}])] == [0.2, 0.5]
    resumed_same_step = [{"event": "start", "step": 0}, {"event": "eval", "step": 4, "top1": 0.9},
                         {"event": "start", "step": 4}]
    assert [e["top1"] for e in standing_evals(resumed_same_step)] == [0.9]
