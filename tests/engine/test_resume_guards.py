"""What a resume refuses or repairs before DeepSpeed loads anything (resume_guard, checkpoint checks, metrics).

The file-level checks run here on hand-made tags of real torch files; the same guards run on the
real trainer and DeepSpeed engine below (helpers/resume_worker.py) and through the launcher in tests/e2e.
"""
import json
from pathlib import Path

import pytest
import torch

from ppma_scale.config import build_config, config_to_dict, load_config
from ppma_scale.engine.checkpoint import (LATEST, MARKER, DamagedCheckpoint, find_checkpoint,
                                          read_checkpoint, tag_for, verify_checkpoint)
from ppma_scale.engine.dist import DistInfo
from ppma_scale.engine.metrics import EVENTS_FILE, METRICS_FILE, MetricsLogger
from ppma_scale.engine.resume_guard import compare_configs, plan_resume

SOLO = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="gloo")
REPO = Path(__file__).resolve().parents[2]


def make_tag(root: Path, step: int, world_size: int = 2, config: dict | None = None, task: str = "mae",
             **marked) -> Path:
    """A complete ZeRO-2 tag whose files have DeepSpeed's names and are real (tiny) torch files."""
    path = root / tag_for(step)
    path.mkdir(parents=True)
    names = ["mp_rank_00_model_states.pt"] + [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(world_size)]
    names += [f"rank_{r:05d}.pt" for r in range(world_size)]
    for name in names:
        torch.save({"w": torch.arange(64.0)}, path / name)
    marker = {"step": step, "world_size": world_size, "zero_stage": 2, "epoch": step / 4, "task": task}
    if config is not None:
        marker["config"] = config
    (path / MARKER).write_text(json.dumps({**marker, **marked}))
    (root / LATEST).write_text(path.name)
    return path


def test_torn_last_metrics_line_is_dropped_and_a_torn_middle_line_is_named(tmp_path, capsys):
    good = [json.dumps({"step": s, "loss": 1.0}) for s in (1, 2, 3)]
    (tmp_path / METRICS_FILE).write_text("\n".join(good) + '\n{"step": 4, "lo')  # killed mid-write
    (tmp_path / EVENTS_FILE).write_text('{"event": "start"}\n{"event": "checkp')
    logger = MetricsLogger(tmp_path, is_main=True, total_steps=10)
    logger.keep_until(2)
    assert (tmp_path / METRICS_FILE).read_text() == good[0] + "\n" + good[1] + "\n"
    assert (tmp_path / EVENTS_FILE).read_text() == '{"event": "start"}\n'
    assert f"{tmp_path / METRICS_FILE}:4: dropped a torn last line" in capsys.readouterr().err
    assert (tmp_path / "metrics.after-step_2.jsonl").read_text() == good[2] + "\n"  # kept aside, not lost
    (tmp_path / METRICS_FILE).write_text(good[0] + "\n{oops\n" + good[2] + "\n")
    with pytest.raises(ValueError, match=rf"{METRICS_FILE}:2: not a JSON record"):
        logger.keep_until(3)


def test_damaged_checkpoint_files_are_named_with_the_previous_tag(tmp_path):
    root = tmp_path / "run" / "checkpoints"
    older = make_tag(root, 4)
    verify_checkpoint(read_checkpoint(make_tag(root, 6)))  # intact: no error
    damage = {  # the audit's cases: truncated model / optimizer file, zero-length partition, missing files
        "mp_rank_00_model_states.pt": lambda p: p.write_bytes(p.read_bytes()[:100]),
        "zero_pp_rank_1_mp_rank_00_optim_states.pt": lambda p: p.write_bytes(b""),
        "rank_00000.pt": lambda p: p.write_bytes(p.read_bytes()[:-30]),
        "rank_00001.pt": Path.unlink,
    }
    for name, hurt in damage.items():
        tag = make_tag(root, 8)
        hurt(tag / name)
        with pytest.raises(DamagedCheckpoint) as caught:
            verify_checkpoint(read_checkpoint(tag))
        assert str(tag / name) in str(caught.value) and f"--resume {root / tag_for(6)}" in str(caught.value)
        for child in tag.iterdir():
            child.unlink()
        tag.rmdir()
    (older / MARKER).write_text('{"step": 4,\n "world_')  # corrupt marker: named for export / evaluate too
    with pytest.raises(ValueError, match=rf"{older / MARKER} is damaged"):
        find_checkpoint(older)


def test_resume_auto_falls_back_past_damaged_tags_but_never_to_scratch(tmp_path):
    cfg = build_config({"train": {"max_steps": 20}})
    root = tmp_path / "checkpoints"
    make_tag(root, 4)
    bad = make_tag(root, 8)
    (bad / "mp_rank_00_model_states.pt").write_bytes(b"")
    plan = plan_resume(cfg, tmp_path, "auto")
    assert plan.checkpoint.step == 4 and [p for p, _ in plan.damaged] == [bad]
    assert "mp_rank_00_model_states.pt: empty" in plan.damaged[0][1]
    with pytest.raises(DamagedCheckpoint, match="is marked complete but damaged"):
        plan_resume(cfg, tmp_path, str(bad))  # an explicit PATH is not replaced by another one
    (root / tag_for(4) / "rank_00001.pt").unlink()
    with pytest.raises(DamagedCheckpoint, match="every checkpoint in .* is damaged"):
        plan_resume(cfg, tmp_path, "auto")


def test_config_keys_are_operational_defining_or_incompatible():
    old = config_to_dict(build_config({"data": {"train": ["/a/m.json"]}}))
    new = config_to_dict(build_config({
        "data": {"train": ["/moved/m.json"], "num_workers": 7, "img_size": 112}, "optim": {"lr": 0.5},
        "train": {"max_steps": 100, "micro_batch": 4}, "run": {"output": "elsewhere"}}))
    kinds = {c.key: c.kind for c in compare_configs(old, new)}
    assert kinds == {"data.train[0].manifest": "operational", "data.num_workers": "operational",
                     "data.img_size": "incompatible", "optim.lr": "defining", "train.max_steps": "operational",
                     "train.micro_batch": "defining", "run.output": "operational"}
    more = config_to_dict(build_config({"data": {"train": ["/a/m.json", "/b/m.json"]}}))
    assert [(c.key, c.kind) for c in compare_configs(old, more)] == [("data.train", "defining")]


def test_test_time_views_define_a_linear_probe_that_caches_its_training_features():
    """The cached probe's training features are computed at data.test_clips x data.test_crops views:
    changing them on a resume changes its training data (elsewhere they only change evaluations)."""
    def kinds(task, average=None):
        model = {"average": average} if average else {}
        old = config_to_dict(build_config({"run": {"task": task}, "model": model, "data": {"train": ["/a/m.json"]}}))
        new = config_to_dict(build_config({"run": {"task": task}, "model": model,
                                           "data": {"train": ["/a/m.json"], "test_clips": 1, "test_crops": 1}}))
        return {c.key: c.kind for c in compare_configs(old, new)}
    assert kinds("linprobe") == {"data.test_clips": "defining", "data.test_crops": "defining"}
    assert kinds("classify") == {"data.test_clips": "operational", "data.test_crops": "operational"}
    assert kinds("linprobe", ["/a", "/b"]) == {"data.test_clips": "operational", "data.test_crops": "operational"}


def test_another_number_of_blended_trunks_cannot_resume():
    """alpha holds one logit per trunk: --allow-config-change could not load it, so it is not offered."""
    def kind(old, new):
        configs = [config_to_dict(build_config({"run": {"task": "classify"}, "model": {"average": a, "init": None},
                                                "data": {"train": ["/a/m.json"]}})) for a in (old, new)]
        return {c.key: c.kind for c in compare_configs(*configs)}["model.average"]
    assert kind(["/a", "/b"], ["/a", "/b", "/c"]) == "incompatible"
    assert kind(["/a", "/b"], ["/a", "/moved/b"]) == "defining"  # allowed with --allow-config-change


def test_a_shape_spelled_out_equal_to_its_size_row_is_no_change():
    base = {"data": {"train": ["/a/m.json"]}, "model": {"size": "b"}}
    old = config_to_dict(build_config(base))
    same = config_to_dict(build_config(dict(base, model={"size": "b", "embed_dim": 768, "num_heads": 12})))
    assert compare_configs(old, same) == []
    wider = config_to_dict(build_config(dict(base, model={"size": "b", "depth": 10})))
    assert [(c.key, c.old, c.new, c.kind) for c in compare_configs(old, wider)] == [
        ("model.depth", 12, 10, "incompatible")]


def test_resuming_a_classification_run_needs_no_model_init(tmp_path, tiny_shards, capsys):
    """An interrupted align/fine-tune resumes after its model.init source is gone (the checkpoint holds
    every weight), and the source is not read again."""
    from ppma_scale.engine.tasks import build_task
    from ppma_scale.engine.trainer import validate
    overrides = [f"data.train={tiny_shards['synthetic']}", "data.val=[]", f"model.init={tmp_path / 'stage1_gone'}"]
    cfg = load_config(REPO / "configs" / "demo" / "align_test.yaml", overrides)
    run_dir = tmp_path / "align"
    cfg.run.output = str(run_dir)
    with pytest.raises(FileNotFoundError, match="model.init"):  # a fresh start still needs it
        validate(cfg, build_task(cfg), run_dir, "auto")
    make_tag(run_dir / "checkpoints", 2, config=config_to_dict(cfg), task="classify")
    cfg.train.max_steps = 4
    task = build_task(cfg)
    validate(cfg, task, run_dir, "auto")
    task.build_model(SOLO)  # would fail reading model.init
    out = capsys.readouterr().out
    assert "every weight comes from the checkpoint" in out and "stage1_gone) is not read" in out


def test_a_resume_on_re_packed_shards_is_refused_before_any_rank_starts(tmp_path, tiny_shards):
    """Same dataset name and size in other shards: the data cursor would count in the wrong clips."""
    import shutil
    from ppma_scale.data.manifest import load_manifest
    from ppma_scale.data.shards import open_sources
    from ppma_scale.engine.preflight import validate
    from ppma_scale.engine.tasks import build_task
    copies = []
    for name in ("trained_on", "copied", "repacked"):
        copies.append(tmp_path / name)
        shutil.copytree(tiny_shards["nohuman"].parent, copies[-1])
    repacked = load_manifest(copies[2])
    repacked.shards[0], repacked.shards[1] = repacked.shards[1], repacked.shards[0]  # sample i is another clip
    repacked.save(copies[2])

    def config(data):
        cfg = load_config(REPO / "configs" / "demo" / "pretrain_test.yaml", [f"data.train={data}"])
        cfg.run.output = str(tmp_path / "run")
        return cfg
    trained = config(copies[0])
    make_tag(tmp_path / "run" / "checkpoints", 2, config=config_to_dict(trained),
             data_layouts=[d.layout for d in open_sources(trained.data.train)[0]])
    for data in copies[:2]:  # the same shards, wherever they are
        cfg = config(data)
        assert validate(cfg, build_task(cfg), tmp_path / "run", "auto", allow_config_change=True).checkpoint
    cfg = config(copies[2])
    with pytest.raises(ValueError, match=rf"data.train\[0\] \({copies[2]}\): not the shards .*step_00000002 was "
                                         r"trained on \(re-packed"):
        validate(cfg, build_task(cfg), tmp_path / "run", "auto", allow_config_change=True)


WORKER = Path(__file__).parent / "helpers" / "resume_worker.py"


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """One ToyTask run resumed in every way the guards judge (see helpers/resume_worker.py)."""
    import subprocess
    import sys
    out = tmp_path_factory.mktemp("resume_engine")
    done = subprocess.run([sys.executable, str(WORKER), str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return out, json.loads((out / "outcomes.json").read_text()), done.stdout + done.stderr


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_engine_resume_falls_back_past_a_damaged_latest_and_a_torn_metrics_line(resumed):
    out, outcomes, log = resumed
    assert outcomes["fallback"]["error"] is None and outcomes["fallback"]["step"] == 4
    ckpts = out / "main" / "checkpoints"
    assert (ckpts / "step_00000003.damaged" / "mp_rank_00_model_states.pt").stat().st_size == 100  # kept as it was
    assert "DAMAGED CHECKPOINT" in log and "mp_rank_00_model_states.pt: truncated" in log
    events = read_jsonl(out / "main" / "events.jsonl")
    assert [e["step"] for e in events if e["event"] == "resume"][0] == 2
    assert any(e["event"] == "damaged_checkpoint" for e in events)
    assert [m["step"] for m in read_jsonl(out / "main" / "metrics.jsonl")] == [1, 2, 3, 4, 5]


def test_engine_resume_refusals_write_nothing(resumed):
    out, outcomes, log = resumed
    expected = {"lr_changed": ["optim.lr: 0.001 -> 0.002", "--allow-config-change"],
                "depth_changed": ["model.depth: 2 -> 3", "not even with --allow-config-change"],
                "past_end": ["is at step 4, already past the end of this run (train.max_steps=2)"],
                "foreign": ["is a checkpoint of another run", "already holds checkpoints of its own (newest: step 4)"]}
    for name, phrases in expected.items():
        outcome = outcomes[name]
        assert outcome["error"] and all(p in outcome["error"] for p in phrases), (name, outcome["error"])
        assert not outcome["deepspeed_started"] and outcome["changed"] == [], (name, outcome)
    done = outcomes["already_done"]  # max_steps == the checkpoint's step: says so, trains and saves nothing
    assert done["step"] == 4 and set(done["changed"]) <= {"ds_config.json", "events.jsonl", "metrics.jsonl"}
    assert "main is already complete at step 4 (the run's length: 4 steps); nothing to train" in log


def test_engine_resume_with_allowed_config_change_keeps_the_first_config(resumed):
    out, outcomes, _ = resumed
    assert outcomes["lr_allowed"]["error"] is None and outcomes["lr_allowed"]["step"] == 5
    run_dir = out / "main"
    assert load_config(run_dir / "config.yaml").optim.lr == pytest.approx(1e-3)
    assert load_config(run_dir / "config.resume-step_00000004.yaml").optim.lr == pytest.approx(2e-3)
    change = [e for e in read_jsonl(run_dir / "events.jsonl") if e["event"] == "config_change"][-1]
    assert {"key": "optim.lr", "old": 1e-3, "new": 2e-3, "kind": "defining"} in change["changes"]
