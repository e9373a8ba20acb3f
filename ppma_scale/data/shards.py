"""Datasets as the stream sees them: manifests resolved to shard URLs, sample counts, weights and labels.

A `SourceSpec` names a manifest (local path, URL, or `pipe:` command) with its mixing weight and an
optional `shards` override: a brace pattern, list, or `pipe:` template whose expansion replaces the
manifest's shard URLs in order (e.g. the same shards copied to an object store). `open_sources`
turns specs into `ShardSet`s and one label space in which every dataset's labels are mapped by
class *name*, so two datasets whose class lists are ordered differently still agree on ids.
Local shards are checked once (stat only) before anything reads them: a missing shard, or one whose
size differs from the manifest's, stops the run at start-up instead of silently thinning the data.
"""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from braceexpand import braceexpand
from webdataset.gopen import gopen

from ppma_scale.data.manifest import MANIFEST_NAME, Manifest, load_manifest, name_some, resolve_url

PIPE_PREFIX = "pipe:"


@dataclass
class SourceSpec:
    """One dataset of a mix: which manifest, its share, its name, and where its shards live."""

    manifest: str
    weight: float = 1.0
    name: str | None = None
    shards: str | list[str] | None = None  # replaces the manifest's shard URLs, in order


@dataclass
class ShardSet:
    """A dataset resolved for reading: shard URLs with their sample counts, and its label mapping."""

    name: str
    urls: list[str]
    counts: list[int]
    weight: float
    classes: list[str]
    codec: str | None = None  # 'h264' | 'vp9' | None when the manifest does not say
    label_map: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # own id -> global id (-1: none)
    require_labels: bool = False  # labels are trained on: each sample's label_name must match `classes`
    manifest: str = ""  # where the manifest was read from (for error messages)
    layout: str = ""  # fingerprint of its shards (names, counts, checksums): which sample index is which clip

    @property
    def num_samples(self) -> int:
        return int(sum(self.counts))


def as_spec(item: Any) -> SourceSpec:
    """Accept a SourceSpec, a manifest path, a dict, or any object with `manifest`/`weight`/`name`."""
    if isinstance(item, SourceSpec):
        return item
    if isinstance(item, (str, os.PathLike)):
        return SourceSpec(manifest=str(item))
    if isinstance(item, dict):
        unknown = set(item) - {"manifest", "weight", "name", "shards"}
        if unknown or "manifest" not in item:
            raise ValueError(f"a dataset entry needs 'manifest' (and optionally weight, name, shards), got {item!r}")
        return SourceSpec(**item)
    if hasattr(item, "manifest"):
        return SourceSpec(manifest=str(item.manifest), weight=float(getattr(item, "weight", 1.0)),
                          name=getattr(item, "name", None), shards=getattr(item, "shards", None))
    raise ValueError(f"cannot read a dataset entry from {item!r}: give a manifest path or {{manifest: ..., weight: ...}}")


def expand_urls(pattern: str | Sequence[str]) -> list[str]:
    """Brace-expand one pattern (or each of a list): 'shard-{000..009}.tar' -> ten URLs."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    urls: list[str] = []
    for item in patterns:
        urls.extend(braceexpand(item))
    return urls


def check_pipe(url: str, allow_pipe: bool, what: str) -> None:
    """Refuse `pipe:` URLs (they run a shell command) unless the config allows them explicitly."""
    if url.startswith(PIPE_PREFIX) and not allow_pipe:
        raise ValueError(f"{what} is a `pipe:` URL ({url[:80]!r}), which runs a shell command; "
                         "set data.allow_pipe=true to permit it")


def is_local(url: str) -> bool:
    """A plain path (or file: URL) that can be opened and seeked without a subprocess."""
    return not url.startswith(PIPE_PREFIX) and ("://" not in url or url.startswith("file://"))


def local_path(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


def read_manifest(location: str, allow_pipe: bool, what: str) -> Manifest:
    """Load a manifest from a path, a folder, a URL or (if allowed) a `pipe:` command."""
    if is_local(location):
        return load_manifest(local_path(location))
    check_pipe(location, allow_pipe, what)
    try:
        with gopen(location, "rb") as stream:
            data = stream.read()
    except Exception as exc:  # noqa: BLE001 - any transport error is reported with the URL
        raise FileNotFoundError(f"{what}: cannot read manifest {location!r}: {exc}") from None
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / MANIFEST_NAME).write_bytes(data)
        manifest = load_manifest(folder)
    # relative shard URLs are resolved against the URL's folder; a pipe: has none
    manifest.location = "" if location.startswith(PIPE_PREFIX) else location.rsplit("/", 1)[0]
    return manifest


def manifest_codec(manifest: Manifest) -> str | None:
    """The codec the shards were packed with, from the pack settings (None when not recorded)."""
    settings = manifest.settings or {}
    codec = settings.get("codec") or (settings.get("encode") or {}).get("codec")
    return str(codec) if codec else None


def resolve_shard_urls(manifest: Manifest, spec: SourceSpec, allow_pipe: bool, what: str) -> list[str]:
    """The manifest's shard URLs, or the spec's override expanded and matched to them in order."""
    if spec.shards is None:
        urls = [u for s in manifest.shards for u in expand_urls(resolve_url(manifest.location, s.url))]
        if len(urls) != len(manifest.shards):
            raise ValueError(f"{what}: a shard URL in the manifest is a brace pattern; list one URL per shard "
                             "(sample counts are per shard) or give the pattern as the dataset's `shards`")
        relative = [u for u in urls if not (u.startswith(("/", PIPE_PREFIX)) or "://" in u)]
        if relative and not manifest.location:
            raise ValueError(f"{what}: the manifest was read from a pipe, so its relative shard URLs cannot be "
                             "resolved; give the shard URLs as the dataset's `shards`")
    else:
        urls = expand_urls(spec.shards)
        if len(urls) != len(manifest.shards):
            raise ValueError(f"{what}.shards expands to {len(urls)} URLs but the manifest lists "
                             f"{len(manifest.shards)} shards; they must match one to one, in order")
    for url in urls:
        check_pipe(url, allow_pipe, f"{what}: shard URL")
    return urls


_CHECKED: set[tuple[str, ...]] = set()  # shard lists this process found complete (validate, then the stream)
_STAT_THREADS = 32  # stats on a parallel filesystem are latency-bound: overlap them


def check_local_shards(manifest: Manifest, urls: Sequence[str], what: str, source: str = "", shown: int = 5) -> None:
    """Stat every local shard once: missing ones, or sizes other than the manifest's `bytes`, are an
    error naming them (a partial copy would otherwise train on a remnant, warning per shard). A set
    found complete is not stat-ed again (a shard lost later is the reader's to report).

    In a multi-rank job only rank 0 stats, once the process group exists, and every rank raises its
    verdict (as ConfigError): 512 ranks x 20,000 shards would be ten million metadata requests to a
    shared filesystem at every start. Before the process group exists such a job checks nothing here."""
    key = tuple(f"{url}:{info.bytes}" for info, url in zip(manifest.shards, urls))
    if key in _CHECKED:
        return
    import torch.distributed as tdist
    grouped = tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1
    if not grouped:
        from ..engine.dist import launched_world_size
        if launched_world_size() > 1:
            return  # checked by rank 0 when the stream is built, after init_process_group
    from ..engine.dist import computed_on_rank0
    error = computed_on_rank0(lambda: _unusable_shards(manifest, urls, what, source, shown),
                              f"checking the shards of {source or manifest.location}")
    if error is not None:
        from ..config import ConfigError
        raise ConfigError(str(error)) if grouped else error
    _CHECKED.add(key)


def _unusable_shards(manifest: Manifest, urls: Sequence[str], what: str, source: str,
                     shown: int) -> FileNotFoundError | ValueError | None:
    """The error naming the local shards that are missing or of another size than the manifest's."""
    from concurrent.futures import ThreadPoolExecutor
    local = [(info, local_path(url)) for info, url in zip(manifest.shards, urls) if is_local(url)]
    with ThreadPoolExecutor(min(_STAT_THREADS, max(1, len(local) // 64))) as pool:
        sizes = list(pool.map(_size_or_error, (path for _, path in local)))
    missing, resized = [], []
    for (info, path), size in zip(local, sizes):
        if isinstance(size, OSError):
            missing.append(path if isinstance(size, FileNotFoundError) else f"{path} ({size.strerror or size})")
        elif info.bytes and size != info.bytes:
            resized.append(f"{path} ({size} bytes, manifest says {info.bytes})")
    if not missing and not resized:
        return None
    parts = [f"{label}: {name_some(items, shown)}"
             for label, items in (("missing", missing), ("size differs", resized)) if items]
    message = (f"{what}: {len(missing) + len(resized)} of the {len(urls)} shards of manifest "
               f"{source or manifest.location} "
               f"cannot be used ({'; '.join(parts)}). Restore them (ppma-verify checks a set) before reading it")
    return (FileNotFoundError if missing else ValueError)(message)


def _size_or_error(path: str) -> int | OSError:
    try:
        return os.stat(path).st_size
    except OSError as exc:
        return exc


def shard_layout(manifest: Manifest) -> str:
    """A fingerprint of what sample i of the dataset is: its shards' file names, sample counts and
    checksums in order. Unchanged by copying the set elsewhere; changed by a re-pack into other shards."""
    import hashlib
    import json
    listed = [[os.path.basename(s.url), int(s.samples), s.sha256 or ""] for s in manifest.shards]
    return hashlib.sha1(json.dumps(listed).encode()).hexdigest()[:16]


def read_class_names(path: str) -> list[str]:
    """A label space: a class-names file (one per line) or a manifest whose classes are used."""
    p = Path(path)
    if p.is_dir() or p.suffix == ".json":
        return list(load_manifest(p).classes)
    if not p.is_file():
        raise FileNotFoundError(f"data.classes: class-names file {path} does not exist")
    names = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"data.classes: {path} lists no class names (expected one per line)")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"data.classes: {path} repeats class names {dup[:5]}")
    return names


def label_space(manifests: Sequence[Manifest], classes: str | Sequence[str] | None) -> list[str]:
    """The global class list: the given file/list, else the union of the manifests' classes in order."""
    if classes is not None:
        return read_class_names(classes) if isinstance(classes, (str, os.PathLike)) else list(classes)
    names: list[str] = []
    seen: set[str] = set()
    for manifest in manifests:
        for name in manifest.classes:
            if name not in seen:
                seen.add(name)
                names.append(name)
    check_one_spelling(manifests)
    return names


def _spelling_key(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name).strip().casefold()


def check_one_spelling(manifests: Sequence[Manifest]) -> None:
    """Refuse a union of manifests that spell one class two ways ('jumping_jacks' / 'Jumping Jacks'):
    each spelling would get its own logit, so the datasets would never share that class."""
    first: dict[str, tuple[str, int]] = {}
    clashes = []
    for index, manifest in enumerate(manifests):
        for name in manifest.classes:
            other, where = first.setdefault(_spelling_key(name), (name, index))
            if other != name and where != index and len(clashes) < 5:
                clashes.append(f"{other!r} ({manifests[where].dataset}) / {name!r} ({manifest.dataset})")
    if clashes:
        raise ValueError("data.train: the manifests spell the same classes differently, so each spelling would be a "
                         f"class of its own: {'; '.join(clashes)}. Rename them in one manifest's 'classes' list to "
                         "match, or, if they really are different classes, list every name in data.classes")


def map_labels(classes: Sequence[str], space: Sequence[str], what: str, require: bool) -> np.ndarray:
    """Dataset label id -> global id by class name; unknown names are an error when labels are needed."""
    index = {name: i for i, name in enumerate(space)}
    missing = [name for name in classes if name not in index]
    if missing and require:
        raise ValueError(f"{what}: classes {missing[:8]} are not in the label space (data.classes); "
                         f"known classes include {list(space)[:8]}")
    return np.array([index.get(name, -1) for name in classes], dtype=np.int64)


def open_sources(specs: Iterable[Any], *, allow_pipe: bool = False, classes: str | Sequence[str] | None = None,
                 require_labels: bool = False, what: str = "data.train") -> tuple[list[ShardSet], list[str]]:
    """Resolve dataset specs to ShardSets and the label space shared by all of them."""
    specs = [as_spec(s) for s in specs]
    if not specs:
        raise ValueError(f"{what} names no dataset: give at least one manifest")
    manifests = []
    for i, spec in enumerate(specs):
        where = f"{what}[{i}]"
        if not spec.weight > 0:
            raise ValueError(f"{where}.weight must be > 0, got {spec.weight}")
        manifest = read_manifest(str(spec.manifest), allow_pipe, where)
        if not manifest.shards or manifest.num_samples == 0:
            raise ValueError(f"{where}: manifest {spec.manifest} lists no samples")
        manifests.append(manifest)
    space = label_space(manifests, classes)
    total_weight = sum(s.weight for s in specs)
    sets = []
    for i, (spec, manifest) in enumerate(zip(specs, manifests)):
        where = f"{what}[{i}]"
        urls = resolve_shard_urls(manifest, spec, allow_pipe, where)
        check_local_shards(manifest, urls, where, str(spec.manifest))
        sets.append(ShardSet(
            layout=shard_layout(manifest),
            name=spec.name or manifest.dataset, urls=urls,
            counts=[int(s.samples) for s in manifest.shards], weight=spec.weight / total_weight,
            classes=list(manifest.classes), codec=manifest_codec(manifest),
            label_map=map_labels(manifest.classes, space, where, require_labels),
            require_labels=require_labels, manifest=str(spec.manifest)))
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise ValueError(f"{what}: dataset names {names} repeat; give each entry a distinct `name`")
    return sets, space
