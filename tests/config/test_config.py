"""The config loader: inheritance, typed overrides, and errors that name key, file and nearest key."""
from pathlib import Path

import pytest
import yaml

from ppma_scale.config import (
    Config,
    ConfigError,
    DatasetSpec,
    config_to_dict,
    load_config,
    parse_override,
    save_config,
    schema_keys,
)

REPO = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture()
def chain(tmp_path: Path) -> Path:
    write(tmp_path / "base" / "root.yaml", "model:\n  size: l\n  drop_path: 0.2\noptim:\n  lr: 1e-3\n")
    write(tmp_path / "mid.yaml", "base: base/root.yaml\nmodel:\n  drop_path: 0.1\ntrain:\n  zero_stage: 3\n")
    return write(tmp_path / "leaf.yaml", "base: mid.yaml\ndata:\n  train: a/manifest.json\n")


def test_base_chain_merges_deeply_and_child_wins(chain: Path) -> None:
    cfg = load_config(chain)
    assert cfg.model.size == "l"  # from the root
    assert cfg.model.drop_path == 0.1  # the middle file overrides the root
    assert cfg.optim.lr == 1e-3  # "1e-3" is a string to PyYAML; the schema makes it a float
    assert cfg.train.zero_stage == 3
    assert cfg.data.train == [DatasetSpec(manifest="a/manifest.json")]  # shorthand for one dataset
    assert cfg.model.depth is None  # untouched keys keep their defaults


def test_overrides_parse_types(chain: Path) -> None:
    cfg = load_config(
        chain,
        ["train.micro_batch=4", "optim.clip_grad=1.0", "augment.flip=false", "augment.scale=[0.5, 1]",
         "data.train=[{manifest: x.json, weight: 2}, y.json]", "model.init=null", "run.name=exp 1"],
    )
    assert cfg.train.micro_batch == 4
    assert cfg.optim.clip_grad == 1.0
    assert cfg.augment.flip is False
    assert cfg.augment.scale == [0.5, 1.0] and all(isinstance(v, float) for v in cfg.augment.scale)
    assert cfg.data.train == [DatasetSpec("x.json", 2.0), DatasetSpec("y.json", 1.0)]
    assert cfg.model.init is None
    assert cfg.run.name == "exp 1"


@pytest.mark.parametrize(
    "override, fragments",
    [
        ("model.sise=b", ["unknown key 'model.sise'", "the command line", "did you mean 'model.size'"]),
        ("train.lr=0.1", ["unknown key 'train.lr'", "did you mean 'optim.lr'"]),
        ("train.zero_stage=two", ["train.zero_stage", "must be an integer", "'two'"]),
        ("train.micro_batch=true", ["train.micro_batch", "must be an integer"]),
        ("run.task=segment", ["run.task", "must be one of", "'mae'"]),
        ("augment.scale=0.5", ["augment.scale", "must be a list"]),
        ("model.size", ["not of the form key.sub=value"]),
        ("model.size.x=1", ["model.size is a value, not a section"]),
    ],
)
def test_bad_overrides_name_the_key(chain: Path, override: str, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(chain, [override])
    for fragment in fragments:
        assert fragment in str(err.value)


def test_unknown_key_in_file_names_the_file(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.yaml", "modle:\n  size: b\n")
    with pytest.raises(ConfigError, match=r"unknown key 'modle' \(set in .*bad.yaml\); did you mean 'model'"):
        load_config(bad)


def test_wrong_type_in_base_file_names_that_file(tmp_path: Path) -> None:
    write(tmp_path / "root.yaml", "train:\n  epochs: many\n")
    leaf = write(tmp_path / "leaf.yaml", "base: root.yaml\n")
    with pytest.raises(ConfigError, match=r"train.epochs \(set in .*root.yaml\) must be a number"):
        load_config(leaf)


def test_required_value_left_unset(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.yaml", "data:\n  train: ???\n")
    with pytest.raises(ConfigError, match=r"data.train is required .*c.yaml.*data.train=\.\.\."):
        load_config(cfg)
    assert load_config(cfg, ["data.train=m.json"]).data.train[0].manifest == "m.json"


def test_missing_file_and_missing_base(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    leaf = write(tmp_path / "leaf.yaml", "base: gone.yaml\n")
    with pytest.raises(FileNotFoundError, match=r"gone.yaml does not exist \(named as base: by"):
        load_config(leaf)


def test_inheritance_loop_is_reported(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(tmp_path / "a.yaml")


def test_invalid_yaml_is_reported(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.yaml", "model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config(bad)


def test_resolved_config_round_trips(chain: Path, tmp_path: Path) -> None:
    cfg = load_config(chain, ["train.micro_batch=3"])
    out = tmp_path / "resolved.yaml"
    save_config(cfg, out)
    assert yaml.safe_load(out.read_text())["train"]["micro_batch"] == 3
    assert load_config(out) == cfg  # what a run wrote reloads to the same config


def test_parse_override_values() -> None:
    assert parse_override("a.b=1") == ("a.b", 1)
    assert parse_override("a.b=1.5") == ("a.b", 1.5)
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a.b=x=y") == ("a.b", "x=y")
    assert parse_override("a.b=") == ("a.b", "")


def test_schema_keys_cover_every_section() -> None:
    keys = set(schema_keys())
    for section in config_to_dict(Config()):
        assert section in keys
    assert "optim.lr" in keys and "data.train" in keys


@pytest.mark.parametrize("name", ["vits", "vitb", "vitl", "vith"])
def test_cluster_configs_resolve(name: str) -> None:
    cfg = load_config(REPO / "configs" / f"{name}.yaml", ["data.train=/data/k400/manifest.json"])
    assert cfg.run.task == "mae"
    assert (cfg.data.num_frames, cfg.data.img_size, cfg.model.tubelet) == (16, 224, 2)
    assert cfg.mae.mask_ratio == 0.9 and cfg.train.precision == "bf16"
    assert cfg.train.zero_stage == (3 if name == "vith" else 1 if name == "vits" else 2)
    assert cfg.model.act_checkpoint_every == (1 if name in ("vitl", "vith") else 0)
