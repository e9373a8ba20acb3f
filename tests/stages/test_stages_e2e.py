"""Stages after stage 1, end to end through the real `deepspeed --num_gpus 2` launcher on CPU ranks.

Three runs are shared by all assertions (each a few steps at test size, configs/demo/*_test.yaml):
- align: stage 2 from an MAE's weights (decoder and mask token dropped) on synthetic + no-human;
- linprobe: from the align run directory, features cached, trunk frozen;
- finetune with adaptive averaging: the trunk blends the MAE and the aligned trunk, alpha learned.
Then launch/evaluate.py re-tests the linear probe's checkpoint, and the average CLI blends two sources.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ppma_scale.config import load_config
from ppma_scale.engine.dist import resolve_launch_env
from ppma_scale.engine.pretrained import read_state_dict, read_trunk

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DEMO = REPO / "configs" / "demo"

pytestmark = pytest.mark.distributed


def deepspeed(script: str, config: str, run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    port = resolve_launch_env({})["MASTER_PORT"]
    cmd = [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", port, str(REPO / "launch" / script),
           "--config", str(DEMO / config), "--output", str(run_dir), *overrides]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def only_eval(run_dir: Path) -> dict:
    (path,) = sorted((run_dir / "eval").glob("step_*.json"))
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("stages")


@pytest.fixture(scope="module")
def mae_weights(work) -> Path:
    """A stage-1 model's weights as an exported file (random: the stage-1 runs are tests/e2e's)."""
    from safetensors.torch import save_file
    from ppma_scale.models import build_mae
    cfg = load_config(DEMO / "pretrain_test.yaml", ["data.train=unused"])
    torch.manual_seed(11)
    mae = build_mae(cfg.model, cfg.mae, cfg.data.num_frames, cfg.data.img_size)
    path = work / "mae.safetensors"
    save_file({k: v.contiguous() for k, v in mae.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def align(work, tiny_shards, mae_weights) -> tuple[Path, str]:
    run_dir = work / "align"
    mix = f"[{{manifest: {tiny_shards['synthetic']}, weight: 2}}, {{manifest: {tiny_shards['nohuman']}}}]"
    done = deepspeed("align.py", "align_test.yaml", run_dir, f"model.init={mae_weights}", f"data.train={mix}",
                     f"data.val={tiny_shards['downstream_val']}")
    return run_dir, done.stdout


@pytest.fixture(scope="module")
def linprobe(work, tiny_shards, align) -> tuple[Path, str]:
    run_dir = work / "linprobe"
    done = deepspeed("linprobe.py", "linprobe_test.yaml", run_dir, f"model.init={align[0]}",
                     f"data.train={tiny_shards['downstream_train']}", f"data.val={tiny_shards['downstream_val']}")
    return run_dir, done.stdout


@pytest.fixture(scope="module")
def averaged(work, tiny_shards, align, mae_weights) -> tuple[Path, str]:
    run_dir = work / "averaged"
    done = deepspeed("finetune.py", "finetune_test.yaml", run_dir, "model.init=null",
                     f"model.average=[{mae_weights}, {align[0]}]", f"data.train={tiny_shards['downstream_train']}",
                     f"data.val={tiny_shards['downstream_val']}")
    return run_dir, done.stdout


def test_align_starts_from_the_mae_trunk_and_evaluates_every_video_once(align, mae_weights):
    run_dir, stdout = align
    assert "dropped" in stdout and "decoder_blocks" in stdout and "mask_token" in stdout
    assert "4 classes, head 'linear'" in stdout
    assert [m["step"] for m in read_jsonl(run_dir / "metrics.jsonl")] == list(range(1, 7))
    resolved = load_config(run_dir / "config.yaml")
    assert resolved.optim.layer_decay == 0.75 and resolved.model.drop_path == 0.1
    assert resolved.augment.mixup == 0.8 and resolved.augment.randaugment == "rand-m7-n4-mstd0.5-inc1"
    mae, aligned = read_trunk(mae_weights).state, read_trunk(run_dir).state
    assert mae.keys() >= aligned.keys()  # the MAE's final norm is the only trunk tensor the classifier lacks
    drift = max((aligned[k] - mae[k]).abs().max().item() for k in aligned)
    assert 0 < drift < 0.05  # trained a little, from the MAE's weights (random ones differ by ~0.1 or more)
    metrics = only_eval(run_dir)
    assert metrics["videos"] == 8 and metrics["skipped_videos"] == 0 and metrics["views_per_video"] == [2]
    assert sum(map(sum, metrics["confusion"])) == 8 and len(metrics["confusion"]) == 4
    assert 0 <= metrics["top1"] <= metrics["top5"] <= 100
    events = [e for e in read_jsonl(run_dir / "events.jsonl") if e["event"] == "eval"]
    assert events and events[-1]["top1"] == pytest.approx(metrics["top1"])


def test_linear_probe_keeps_the_trunk_bit_identical(linprobe, align):
    run_dir, stdout = linprobe
    assert "feature cache: (16, 2, 32)" in stdout  # 16 training videos x 2 views, encoded once
    before = read_state_dict(align[0])
    after = read_state_dict(run_dir)
    trunk_keys = [k for k in after if k.startswith("encoder.")]
    assert len(trunk_keys) == len([k for k in before if k.startswith("encoder.")]) > 10
    for key in trunk_keys:
        assert torch.equal(after[key], before[key]), key
    assert after["head.fc.bias"].abs().max() > 1e-4  # the head trained: its bias starts at zeros
    losses = [m["loss"] for m in read_jsonl(run_dir / "metrics.jsonl")]
    assert len(losses) == 6 and all(0 < loss < 10 for loss in losses)


def test_a_run_named_by_model_init_is_merged_by_rank_0_alone(align, tiny_shards, tmp_path, two_ranks_without_launcher):
    """Each rank merging the source's ZeRO partitions would read every source rank's optimizer files."""
    run_dir = tmp_path / "probe"
    done = two_ranks_without_launcher([str(REPO / "tests" / "helpers" / "counting_launch.py"), str(tmp_path),
                                       "linprobe", "--config", str(DEMO / "linprobe_test.yaml"), "--output",
                                       str(run_dir), f"model.init={align[0]}", "train.max_steps=1",
                                       f"data.train={tiny_shards['downstream_train']}",
                                       f"data.val={tiny_shards['downstream_val']}"], timeout=240)
    assert all(d.returncode == 0 for d in done), [d.stderr[-3000:] for d in done]
    merges = [json.loads((tmp_path / f"counts_{rank}.json").read_text())["zero_merges"] for rank in range(2)]
    assert merges == [1, 0]
    assert f"trunk from {align[0]} (ours layout" in done[0].stdout  # the user's path, not the merged file's
    assert not list(run_dir.glob(".merged-*")), "the merged file is removed once every rank has read it"
    before, after = read_state_dict(align[0]), read_state_dict(run_dir)
    assert all(torch.equal(after[k], before[k]) for k in after if k.startswith("encoder."))


def test_a_run_folder_tells_the_token_grid_its_weights_were_trained_at(align):
    """model.init of a run: the grid comes from the run's own config (a learned table's token count
    alone can fit several grids)."""
    from ppma_scale.engine.pretrained import source_token_grid
    from ppma_scale.models import build_encoder
    cfg = load_config(align[0] / "config.yaml")
    expected = build_encoder(cfg.model, cfg.data.num_frames, cfg.data.img_size).grid
    assert source_token_grid(align[0], read_trunk(align[0]).state) == tuple(expected)


def test_a_dry_run_of_the_linear_probe_plans_the_steps_its_cached_features_give(linprobe, align, tiny_shards,
                                                                                  tmp_path):
    """The probe's epoch is every cached video once: the dry run's steps per epoch are those the real
    2-rank probe logged, and it names the feature pass it would make first. train.steps_per_epoch,
    which the feature stream cannot follow, is refused rather than ignored."""
    run_dir, _ = linprobe
    start = [e for e in read_jsonl(run_dir / "events.jsonl") if e["event"] == "start"][0]
    new = tmp_path / "probe"
    args = [str(REPO / "launch" / "linprobe.py"), "--config", str(DEMO / "linprobe_test.yaml"), "--output", str(new),
            f"model.init={align[0]}", f"data.train={tiny_shards['downstream_train']}",
            f"data.val={tiny_shards['downstream_val']}", "--dry-run", "--world-size", "2"]
    done = run_python(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"schedule: {start['steps_per_epoch']:,.4g} steps per epoch" in done.stdout
    assert "first one pass of the frozen trunk over the" in done.stdout and "(the feature cache)" in done.stdout
    assert "compute:  not estimated" in done.stdout and not new.exists()
    assert re.search(r"activations [\d.]+ [KM]iB per GPU \(only the head trains\)", done.stdout)  # a frozen trunk
    refused = run_python(*args, "train.steps_per_epoch=1")
    assert refused.returncode == 2 and "train.steps_per_epoch=1: the linear probe's epoch is every cached video " \
        "once, so the key would be ignored" in refused.stderr, refused.stderr[-3000:]


def test_the_summary_of_real_stage_runs(align, linprobe):
    """`python -m ppma_scale.summary` over the 2-rank align and probe runs: one row each, with the ranks,
    global batch, steps and status the runs logged and the probe's own test result."""
    done = run_python("-m", "ppma_scale.summary", str(align[0]), str(linprobe[0]))
    assert done.returncode == 0, done.stderr[-3000:]
    header, *rows = done.stdout.splitlines()
    assert header.split()[:8] == ["run", "task", "model", "ranks", "global_batch", "step", "total_steps", "epoch"]
    assert [r.split()[:8] for r in rows] == [
        [str(align[0]), "classify", "ViT-TINY", "4x32", "2", "8", "6", "6"],  # align_test.yaml: micro_batch 4
        [str(linprobe[0]), "linprobe", "ViT-TINY", "4x32", "2", "8", "6", "6"]]
    from ppma_scale.summary import summarize_run
    probe = summarize_run(linprobe[0])
    assert probe.status == "finished" and probe.clips_per_s > 0
    assert probe.top1 == pytest.approx(only_eval(linprobe[0])["top1"], abs=1e-3)


def test_evaluate_launcher_reproduces_the_runs_own_test(linprobe, tiny_shards):
    run_dir, _ = linprobe
    done = subprocess.run([sys.executable, str(REPO / "launch" / "evaluate.py"), str(run_dir)], capture_output=True,
                          text=True, timeout=180, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    written = run_dir / "eval" / "test_step_00000006.json"
    standalone = json.loads(written.read_text())
    assert (standalone["checkpoint"], standalone["step"]) == (str(run_dir / "checkpoints" / "step_00000006"), 6)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]
    assert (standalone["data_val"], standalone["test_clips"], standalone["test_crops"]) == (
        [str(tiny_shards["downstream_val"])], saved["test_clips"], saved["test_crops"])
    before = written.read_bytes()
    again = subprocess.run([sys.executable, str(REPO / "launch" / "evaluate.py"), str(run_dir), "data.test_clips=2"],
                           capture_output=True, text=True, timeout=180, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert again.returncode == 2 and "already holds an evaluation (of " in again.stderr, again.stderr[-3000:]
    assert "--overwrite" in again.stderr and written.read_bytes() == before
    in_training = only_eval(run_dir)
    assert standalone["confusion"] == in_training["confusion"]
    assert standalone["top1"] == pytest.approx(in_training["top1"])
    assert standalone["mean_class_acc"] == pytest.approx(in_training["mean_class_acc"])


def test_a_stop_signal_ends_a_standalone_evaluation_on_every_rank_and_writes_nothing(linprobe, tmp_path,
                                                                                      two_ranks_without_launcher):
    """SLURM's warning before a time limit (or scancel) reaching one rank of a long test: every rank ends
    at the next batch, no metrics file, and the status a signal-ended command has (143 for SIGTERM), not
    a kill in the middle of a collective."""
    run_dir, _ = linprobe
    out, counts = tmp_path / "test.json", tmp_path / "views"
    helper = str(Path(__file__).parent / "helpers" / "signalled_evaluate.py")
    stopped = two_ranks_without_launcher([helper, str(counts), "1", str(run_dir), "--out", str(out)])
    assert [d.returncode for d in stopped] == [143, 143], [d.stderr[-3000:] for d in stopped]
    for done in stopped:
        assert (f"launch/evaluate.py: stopped on SIGTERM before the end of the evaluation: {out} was not written; "
                f"the same command tests {run_dir / 'checkpoints' / 'step_00000006'} again") in done.stderr
        assert "Traceback" not in done.stderr
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))
    scored = [json.loads(counts.with_name(f"views_{rank}.json").read_text()) for rank in range(2)]
    assert scored[0] == scored[1] > 0  # rank 0 learned of rank 1's signal at the next fetch: one batch each
    in_training = only_eval(run_dir)  # the same test, run to its end by the probe itself
    assert sum(scored) < in_training["videos"] * in_training["views_per_video"][0]


def test_evaluating_a_classification_run_says_where_its_weights_come_from(align, tmp_path):
    run_dir, _ = align
    done = run_python(str(REPO / "launch" / "evaluate.py"), str(run_dir), "--out", str(tmp_path / "test.json"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "every weight comes from the checkpoint" in done.stdout
    assert "random weights" not in done.stdout  # it used to say so, then load the checkpoint


def run_python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=180, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_evaluation_needs_only_the_test_set_when_the_checkpoint_records_its_classes(linprobe, tmp_path):
    """The label space comes from the checkpoint's record: the training shards (often on scratch
    storage, gone by the time a model is tested) are not opened."""
    run_dir, _ = linprobe
    out = tmp_path / "test.json"
    done = run_python(str(REPO / "launch" / "evaluate.py"), str(run_dir), "--out", str(out),
                      f"data.train={tmp_path / 'deleted' / 'manifest.json'}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(out.read_text())["top1"] == only_eval(run_dir)["top1"]


def test_checkpoints_record_their_class_names_and_evaluation_refuses_another_order(linprobe, tiny_shards, tmp_path):
    """A re-ordered label space would score the probe against shuffled labels (5.86 instead of 55.86
    on the demo, with no warning): the checkpoint's recorded names must match, or nothing is scored."""
    run_dir, _ = linprobe
    classes = json.loads(Path(tiny_shards["downstream_train"]).read_text())["classes"]
    marker = json.loads((run_dir / "checkpoints" / "step_00000006" / "ppma_complete.json").read_text())
    assert marker["classes"] == classes
    flipped = tmp_path / "flipped.txt"
    flipped.write_text("\n".join(reversed(classes)) + "\n")
    out = tmp_path / "test.json"
    done = run_python(str(REPO / "launch" / "evaluate.py"), str(run_dir), "--out", str(out), f"data.classes={flipped}")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "another order" in done.stderr and f"#0 {classes[0]!r} there / {classes[-1]!r} here" in done.stderr
    assert not out.exists()
    more = tmp_path / "more.txt"
    more.write_text("\n".join([*classes, "cartwheel"]) + "\n")
    done = run_python(str(REPO / "launch" / "evaluate.py"), str(run_dir), "--out", str(out), f"data.classes={more}")
    assert done.returncode == 2 and "4 classes there and 5 here; only here: cartwheel" in done.stderr, done.stderr[-3000:]


def test_class_names_travel_from_the_run_to_the_hugging_face_config(align, tmp_path, capsys):
    from ppma_scale.convert import main as convert_main
    from ppma_scale.export import export_checkpoint
    run_dir, _ = align
    classes = json.loads((run_dir / "checkpoints" / "step_00000006" / "ppma_complete.json").read_text())["classes"]
    exported = export_checkpoint(run_dir, tmp_path / "aligned.safetensors")
    assert convert_main([str(exported), str(tmp_path / "hf"), "--to", "hf", "--num-frames", "4", "--img-size", "32",
                         "--num-heads", "2", "--allow-pos-mismatch"]) == 0, capsys.readouterr().err
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert [config["id2label"][str(i)] for i in range(len(classes))] == classes
    assert config["label2id"][classes[-1]] == len(classes) - 1


def test_convert_rebuilds_an_exported_run_for_its_own_clips_by_default(align, tmp_path, capsys):
    """An exported file records its run's config: converting it needs no --num-frames/--img-size
    (they defaulted to 16 x 224 whatever the run trained on)."""
    from ppma_scale.convert import main as convert_main
    from ppma_scale.export import export_checkpoint
    run_dir, _ = align
    cfg = load_config(run_dir / "config.yaml")
    exported = export_checkpoint(run_dir, tmp_path / "aligned.safetensors")
    assert convert_main([str(exported), str(tmp_path / "hf"), "--to", "hf", "--num-heads", "2",
                         "--allow-pos-mismatch"]) == 0, capsys.readouterr().err
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["num_frames"], config["image_size"]) == (cfg.data.num_frames, cfg.data.img_size) != (16, 224)
    assert "(the exported run's)" in capsys.readouterr().out


def test_a_linear_probe_batch_larger_than_its_data_is_refused_before_the_feature_pass(align, tiny_shards, tmp_path):
    out = tmp_path / "probe"
    done = run_python(str(REPO / "launch" / "linprobe.py"), "--config", str(DEMO / "linprobe_test.yaml"), "--output",
                      str(out), f"model.init={align[0]}", f"data.train={tiny_shards['downstream_train']}",
                      f"data.val={tiny_shards['downstream_val']}", "train.micro_batch=64")
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "holds 16 videos, fewer than one global batch (1 rank(s) x train.micro_batch 64)" in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


def test_resume_refuses_a_label_space_in_another_order(linprobe, tiny_shards, tmp_path):
    import shutil
    run_dir = tmp_path / "linprobe"
    shutil.copytree(linprobe[0], run_dir)
    classes = json.loads(Path(tiny_shards["downstream_train"]).read_text())["classes"]
    flipped = tmp_path / "flipped.txt"
    flipped.write_text("\n".join(reversed(classes)) + "\n")
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    done = run_python(str(REPO / "launch" / "linprobe.py"), "--config", str(run_dir / "config.yaml"), "--output",
                      str(run_dir), "--allow-config-change", "train.max_steps=8", f"data.classes={flipped}")
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    assert "another label space" in done.stderr and "step_00000006" in done.stderr
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before


def test_a_resume_takes_keys_left_unset_from_the_run_it_continues(align, tmp_path):
    """align.yaml leaves model.init and data.train `???`; a restart that names neither continues the
    run with the values its first launch was given, and says so. Without a checkpoint it is still an error."""
    import shutil
    run_dir = tmp_path / "align"
    shutil.copytree(align[0], run_dir)
    done = run_python(str(REPO / "launch" / "align.py"), "--config", str(DEMO / "align_test.yaml"), "--output",
                      str(run_dir), "train.max_steps=7")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "resuming: model.init, data.train left as ???" in done.stdout
    assert [m["step"] for m in read_jsonl(run_dir / "metrics.jsonl")] == list(range(1, 8))
    fresh = run_python(str(REPO / "launch" / "align.py"), "--config", str(DEMO / "align_test.yaml"), "--output",
                       str(tmp_path / "new"), "train.max_steps=7")
    assert fresh.returncode == 2 and "model.init is required" in fresh.stderr, fresh.stderr[-2000:]
    assert not (tmp_path / "new").exists()


def test_an_evaluation_rank_that_reads_nothing_stops_every_rank_with_its_reason(linprobe, tiny_shards, tmp_path,
                                                                             two_ranks_without_launcher):
    """Rank 1's half of the test set (the last two shards) is zeroed: that rank reads none of its
    videos, and rank 0 must stop with rank 1's reason instead of waiting in the gather of results."""
    import shutil
    val = tmp_path / "val"
    shutil.copytree(Path(tiny_shards["downstream_val"]).parent, val)
    urls = [s["url"] for s in json.loads((val / "manifest.json").read_text())["shards"]]
    for url in urls[2:]:
        (val / url).write_bytes(bytes((val / url).stat().st_size))
    out = tmp_path / "test.json"
    done = two_ranks_without_launcher([str(REPO / "launch" / "evaluate.py"), str(linprobe[0]), "--out", str(out),
                                       f"data.val={val / 'manifest.json'}"])
    assert done[1].returncode == 1 and "evaluation (rank 1) read none of its 4 videos" in done[1].stderr, \
        done[1].stderr[-3000:]
    assert done[0].returncode == 4, done[0].stderr[-3000:]
    assert ("launch/evaluate.py: error: rank 1 failed while reading its evaluation videos: RuntimeError: evaluation "
            "(rank 1) read none of its 4 videos") in done[0].stderr
    assert "Traceback" not in done[0].stderr and not out.exists()


def stored_weights(run_dir: Path) -> dict:
    """What the run's latest checkpoint holds (read_state_dict gives an averaging run's blend instead)."""
    from ppma_scale.engine.checkpoint import find_checkpoint
    from ppma_scale.export import consolidated_state_dict
    return consolidated_state_dict(find_checkpoint(run_dir))


def test_adaptive_averaging_learns_alpha_and_stores_no_trunk_copies(averaged):
    run_dir, stdout = averaged
    assert stdout.count("averaging source") == 2
    state = stored_weights(run_dir)
    assert {k for k in state if k.startswith("encoder.")} == {"encoder.alpha"}  # sources are re-read, not saved
    alpha = state["encoder.alpha"]
    assert alpha.shape == (2,) and alpha.abs().max() > 0  # started at 0 (uniform): the gradient reached it
    event = [e for e in read_jsonl(run_dir / "events.jsonl") if e["event"] == "eval"][-1]
    weights = torch.softmax(alpha, 0)
    assert event["mix_trunk0"] == pytest.approx(weights[0].item(), abs=1e-4)


def test_an_averaged_run_exports_its_blend_as_a_trunk_others_start_from(averaged, align, mae_weights, tmp_path):
    """Its checkpoints hold alpha and the head only; export (and model.init of the run) rebuilds the
    blend from the sources (the file had alpha and a head, which model.init and convert could not read)."""
    from ppma_scale.export import export_checkpoint
    from ppma_scale.models.convert import load_weights_file
    run_dir, _ = averaged
    exported = load_weights_file(export_checkpoint(run_dir, tmp_path / "blend.safetensors"))
    assert "encoder.alpha" not in exported and any(k.startswith("head.") for k in exported)
    weights = torch.softmax(stored_weights(run_dir)["encoder.alpha"].double(), 0)
    a, b = read_trunk(mae_weights).state, read_trunk(align[0]).state
    key = "blocks.0.attn.qkv.weight"
    torch.testing.assert_close(exported[f"encoder.{key}"].double(), weights[0] * a[key].double() + weights[1] * b[key].double())
    assert read_trunk(tmp_path / "blend.safetensors").state[key].shape == a[key].shape  # a trunk model.init takes
    assert torch.equal(read_trunk(run_dir).state[key], exported[f"encoder.{key}"])  # model.init of the run itself
    out = tmp_path / "test.json"  # while launch/evaluate.py still reads the run's own checkpoint (alpha + head)
    done = subprocess.run([sys.executable, str(REPO / "launch" / "evaluate.py"), str(run_dir), "--out", str(out)],
                          capture_output=True, text=True, timeout=180, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    assert json.loads(out.read_text())["top1"] == only_eval(run_dir)["top1"]


def test_average_cli_equals_a_hand_computed_average(work, mae_weights, align):
    from ppma_scale.average import main
    out = work / "soup.safetensors"
    assert main([str(mae_weights), str(align[0]), "--trunk", "--out", str(out)]) == 0
    soup = read_state_dict(out)
    a, b = read_trunk(mae_weights).state, read_trunk(align[0]).state
    shared = a.keys() & b.keys()
    assert soup.keys() == shared and a.keys() - shared == {"norm.weight", "norm.bias"}  # MAE's final norm
    for key in shared:
        assert torch.equal(soup[key], (a[key].double() * 0.5 + b[key].double() * 0.5).float()), key


def test_linear_probe_and_averaging_under_zero3_bf16(work, tiny_shards, align, mae_weights):
    """ZeRO-3 shards the parameters: the probe's feature pass and the averaging blend touch the trunk
    outside DeepSpeed's forward, and must still see whole tensors."""
    probe_dir = work / "linprobe_zero3"
    deepspeed("linprobe.py", "linprobe_test.yaml", probe_dir, "train.zero_stage=3", "train.precision=bf16",
              f"model.init={align[0]}", f"data.train={tiny_shards['downstream_train']}",
              f"data.val={tiny_shards['downstream_val']}")
    before, after = read_state_dict(align[0]), read_state_dict(probe_dir)
    trunk = [k for k in after if k.startswith("encoder.")]
    # frozen weights live in bf16 under a bf16 engine (fixed position tables stay fp32): unchanged up
    # to that one rounding
    assert len(trunk) > 10 and all(torch.equal(after[k], before[k]) or torch.equal(after[k], before[k].bfloat16().float())
                                   for k in trunk)
    assert all(0 < m["loss"] < 10 for m in read_jsonl(probe_dir / "metrics.jsonl"))

    avg_dir = work / "averaged_zero3"
    deepspeed("finetune.py", "finetune_test.yaml", avg_dir, "train.zero_stage=3", "train.precision=bf16",
              "model.init=null", f"model.average=[{mae_weights}, {align[0]}]",
              f"data.train={tiny_shards['downstream_train']}", f"data.val={tiny_shards['downstream_val']}")
    alpha = stored_weights(avg_dir)["encoder.alpha"]
    assert alpha.shape == (2,) and alpha.abs().max() > 0
    assert only_eval(avg_dir)["videos"] == 8
