"""Reading config files: YAML with `base:` inheritance, a key written twice refused, and the file
each dotted key was set in (so `ConfigError` messages can name it). The schema is `config.py`'s."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who wrote the config."""


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that names the same key twice (PyYAML would silently keep the last copy)."""

    def __init__(self, key: Any, first_line: int, second_line: int) -> None:
        super().__init__(f"key {key!r} is written twice (lines {first_line} and {second_line}); "
                         "YAML keeps only the last copy, so merge the two")
        self.key, self.first_line, self.second_line = key, first_line, second_line


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key written twice in any mapping at any depth."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` merges are allowed to be overridden
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise DuplicateKeyError(key, seen[key], line)
                seen[key] = line
            except TypeError:  # an unhashable key: PyYAML reports it itself
                continue
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    """YAML text as data, a key written twice in any mapping refused (DuplicateKeyError)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def read_with_bases(path: Path, chain: tuple[Path, ...] = ()) -> tuple[dict, dict[str, str]]:
    """The file's mapping merged over its `base:` files (in order), and the file each dotted key was
    last set in; `chain` holds the files that named this one (to refuse loops)."""
    path = path.expanduser()
    if path.is_dir():
        named = f" (named as base: by {chain[-1]})" if chain else ""
        found = sorted(path.glob("*.yaml"))[:3]
        example = f", e.g. {', '.join(str(p) for p in found)}" if found else ""
        raise ConfigError(f"config file {path}{named} is a directory: name a YAML config file{example}")
    if not path.is_file():
        where = f" (named as base: by {chain[-1]})" if chain else ""
        raise FileNotFoundError(f"config file {path} does not exist{where}")
    resolved = path.resolve()
    if resolved in chain:
        loop = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError(f"config inheritance loops: {loop}")
    try:
        data = load_yaml(path.read_text())
    except DuplicateKeyError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if data is None:  # empty, or only comments: every setting would silently be a default (ViT-B, bf16, ...)
        raise ConfigError(f"config file {path} is empty: it sets nothing (start from configs/vitb.yaml or "
                          "another file in configs/)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, not {type(data).__name__}")
    merged: dict = {}
    sources: dict[str, str] = {}
    for base in _base_paths(data.pop("base", None), path):
        base_raw, base_sources = read_with_bases(path.parent / base, (*chain, resolved))
        _deep_merge(merged, base_raw)
        sources.update(base_sources)
    _deep_merge(merged, data)
    for key in _dotted_keys(data):
        sources[key] = str(path)
    return merged, sources


def _base_paths(bases: Any, path: Path) -> list[str]:
    """The files `base:` names: one path or a list of paths (relative to `path`'s folder)."""
    if bases is None:
        return []
    listed = [bases] if isinstance(bases, str) else bases
    if not isinstance(listed, list) or not all(isinstance(b, str) and b.strip() for b in listed):
        raise ConfigError(f"base: in {path} must be a config file path or a list of them, got {bases!r}")
    return listed


def _deep_merge(into: dict, new: dict) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def _dotted_keys(data: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        if isinstance(value, dict):
            keys.extend(_dotted_keys(value, dotted + "."))
    return keys
