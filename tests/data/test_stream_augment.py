"""The training stream's per-clip augmentation on real encoded shards: horizontal flips and RandAugment.

Every clip is the same real H.264 video of a horizontal ramp (dark red on the left, bright red on the
right, constant over time), so a view's left-right orientation can be read off its pixels, and with
centre crops every view of every clip shows the same region: a view differs from another only by a
flip or by RandAugment.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from ppma_scale.data.loader import build_train_stream
from ppma_scale.data.manifest import Manifest, ShardInfo
from shards_tools.videoio import encode_video

FPS = 12.0
CLASSES = ["ramp_a", "ramp_b"]
STREAM = dict(num_frames=4, sampling="stride", stride=2, img_size=16, short_side=20, crop="center",
              micro_batch=2, repeat_aug=2, num_workers=0, shuffle_buffer=4, seed=3, decoder="pyav")


def ramp_clip() -> bytes:
    """24 frames of 32x48: red rises from 20 (left) to 235 (right), green and blue stay flat."""
    red = np.linspace(20, 235, 48).round().astype(np.uint8)
    frame = np.empty((32, 48, 3), dtype=np.uint8)
    frame[..., 0] = red[None, :]
    frame[..., 1] = 90
    frame[..., 2] = 160
    return encode_video(np.broadcast_to(frame, (24, 32, 48, 3)).copy(), FPS, "h264", crf=18, gop=4)


@pytest.fixture(scope="module")
def ramp_set(tmp_path_factory) -> str:
    """8 samples (keys r0..r7) in 2 shards, all the ramp clip."""
    folder = tmp_path_factory.mktemp("ramp")
    clip = ramp_clip()
    shards = []
    for s in range(2):
        with wds.TarWriter(str(folder / f"r-{s}.tar")) as sink:
            for i in range(4 * s, 4 * s + 4):
                label = i % 2
                meta = {"fps": FPS, "frames": 24, "label": label, "label_name": CLASSES[label]}
                sink.write({"__key__": f"r{i}", "mp4": clip, "cls": str(label).encode(),
                            "json": json.dumps(meta).encode()})
        shards.append(ShardInfo(f"r-{s}.tar", 4))
    Manifest("ramp", CLASSES, shards).save(Path(folder))
    return str(folder)


def views_of(folder: str, batches: int, **kw) -> tuple[list[str], torch.Tensor]:
    """Keys and views (N, 3, T, H, W uint8) of the first `batches` batches."""
    stream = build_train_stream([folder], **{**STREAM, **kw})
    keys, videos = [], []
    try:
        for _, batch in zip(range(batches), stream):
            keys += batch["key"]
            videos.append(batch["video"])
    finally:
        stream.close()
    return keys, torch.cat(videos)


def mirrored(views: torch.Tensor) -> torch.Tensor:
    """Bool (N,): red falls from left to right (the ramp mirrored) rather than rising."""
    red = views[:, 0].float()  # N, T, H, W
    half = red.shape[-1] // 2
    left, right = red[..., :half].mean(dim=(1, 2, 3)), red[..., half:].mean(dim=(1, 2, 3))
    assert ((left - right).abs() > 40).all()  # every view shows the ramp clearly one way or the other
    return left > right


def test_flip_mirrors_some_views_and_none_without_it(ramp_set):
    keys, flipped = views_of(ramp_set, 4, flip=True)
    same_keys, plain = views_of(ramp_set, 4, flip=False)
    assert keys == same_keys and len(keys) == 16  # the flip changes pixels, not which clips are read
    assert not mirrored(plain).any()  # flip=False: every view keeps the clip's orientation
    turned = mirrored(flipped)
    assert 0 < int(turned.sum()) < len(turned)  # flip=True: a coin per view, both sides come up
    reference = plain[0].float()  # centre crops of one static clip: every unflipped view looks alike
    for view, turn in zip(flipped.float(), turned):
        expected = reference.flip(-1) if turn else reference
        assert (view - expected).abs().mean() < 3  # a true left-right mirror of the same crop, not another edit


def test_randaugment_changes_pixels_but_not_which_clips_are_read(ramp_set):
    spec = "rand-m9-n3-mstd0.5"
    keys, augmented = views_of(ramp_set, 4, flip=False, randaugment=spec)
    plain_keys, plain = views_of(ramp_set, 4, flip=False)
    again_keys, again = views_of(ramp_set, 4, flip=False, randaugment=spec)
    assert keys == plain_keys == again_keys and len(keys) == 16
    assert torch.equal(augmented, again)  # the same seed, the same draws
    changed = (augmented.float() - plain.float()).abs().mean(dim=(1, 2, 3, 4)) > 2
    assert int(changed.sum()) >= len(changed) // 2, changed  # RandAugment really ran on most views
    for a, b in zip(range(0, 16, 2), range(1, 16, 2)):  # the two views of one clip: independent draws
        assert not torch.equal(augmented[a], augmented[b])
