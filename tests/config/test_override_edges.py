"""Command-line overrides and values that used to be taken silently or fail late: a section given as a
mapping merges into the file's section, a value that is not YAML is refused, one key of a list entry
can be set, and values that would crash after start-up (a negative seed, a bad RandAugment spec, a
directory as the config) fail at load time naming what to fix."""
from pathlib import Path

import pytest

from ppma_scale.config import ConfigError, DatasetSpec, load_config, parse_override, read_config

REPO = Path(__file__).resolve().parents[2]
TEST_CONFIG = REPO / "configs" / "demo" / "pretrain_test.yaml"
MANIFEST = "data.train=/x/manifest.json"


@pytest.fixture()
def cfg_file(tmp_path: Path) -> Path:
    (tmp_path / "base.yaml").write_text("optim:\n  layer_decay: 0.75\n  warmup_epochs: 5\n  lr: 2.0e-4\n")
    leaf = tmp_path / "leaf.yaml"
    leaf.write_text("base: base.yaml\noptim:\n  weight_decay: 0.1\n"
                    "data:\n  train: [{manifest: a.json, weight: 1}, {manifest: b.json}]\n")
    return leaf


# ---------------------------------------------------------------- 1. a mapping override merges into the section

def test_a_section_given_as_a_mapping_changes_only_the_keys_it_names(cfg_file: Path) -> None:
    cfg = load_config(cfg_file, ["optim={lr: 1.0e-3}"])
    assert cfg.optim.lr == 1.0e-3
    assert cfg.optim.layer_decay == 0.75  # from the base file: kept, as a `base:` child keeps it
    assert cfg.optim.warmup_epochs == 5
    assert cfg.optim.weight_decay == 0.1


def test_a_mapping_override_of_a_list_entry_merges_into_that_entry(cfg_file: Path) -> None:
    cfg = load_config(cfg_file, ["optim={lr: 1.0e-3, min_lr: 1.0e-6}", "data.train[0]={weight: 3}"])
    assert (cfg.optim.lr, cfg.optim.min_lr, cfg.optim.layer_decay) == (1.0e-3, 1.0e-6, 0.75)
    assert cfg.data.train[0] == DatasetSpec(manifest="a.json", weight=3.0)


def test_a_merged_section_names_the_command_line_only_for_the_keys_it_set(cfg_file: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(cfg_file, ["optim={layer_decay: 2}"])
    assert "optim.layer_decay (set in the command line)" in str(err.value)
    raw, sources = read_config(cfg_file, ["optim={lr: 1.0e-3}"])
    assert sources["optim.lr"] == "the command line"
    assert sources["optim.weight_decay"] == str(cfg_file)


def test_the_shipped_align_config_keeps_its_optim_values_under_a_section_override() -> None:
    base = ["model.init=runs/x", "data.train=a.json"]
    before = load_config(REPO / "configs/align/vitb.yaml", base)
    after = load_config(REPO / "configs/align/vitb.yaml", base + ["optim={lr: 1.0e-3}"])
    assert after.optim.lr == 1.0e-3
    for key in ("layer_decay", "warmup_epochs", "weight_decay", "betas", "base_lr", "min_lr"):
        assert getattr(after.optim, key) == getattr(before.optim, key), key


# ---------------------------------------------------------------- 2. a value that is not YAML is refused

@pytest.mark.parametrize("override", ["data.train=[a.json, b.json", "optim={lr: 1.0e-3", "augment.scale=[0.1, 1]]"])
def test_a_list_or_mapping_that_is_not_valid_yaml_is_refused_naming_the_key(override: str) -> None:
    key = override.split("=")[0]
    with pytest.raises(ConfigError) as err:
        parse_override(override)
    assert f"override {key}=" in str(err.value) and "is not valid YAML" in str(err.value)
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(TEST_CONFIG, [MANIFEST, override])


def test_plain_text_that_yaml_cannot_read_is_still_a_string() -> None:
    assert parse_override("run.name=a: b: c") == ("run.name", "a: b: c")


# ---------------------------------------------------------------- 3. one key of a list entry

def test_one_key_of_a_list_entry_can_be_set_by_its_index(cfg_file: Path) -> None:
    cfg = load_config(cfg_file, ["data.train[1].weight=2", "data.train[0].name=first"])
    assert cfg.data.train == [DatasetSpec(manifest="a.json", weight=1.0, name="first"),
                              DatasetSpec(manifest="b.json", weight=2.0)]


def test_a_bad_value_set_by_index_names_the_command_line(cfg_file: Path) -> None:
    with pytest.raises(ConfigError, match=r"data.train\[1\].weight \(set in the command line\) must be > 0"):
        load_config(cfg_file, ["data.train[1].weight=-1"])
    with pytest.raises(ConfigError, match=r"unknown key 'data.train\[0\].wieght' \(set in the command line\)"):
        load_config(cfg_file, ["data.train[0].wieght=2"])


def test_a_whole_list_replaced_after_an_indexed_override_drops_its_origin(cfg_file: Path) -> None:
    raw, sources = read_config(cfg_file, ["data.train[1].weight=2", "data.train=[c.json]"])
    assert raw["data"]["train"] == ["c.json"]
    assert not any(key.startswith("data.train[") for key in sources)


@pytest.mark.parametrize("overrides, fragments", [
    (["data.train.0.weight=2"], ["data.train is a list", "data.train[0].weight=2"]),
    (["data.train[5].weight=2"], ["data.train has no entry 5", "2 entries"]),
    (["data.val[0].weight=2"], ["data.val has no entry 0", "give the whole list",
                                "data.val=[{manifest: ..., weight: 2}, ...]"]),
    (["data.train=[a.json, b.json]", "data.train[0].weight=2"],
     ["data.train[0] is 'a.json', not a mapping", "data.train=[{manifest: ..., weight: 2}, ...]"]),
    (["optim[0].lr=1"], ["optim is not a list"]),
    (["data.train[x].weight=2"], ["data.train[x]", "key[index]"]),
])
def test_an_indexed_override_that_cannot_apply_says_what_to_write(cfg_file: Path, overrides: list[str],
                                                                  fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(cfg_file, overrides)
    for fragment in fragments:
        assert fragment in str(err.value)
    assert "did you mean" not in str(err.value)


# ---------------------------------------------------------------- 4. run.seed

@pytest.mark.parametrize("seed", [-1, 2**32])
def test_a_seed_out_of_numpys_range_is_refused_at_load(seed: int) -> None:
    with pytest.raises(ConfigError, match=r"run.seed \(set in the command line\) must be"):
        load_config(TEST_CONFIG, [MANIFEST, f"run.seed={seed}"])
    assert load_config(TEST_CONFIG, [MANIFEST, "run.seed=0"]).run.seed == 0


# ---------------------------------------------------------------- 5. augment.randaugment

@pytest.mark.parametrize("spec", ["garbage", "rand-m7-n4-x1", "augmix-m3"])
def test_a_bad_randaugment_spec_is_refused_at_load(spec: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(TEST_CONFIG, [MANIFEST, f"augment.randaugment={spec}"])
    assert f"augment.randaugment {spec!r} is not a timm RandAugment spec" in str(err.value)
    assert "(set in the command line)" in str(err.value)


def test_a_good_randaugment_spec_passes() -> None:
    cfg = load_config(TEST_CONFIG, [MANIFEST, "augment.randaugment=rand-m7-n4-mstd0.5-inc1"])
    assert cfg.augment.randaugment == "rand-m7-n4-mstd0.5-inc1"


# ---------------------------------------------------------------- 8. a directory as the config

def test_a_directory_given_as_the_config_is_named_as_one(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "vitb.yaml").write_text("model:\n  size: b\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "configs")
    assert "is a directory" in str(err.value) and "YAML" in str(err.value)
    assert "vitb.yaml" in str(err.value)
