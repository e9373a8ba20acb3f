"""Read samples back from a shard set with webdataset's own tar iterators (for verify, stats, show)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator

from webdataset.tariterators import group_by_keys, tar_file_iterator

from ppma_scale.data.manifest import SAMPLE_VIDEO_EXTENSIONS, Manifest


def iter_samples(path: str | Path, extensions: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
    """Samples `{__key__, ext: bytes, ...}` of one tar, in file order; `extensions` limits what is read."""
    wanted = None if extensions is None else tuple(f".{e}" for e in extensions)
    with open(path, "rb") as handle:
        select = None if wanted is None else (lambda name: name.endswith(wanted))
        files = ({**f, "__url__": str(path)} for f in tar_file_iterator(handle, select_files=select))
        yield from group_by_keys(files)


def video_field(sample: dict[str, Any]) -> str | None:
    """Which field holds the clip (mp4 or webm), None if neither."""
    return next((ext for ext in SAMPLE_VIDEO_EXTENSIONS if ext in sample), None)


def iter_metadata(manifest: Manifest) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(shard url, key, parsed json) of every sample, without reading the video bytes."""
    for url in manifest.shard_urls():
        for sample in iter_samples(url, ("json",)):
            yield url, sample["__key__"], json.loads(sample["json"])


def find_sample(manifest: Manifest, key: str | None = None, index: int = 0) -> dict[str, Any]:
    """A sample by key, or the `index`-th of the set in manifest order."""
    if key is None and not 0 <= index < manifest.num_samples:
        raise ValueError(f"sample index {index} is out of range: the set holds {manifest.num_samples} samples")
    position = 0
    for url in manifest.shard_urls():
        for sample in iter_samples(url):
            if (key is not None and sample["__key__"] == key) or (key is None and position == index):
                return sample
            position += 1
    raise ValueError(f"no sample with key {key!r} in the shard set at {manifest.location}")
