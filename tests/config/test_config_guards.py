"""Values the types allow but a run cannot use fail at load time, before any rank starts, naming
the key and where it was set; YAML files that would silently lose a key are refused."""
import re
from pathlib import Path

import pytest

from ppma_scale.config import ConfigError, build_config, load_config

REPO = Path(__file__).resolve().parents[2]
TEST_CONFIG = REPO / "configs" / "demo" / "pretrain_test.yaml"
MANIFEST = "data.train=/x/manifest.json"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("override, fragments", [
    ("model.size=xx", ["model.size 'xx' is not a known size", "the command line"]),
    ("data.num_frames=5", ["data.num_frames 5 must be a multiple of model.tubelet 2",
                           "data.num_frames set in the command line"]),
    ("data.img_size=30", ["data.img_size 30 must be a multiple of the patch size 16"]),
    ("model.num_heads=3", ["not divisible by model.num_heads 3", "model.num_heads set in the command line"]),
    ("optim.betas=[0.9]", ["optim.betas (set in the command line) must be two numbers in [0, 1)"]),
    ("train.max_steps=0", ["train.max_steps (set in the command line) must be >= 1"]),
    ("train.max_steps=-3", ["train.max_steps", ">= 1"]),
    ("augment.mean=[0.5]", ["augment.mean (set in the command line) must be 3 numbers"]),
    ("augment.scale=[1.0,0.08]", ["augment.scale (set in the command line) must be [min, max]"]),
    ("data.short_side=16", ["data.short_side 16 must be >= data.img_size 32"]),
    ("model.drop_path=1.5", ["model.drop_path (set in the command line) must be in [0, 1)"]),
    ("train.dist_timeout_s=0", ["train.dist_timeout_s (set in the command line) must be >= 1"]),
    ("data.repeat_aug=0", ["data.repeat_aug (set in the command line) must be >= 1, got 0"]),
    ("data.num_workers=-1", ["data.num_workers", ">= 0"]),
    ("data.window_s=0", ["data.window_s", "> 0"]),
    ("optim.warmup_steps=-5", ["optim.warmup_steps", ">= 0"]),
    ("optim.lr=nan", ["optim.lr", "positive"]),
    ("data.max_decode_failures=-1", ["data.max_decode_failures", "[0, 1]"]),
    ("data.train=[{manifest: /x/m.json, weight: 0}]", ["data.train[0].weight", "> 0"]),
    ("mae.decoder_heads=3", ["mae.decoder_dim 32 must be even and divisible by mae.decoder_heads 3"]),
])
def test_bad_values_fail_at_load_naming_the_key(override: str, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(TEST_CONFIG, [MANIFEST, override])
    for fragment in fragments:
        assert fragment in str(err.value)


def test_compile_with_zero3_is_refused_naming_both_keys() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(TEST_CONFIG, [MANIFEST, "model.compile=true", "train.zero_stage=3"])
    assert "model.compile needs train.zero_stage 0, 1 or 2" in str(err.value)
    assert "model.compile set in the command line; train.zero_stage set in the command line" in str(err.value)
    assert load_config(TEST_CONFIG, [MANIFEST, "model.compile=true", "train.zero_stage=2"]).model.compile


@pytest.mark.parametrize("override, key", [
    ("data.train=", "data.train[0].manifest"),
    ("model.init=", "model.init"),
    ("run.output=", "run.output"),
    ("model.average=[a, '']", "model.average[1]"),
])
def test_an_empty_path_is_an_error_naming_the_key(override: str, key: str) -> None:
    """An unset shell variable ($DATA) gives an empty string, which Path() would read as '.'."""
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)} \(set in the command line\) is an empty path"):
        load_config(TEST_CONFIG, [MANIFEST, override])


def test_the_shipped_configs_and_defaults_pass_the_checks() -> None:
    build_config({})
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        load_config(path, [MANIFEST, "data.val=/x/val.json", "model.init=/x", "model.average=[a, b]"])


def test_a_section_written_twice_names_the_file_key_and_both_lines(tmp_path: Path) -> None:
    dup = write(tmp_path / "dup.yaml", "train:\n  micro_batch: 4\n  max_steps: 2\ndata:\n  repeat_aug: 1\n"
                                       "train:\n  log_every: 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(dup, [MANIFEST])
    assert str(dup) in str(err.value) and "'train' is written twice (lines 1 and 6)" in str(err.value)


def test_a_nested_duplicate_key_and_one_in_a_base_file_are_refused(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", "optim:\n  lr: 1e-3\n  weight_decay: 0.05\n  lr: 2e-3\n")
    leaf = write(tmp_path / "leaf.yaml", "base: base.yaml\n")
    with pytest.raises(ConfigError, match=r"base.yaml: key 'lr' is written twice \(lines 2 and 4\)"):
        load_config(leaf, [MANIFEST])
    deep = write(tmp_path / "deep.yaml", "data:\n  train:\n    - manifest: a.json\n      weight: 1\n      weight: 2\n")
    with pytest.raises(ConfigError, match=r"deep.yaml: key 'weight' is written twice \(lines 4 and 5\)"):
        load_config(deep)
    with pytest.raises(ConfigError, match="override .*'manifest' is written twice"):
        load_config(TEST_CONFIG, ["data.train=[{manifest: a, manifest: b}]"])


def test_yaml_merge_keys_may_still_be_overridden(tmp_path: Path) -> None:
    merged = write(tmp_path / "m.yaml", "train:\n  <<: {micro_batch: 2, log_every: 3}\n  micro_batch: 4\n")
    cfg = load_config(merged, [MANIFEST])
    assert (cfg.train.micro_batch, cfg.train.log_every) == (4, 3)


@pytest.mark.parametrize("text", ["base: 3\n", "base: {a: 1}\n", "base: [a.yaml, 4]\n", "base: ''\n"])
def test_a_base_that_is_not_a_path_is_a_config_error(tmp_path: Path, text: str) -> None:
    bad = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError, match=r"base: in .*bad.yaml must be a config file path or a list of them"):
        load_config(bad)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_an_empty_config_file_is_refused_not_read_as_all_defaults(tmp_path: Path, text: str) -> None:
    empty = write(tmp_path / "empty.yaml", text)
    with pytest.raises(ConfigError, match=r"config file .*empty.yaml is empty: it sets nothing"):
        load_config(empty, [MANIFEST])
    with pytest.raises(ConfigError, match=r"empty.yaml is empty"):  # also as a base
        load_config(write(tmp_path / "child.yaml", "base: empty.yaml\ntrain: {micro_batch: 2}\n"), [MANIFEST])
