"""The demo recipe's glue: later stages inherit stage 1's geometry; the table reads the runs' results."""
import sys
from pathlib import Path

import pytest

from ppma_scale.config import load_config, save_config

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "launch"))

import demo_recipe  # noqa: E402


def test_stage_two_and_three_configs_take_the_stage_one_trunk_geometry(tmp_path):
    stage1 = load_config(REPO / "configs" / "demo" / "pretrain.yaml",
                         ["data.train=x", "model.patch_size=8", "data.img_size=96", "data.short_side=112", "data.num_frames=4"])
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


def test_demo_reuses_a_folder_only_when_its_stamp_matches_and_never_touches_one_that_differs(tmp_path):
    import demo
    folder = tmp_path / "shards" / "downstream_val"
    demo.claim(folder, {"corpus": {"clips_per_class": 64}, "split": "val"})  # new folder: stamped
    (folder / "shard-000000.tar").write_bytes(b"packed earlier")
    demo.claim(folder, {"split": "val", "corpus": {"clips_per_class": 64}})  # same recipe: reused
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(SystemExit, match=r"downstream_val was made from other corpus than"):
        demo.claim(folder, {"corpus": {"clips_per_class": 32}, "split": "val"})
    (folder / demo.STAMP).unlink()  # what an earlier version of the demo left behind
    before.pop(demo.STAMP)
    with pytest.raises(SystemExit, match="earlier version of the demo"):
        demo.claim(folder, {"corpus": {"clips_per_class": 64}, "split": "val"})
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_a_run_stamp_changes_with_the_config_the_overrides_and_the_inputs_bytes(tmp_path):
    import demo
    manifest, upstream = tmp_path / "manifest.json", tmp_path / "mae"
    manifest.write_text('{"shards": []}')
    demo.claim(upstream, {"script": "launch/pretrain.py"})
    args = ("launch/linprobe.py", "configs/demo/linprobe.yaml")
    base = demo.run_stamp(*args, [f"data.train={manifest}", "data.val=v", "model.init=null"], [manifest, upstream])
    assert base == demo.run_stamp(*args, [f"data.train={manifest}", "data.val=v", "model.init=null"],
                                  [manifest, upstream])
    assert base["config"] != demo.run_stamp(*args, [f"data.train={manifest}", "data.val=v", "optim.lr=0.5"],
                                            [manifest, upstream])["config"]
    manifest.write_text('{"shards": [1]}')
    (upstream / demo.STAMP).write_text('{"script": "other"}')
    changed = demo.run_stamp(*args, [f"data.train={manifest}", "data.val=v", "model.init=null"], [manifest, upstream])
    assert changed["config"] == base["config"]
    assert all(changed["inputs"][k] != base["inputs"][k] for k in base["inputs"])
