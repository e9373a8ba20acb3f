"""The shard-set manifest: the one contract between `shards_tools.pack` (writer) and the stream (reader).

A shard set is a folder (or URL prefix) of WebDataset tars plus `manifest.json`:

    {
      "format": "ppma_scale.shards/1",
      "dataset": "nohuman",
      "classes": ["wave", "jump", ...],            # label id -> name
      "shards": [{"url": "shard-000000.tar", "samples": 64, "bytes": 123, "sha256": "..."}],
      "totals": {"samples": 640, "frames": 51200, "hours": 0.59},
      "settings": {...pack options: codec, short_side, fps, gop, crf, ...},
      "rejected": [{"source": "a/b.avi", "reason": "truncated: ..."}]
    }

Shard URLs are relative to the manifest's folder unless absolute, a URL (`scheme://`) or `pipe:`.
A sample inside a shard is `{__key__, mp4|webm, cls, json}`; see `SAMPLE_VIDEO_EXTENSIONS`.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..atomic import write_text_atomic

FORMAT = "ppma_scale.shards/1"
MANIFEST_NAME = "manifest.json"
SAMPLE_VIDEO_EXTENSIONS = ("mp4", "webm")


@dataclass
class ShardInfo:
    """One tar of a shard set."""

    url: str
    samples: int
    bytes: int = 0
    sha256: str = ""


@dataclass
class Manifest:
    """A shard set: which tars, how many samples each, which classes."""

    dataset: str
    classes: list[str]
    shards: list[ShardInfo]
    totals: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    rejected: list[dict[str, str]] = field(default_factory=list)
    format: str = FORMAT
    location: str = ""  # folder or URL prefix the manifest was read from (not serialised)

    @property
    def num_samples(self) -> int:
        return sum(s.samples for s in self.shards)

    def shard_urls(self) -> list[str]:
        """Shard URLs resolved against the manifest's location."""
        return [resolve_url(self.location, s.url) for s in self.shards]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("location")
        return data

    def save(self, folder: str | Path) -> Path:
        """Write `manifest.json` atomically (tmp + rename): a reader never sees half a manifest."""
        return write_text_atomic(Path(folder) / MANIFEST_NAME, json.dumps(self.to_json(), indent=1))


def resolve_url(location: str, url: str) -> str:
    """Join a shard URL to the manifest's location unless it is already absolute."""
    if url.startswith(("pipe:", "/")) or "://" in url or not location:
        return url
    return f"{location.rstrip('/')}/{url}"


def name_some(names: Sequence[str], shown: int = 5) -> str:
    """'a, b, c and 7 more': the first `shown` of a list of shards or files, for an error message."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def load_manifest(path: str | Path) -> Manifest:
    """Read a manifest.json (or the folder holding one), with errors that name the file and field."""
    path = Path(path).expanduser()  # a `~` a shell left alone, as in data.train=~/shards (after the =)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"shard manifest {path} does not exist (run `ppma-pack` to create it)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"shard manifest {path} is not valid JSON: {exc}") from None
    if data.get("format") != FORMAT:
        raise ValueError(f"shard manifest {path} has format {data.get('format')!r}, expected {FORMAT!r}")
    for key in ("dataset", "classes", "shards"):
        if key not in data:
            raise ValueError(f"shard manifest {path} lacks the field {key!r}")
    try:
        shards = [ShardInfo(**s) for s in data["shards"]]
    except TypeError as exc:
        raise ValueError(f"shard manifest {path} has a malformed shard entry: {exc}") from None
    for i, shard in enumerate(shards):
        for key in ("samples", "bytes"):
            value = getattr(shard, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"shard manifest {path}: shards[{i}] ({shard.url}) has {key} {value!r}; "
                                 "expected a whole number >= 0")
    return Manifest(
        dataset=data["dataset"],
        classes=list(data["classes"]),
        shards=shards,
        totals=data.get("totals", {}),
        settings=data.get("settings", {}),
        rejected=data.get("rejected", []),
        location=str(path.parent),
    )
