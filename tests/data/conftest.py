"""Shard sets built precisely for the data tests: chosen shard sizes, corrupt samples, missing shards.

Videos are real H.264/VP9 encoded with PyAV (a small pool, encoded once per session and reused
under different keys: the stream's bookkeeping is what these tests check, not the pixels).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pytest
import webdataset as wds

from ppma_scale.data.manifest import Manifest, ShardInfo
from shards_tools.videoio import encode_video

FPS = 12.0
CLASSES = ["wave", "jump", "squat", "walk"]


def moving_frames(num_frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """A smooth moving gradient (compresses well, decodes close to the source)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 6.28, 3)
    frames = []
    for t in range(num_frames):
        channels = [127 + 100 * np.sin(xx / (7 + c) + yy / (11 + c) + 0.3 * t + phase[c]) for c in range(3)]
        frames.append(np.stack(channels, -1))
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def video_pool() -> dict[str, list[bytes]]:
    """A few real clips per codec: 24 frames of 32x48 at 12 fps, keyframe every 4 frames."""
    pool: dict[str, list[bytes]] = {"h264": [], "vp9": []}
    for seed in range(3):
        frames = moving_frames(24, 32, 48, seed)
        pool["h264"].append(encode_video(frames, FPS, "h264", crf=18, gop=4))
    pool["vp9"].append(encode_video(moving_frames(24, 32, 48, 7), FPS, "vp9", crf=20, gop=4))
    return pool


ShardSetMaker = Callable[..., Path]


@pytest.fixture
def make_shards(tmp_path, video_pool) -> ShardSetMaker:
    """make_shards(name, sizes, classes=CLASSES, codec='h264', bad={global index: kind}) -> manifest path.

    Sample i (counting over all shards) has key f"{name}_{i:04d}", label i % len(classes) and, as
    ppma-pack writes it, that class's name as the json's label_name.
    `bad` kinds: 'garbage' (undecodable video bytes), 'nocls' (no label), 'novideo' (no video field),
    'nulljson' (json `null`), 'nulllabel' (no .cls, json label null).
    `record_bytes`: the manifest records each shard's size, as ppma-pack's does.
    """

    def make(name: str, sizes: Sequence[int], classes: Sequence[str] = CLASSES, codec: str = "h264",
             bad: dict[int, str] | None = None, folder: Path | None = None, record_bytes: bool = False) -> Path:
        folder = folder or tmp_path / name
        folder.mkdir(parents=True, exist_ok=True)
        ext = "mp4" if codec == "h264" else "webm"
        videos = video_pool[codec]
        shards, index = [], 0
        for s, size in enumerate(sizes):
            url = f"{name}-{s:04d}.tar"
            with wds.TarWriter(str(folder / url)) as sink:
                for _ in range(size):
                    kind = (bad or {}).get(index)
                    label = index % len(classes)
                    meta = {"fps": FPS, "frames": 24, "width": 48, "height": 32, "label": label,
                            "label_name": classes[label]}
                    sample = {"__key__": f"{name}_{index:04d}",
                              ext: b"\x00garbage" * 64 if kind == "garbage" else videos[index % len(videos)],
                              "cls": str(label).encode(), "json": json.dumps(meta).encode()}
                    if kind in ("nocls", "nulllabel"):
                        del sample["cls"]
                        sample["json"] = b"{}" if kind == "nocls" else b'{"label": null}'
                    if kind == "nulljson":
                        sample["json"] = b"null"
                    if kind == "novideo":
                        del sample[ext]
                    sink.write(sample)
                    index += 1
            shards.append(ShardInfo(url=url, samples=size,
                                    bytes=(folder / url).stat().st_size if record_bytes else 0))
        manifest = Manifest(dataset=name, classes=list(classes), shards=shards,
                            settings={"encode": {"codec": codec}})
        return manifest.save(folder)

    return make


# small, fast clip geometry shared by the stream tests
TINY_CLIP = dict(num_frames=4, sampling="stride", stride=2, img_size=16, short_side=20)


def take_keys(stream, steps: int, repeat: int = 1) -> list[tuple[str, str]]:
    """(dataset, key) of every decoded clip in the next `steps` batches (views of one clip counted once)."""
    keys: list[tuple[str, str]] = []
    if steps <= 0:
        return keys
    for i, batch in enumerate(stream):
        keys.extend(zip(batch["dataset"][::repeat], batch["key"][::repeat]))
        if i + 1 == steps:
            break
    return keys
