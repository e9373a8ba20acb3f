"""launch/evaluate.py's label space: the class names the checkpoint records, not the training data's.

A checkpoint is often tested after its training shards are gone (scratch storage): the evaluation
must not open data.train when the checkpoint's marker records the classes its logits mean. The
checkpoints here are markers only: the model is never built (`_evaluate_loaded` is replaced by the
real multi-view evaluation of a constant predictor, which still reads data.val against the label space).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ppma_scale.engine import standalone_eval
from ppma_scale.engine.dist import DistInfo

REPO = Path(__file__).resolve().parents[2]
SOLO = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="gloo")
CLASSES = ["wave", "jump", "squat", "walk"]  # the tiny sets' classes, in the training union's order


@pytest.fixture
def scored(monkeypatch):
    """Replace the model's part of the evaluation: the label space it was handed is recorded, and
    data.val is scored (by a constant predictor) against it, as the real evaluation reads it."""
    from ppma_scale.engine import classify
    seen = {}

    def evaluate_loaded(cfg, task, ckpt, out, stop):
        seen["classes"] = list(task.label_space())
        return classify.evaluate_classifier(cfg, SOLO, lambda x: torch.zeros(x.shape[0], len(seen["classes"])),
                                            out, seen["classes"], {}, stop=stop)

    monkeypatch.setattr(standalone_eval, "_evaluate_loaded", evaluate_loaded)
    return seen


def marker_only_checkpoint(run_dir: Path, classes: list[str] | None) -> Path:
    tag = run_dir / "checkpoints" / "step_00000004"
    tag.mkdir(parents=True)
    for name in ("rank_00000.pt", "mp_rank_00_model_states.pt"):  # listed, never opened here
        (tag / name).write_bytes(b"")
    marker = {"step": 4, "world_size": 1, "zero_stage": 0, "task": "linprobe"}
    if classes is not None:
        marker["classes"] = classes
    (tag / "ppma_complete.json").write_text(json.dumps(marker))
    return run_dir


def config_without_training_shards(tmp_path: Path, tiny_shards, *overrides: str):
    """The linear-probe test config whose data.train manifest is still there but its shards are not."""
    from ppma_scale.config import load_config
    gone = tmp_path / "train_moved"
    gone.mkdir()
    shutil.copy(tiny_shards["downstream_train"], gone / "manifest.json")
    return load_config(REPO / "configs" / "demo" / "linprobe_test.yaml",
                       [f"data.train={gone / 'manifest.json'}", f"data.val={tiny_shards['downstream_val']}",
                        "data.num_workers=0", *overrides])


def names_file(tmp_path: Path, classes: list[str]) -> Path:
    path = tmp_path / "classes.txt"
    path.write_text("\n".join(classes) + "\n")
    return path


def test_a_checkpoint_that_records_its_classes_is_tested_without_its_training_shards(tmp_path, tiny_shards, scored):
    run = marker_only_checkpoint(tmp_path / "run", CLASSES[::-1])
    cfg = config_without_training_shards(tmp_path, tiny_shards)
    metrics = standalone_eval.evaluate_checkpoint(cfg, run, tmp_path / "test.json")
    assert scored["classes"] == CLASSES[::-1]  # the record's order, not the training union's
    assert metrics["videos"] == 8 and json.loads((tmp_path / "test.json").read_text())["videos"] == 8


def test_a_run_trained_with_data_classes_is_tested_without_its_training_shards(tmp_path, tiny_shards, scored):
    """A run's config.yaml keeps its data.classes: launch/evaluate.py reads that config, so the
    recorded names replace the training shards there too, once the file is checked against them."""
    run = marker_only_checkpoint(tmp_path / "run", CLASSES[::-1])
    cfg = config_without_training_shards(tmp_path, tiny_shards, f"data.classes={names_file(tmp_path, CLASSES[::-1])}")
    metrics = standalone_eval.evaluate_checkpoint(cfg, run, tmp_path / "test.json")
    assert scored["classes"] == CLASSES[::-1] and metrics["videos"] == 8


def test_a_data_classes_in_another_order_than_the_record_is_refused(tmp_path, tiny_shards, scored):
    run = marker_only_checkpoint(tmp_path / "run", CLASSES[::-1])
    cfg = config_without_training_shards(tmp_path, tiny_shards, f"data.classes={names_file(tmp_path, CLASSES)}")
    with pytest.raises(ValueError, match="trained on another label space than this config gives, the same 4 "
                                         "classes in another order"):
        standalone_eval.evaluate_checkpoint(cfg, run, tmp_path / "test.json")
    assert "classes" not in scored and not (tmp_path / "test.json").exists()


def test_test_classes_outside_the_recorded_label_space_are_still_refused(tmp_path, tiny_shards, scored):
    run = marker_only_checkpoint(tmp_path / "run", ["wave", "jump", "squat", "run"])
    cfg = config_without_training_shards(tmp_path, tiny_shards)
    with pytest.raises(ValueError, match=r"classes \['walk'\] are not in the label space"):
        standalone_eval.evaluate_checkpoint(cfg, run, tmp_path / "test.json")
    assert not (tmp_path / "test.json").exists()


def test_a_checkpoint_without_a_record_still_takes_the_training_label_space(tmp_path, tiny_shards, scored, capsys):
    """Saved before classes were recorded: the config's label space (the training data's) is all there is."""
    run = marker_only_checkpoint(tmp_path / "run", None)
    cfg = config_without_training_shards(tmp_path, tiny_shards)
    with pytest.raises(FileNotFoundError, match=r"data.train\[0\]: 4 of the 4 shards .* cannot be used"):
        standalone_eval.evaluate_checkpoint(cfg, run, tmp_path / "test.json")
    from ppma_scale.config import load_config
    cfg = load_config(REPO / "configs" / "demo" / "linprobe_test.yaml",
                      [f"data.train={tiny_shards['downstream_train']}", f"data.val={tiny_shards['downstream_val']}",
                       "data.num_workers=0"])
    assert standalone_eval.evaluate_checkpoint(cfg, run, tmp_path / "test.json")["videos"] == 8
    assert scored["classes"] == CLASSES and "records no class names" in capsys.readouterr().err
