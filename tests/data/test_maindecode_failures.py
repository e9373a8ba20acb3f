"""Decoding in the main process (the GPU/NVDEC path; PyAV here, so it runs on a CPU) when clips fail.

The bad clip is real H.264 whose `mdat` is zeroed: its container probes fine in the worker, so the
failure only shows where the main process decodes it. Each good clip is one solid colour per class,
so the video actually in a row tells which class it shows, whatever frames were chosen.
"""
from __future__ import annotations

import json
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from ppma_scale.data.decode import DecodeError, decode_pyav, probe
from ppma_scale.data.loader import build_train_stream
from ppma_scale.data.maindecode import MainProcessDecoder, run_ahead
from ppma_scale.data.manifest import Manifest, ShardInfo
from ppma_scale.data.transforms import TrainAugment, render_views, train_views
from shards_tools.videoio import encode_video

FPS = 12.0
CLASSES = ["red", "green", "blue", "yellow"]
COLOURS = np.array([[220, 40, 40], [40, 220, 40], [40, 40, 220], [220, 220, 40]], dtype=np.uint8)
STREAM = dict(num_frames=4, sampling="stride", stride=2, img_size=16, short_side=32, crop="center", flip=False,
              shuffle_buffer=8, decoder="pyav", decode_in_main=True, require_labels=True, max_decode_failures=1.0)


def solid_clip(label: int) -> bytes:
    return encode_video(np.broadcast_to(COLOURS[label], (24, 32, 48, 3)).copy(), FPS, "h264", crf=18, gop=4)


def zero_mdat(data: bytes) -> bytes:
    """The same mp4 with its media data zeroed: probes as before, decodes to nothing."""
    out, i = bytearray(data), 0
    while i < len(out):
        size, kind = struct.unpack(">I4s", out[i:i + 8])
        if kind == b"mdat":
            out[i + 8:i + size] = bytes(size - 8)
            return bytes(out)
        i += size
    raise AssertionError("no mdat box in the encoded clip")


@pytest.fixture(scope="module")
def clips() -> dict:
    good = [solid_clip(c) for c in range(len(CLASSES))]
    bad = zero_mdat(good[0])
    assert probe(bad)[0] == 24  # the worker's check lets it through...
    with pytest.raises(DecodeError):  # ...and decoding it fails
        decode_pyav(bad, np.arange(4))
    return {"good": good, "bad": bad}


def write_set(folder: Path, clips: dict, num: int, bad: set[int]) -> str:
    """One shard of `num` samples; sample i has key s{i}, label i % 4, and is undecodable if i in `bad`."""
    folder.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(folder / "s-0.tar")) as sink:
        for i in range(num):
            label = i % len(CLASSES)
            meta = {"fps": FPS, "frames": 24, "label": label, "label_name": CLASSES[label]}
            sink.write({"__key__": f"s{i}", "mp4": clips["bad"] if i in bad else clips["good"][label],
                        "cls": str(label).encode(), "json": json.dumps(meta).encode()})
    Manifest("colours", CLASSES, [ShardInfo("s-0.tar", num)]).save(folder)
    return str(folder)


def shown_class(view: torch.Tensor) -> int:
    """The class whose colour a (3, T, H, W) view shows."""
    mean = view.float().mean(dim=(1, 2, 3)).numpy()
    return int(np.abs(COLOURS.astype(np.float32) - mean).sum(axis=1).argmin())


def check_rows(batch: dict, key_label: dict[str, int], bad_keys: set[str]) -> None:
    """Every view shows the class of its label, and its key is a decoded sample with that label."""
    assert len(batch["label"]) == len(batch["key"]) == len(batch["dataset"]) == len(batch["video"])
    for view, label, key in zip(batch["video"], batch["label"].tolist(), batch["key"]):
        assert shown_class(view) == label, f"row {key} is labelled {label} but shows {shown_class(view)}"
        assert key not in bad_keys and key_label[key] == label


def test_failed_clip_row_takes_the_donors_video_label_key_and_dataset(clips):
    aug = TrainAugment(img_size=16, short_side=32, crop="center", flip=False, repeat=2)
    idx = np.arange(0, 8, 2)
    batch = {"__encoded__": [(clips["good"][0], idx), (clips["bad"], idx), (clips["good"][2], idx)],
             "__view_seed__": 7, "label": torch.tensor([0, 1, 2]).repeat_interleave(2),
             "key": ["a", "a", "bad", "bad", "c", "c"], "dataset": ["x", "x", "y", "y", "z", "z"],
             "__stats__": {"samples": 3}}
    out, = list(run_ahead(MainProcessDecoder("pyav", 3, "cpu", aug).batches(iter([batch])), depth=1))

    # row 1 (views 2, 3) failed; good clips are rows 0 and 2, and row 1 takes good[1 % 2] = row 2
    assert out["label"].tolist() == [0, 0, 2, 2, 2, 2]
    assert out["key"] == ["a", "a", "c", "c", "c", "c"]
    assert out["dataset"] == ["x", "x", "z", "z", "z", "z"]
    donor = decode_pyav(clips["good"][2], idx)  # decoded separately: the video the row must hold
    expected = render_views(donor, train_views(donor.shape[1], donor.shape[2], aug, np.random.default_rng(0)), 16)
    assert torch.equal(out["video"][2:4], expected) and torch.equal(out["video"][4:6], expected)
    assert not torch.equal(out["video"][0:2], expected)
    stats = out["__stats__"]
    assert stats["decode_failures"] == 1 and stats["samples"] == 2
    assert [f["key"] for f in stats["failed"]] == ["bad"] and stats["failed"][0]["dataset"] == "y"


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_rows_show_their_own_label(tmp_path, clips, workers):
    bad = {1, 6}
    folder = write_set(tmp_path / "set", clips, 12, bad)
    key_label = {f"s{i}": i % 4 for i in range(12)}
    stream = build_train_stream([folder], micro_batch=3, repeat_aug=2, num_workers=workers, **STREAM)
    try:
        for _, batch in zip(range(2 * stream.steps_per_epoch), stream):  # two epochs: every bad clip met twice
            check_rows(batch, key_label, {f"s{i}" for i in bad})
        stats = stream.stats()
    finally:
        stream.close()
    assert stats["decode_failures"] == 2 * len(bad)
    assert {f["key"] for f in stats["failed"]} == {f"s{i}" for i in bad}


def test_batch_with_no_decodable_clip_is_replaced_and_resume_does_not_revisit_it(tmp_path, clips):
    folder = write_set(tmp_path / "set", clips, 4, {1})
    key_label = {f"s{i}": i % 4 for i in range(4)}
    stream = build_train_stream([folder], micro_batch=1, num_workers=0, **STREAM)  # s1 alone: its batch fails whole
    keys, states, failures = [], [], []
    try:
        for _, batch in zip(range(12), stream):  # three epochs
            check_rows(batch, key_label, {"s1"})
            keys.append(batch["key"][0])
            states.append(stream.state_dict())
            failures.append(stream.stats()["decode_failures"])
    finally:
        stream.close()
    assert failures[-1] == 3 and stream.step == 12  # once per epoch, and every step yielded a batch
    assert set(keys) == {"s0", "s2", "s3"}
    # resume right after a step that stood in for s1's batch: the stream goes on as it did, s1 not retried
    stand_in = failures.index(1)
    resumed = build_train_stream([folder], micro_batch=1, num_workers=0, **STREAM)
    resumed.load_state_dict(states[stand_in])
    try:
        rest = [batch["key"][0] for _, batch in zip(range(11 - stand_in), resumed)]
        assert rest == keys[stand_in + 1:]
        assert resumed.stats()["decode_failures"] == failures[-1] - failures[stand_in]
    finally:
        resumed.close()


@pytest.mark.parametrize("ending", ["end", "error"])
def test_run_ahead_thread_ends_when_closed_with_its_queue_full(ending):
    finished = threading.Event()

    def results():
        yield from range(2)  # the consumer takes the first; the second fills the queue (depth 1)
        finished.set()
        if ending == "error":
            raise ValueError("late failure")

    before = set(threading.enumerate())
    ahead = run_ahead(results(), depth=1)
    assert next(ahead) == 0
    assert finished.wait(5)
    (thread,) = [t for t in threading.enumerate() if t not in before and t.name == "ppma-decode"]
    ahead.close()
    thread.join(timeout=5)
    assert not thread.is_alive(), f"the producer still waits to put its {ending!r} after the consumer stopped"
