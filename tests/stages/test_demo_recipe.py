"""The demo recipe's glue: later stages inherit stage 1's geometry; the table reads the runs' results."""
import sys
from pathlib import Path

from ppma_scale.config import load_config, save_config

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "launch"))

import demo_recipe  # noqa: E402


def test_stage_two_and_three_configs_take_the_stage_one_trunk_geometry(tmp_path):
    stage1 = load_config(REPO / "configs" / "demo" / "pretrain.yaml",
                         ["data.train=x", "model.patch_size=8", "data.img_size=96", "data.num_frames=4"])
    (tmp_path / "mae").mkdir()
    save_config(stage1, tmp_path / "mae" / "config.yaml")
    overrides = demo_recipe.trunk_overrides(tmp_path / "mae")
    for config in ("align.yaml", "linprobe.yaml"):
        later = load_config(REPO / "configs" / "demo" / config,
                            ["model.init=x", "data.train=y", "data.val=z", *overrides])
        for key in demo_recipe.TRUNK_KEYS:
            section, name = key.split(".")
            assert getattr(getattr(later, section), name) == getattr(getattr(stage1, section), name), key


def test_table_lists_every_trunk_with_its_accuracies():
    result = {"top1": 50.0, "top5": 87.5, "mean_class_acc": 48.25, "videos": 64, "confusion": [[0] * 8] * 8}
    table = demo_recipe.format_table([("random init", result), ("PPMA", dict(result, top1=75.0))], views=6)
    assert "| random init | 50.0 | 87.5 | 48.2 |" in table and "| PPMA | 75.0 |" in table
    assert "64 held-out videos x 6 views" in table and "chance = 12.5%" in table


def test_a_run_counts_as_finished_only_at_its_last_step(tmp_path):
    tag = tmp_path / "run" / "checkpoints" / "step_00000004"
    tag.mkdir(parents=True)
    assert not demo_recipe.finished(tmp_path / "run")
    (tag / "ppma_complete.json").write_text('{"step": 4, "world_size": 2, "zero_stage": 2, "total_steps": 6}')
    assert not demo_recipe.finished(tmp_path / "run")
    (tag / "ppma_complete.json").write_text('{"step": 4, "world_size": 2, "zero_stage": 2, "total_steps": 4}')
    assert demo_recipe.finished(tmp_path / "run")
