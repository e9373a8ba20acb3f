"""Real media for the shards_tools tests, written with PyAV: good clips in every container, and every
kind of bad input the pack tool must survive (each with the reason pack must give)."""
from __future__ import annotations

import pathlib
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image


def pattern(t: int, height: int, width: int) -> np.ndarray:
    """RGB frame: a moving vertical bar over a gradient, and a white block in the top-left corner
    (so orientation can be checked after rotation)."""
    frame = np.zeros((height, width, 3), np.uint8)
    frame[..., 0] = np.linspace(0, 200, width, dtype=np.uint8)[None]
    frame[..., 2] = np.linspace(0, 200, height, dtype=np.uint8)[:, None]
    x = (3 * t) % max(width - 4, 1)
    frame[:, x:x + 4, 1] = 255
    frame[: height // 4, : width // 4] = 255
    return frame


def write_video(path: pathlib.Path, frames: int = 24, width: int = 64, height: int = 48, fps: float = 12,
                codec: str = "libx264", pix_fmt: str = "yuv420p", container: str | None = None,
                rotation: int | None = None, times: list[float] | None = None) -> pathlib.Path:
    """Encode `pattern` frames; `times` (seconds per frame) makes a variable-frame-rate stream."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=container) as output:
        if times is not None:  # VFR: a fine time base and explicit timestamps
            stream = output.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        else:
            stream = output.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "x264-params": "bframes=0"}
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for t in range(frames):
            frame = av.VideoFrame.from_ndarray(pattern(t, height, width), format="rgb24").reformat(format=pix_fmt)
            if times is not None:
                frame.pts, frame.time_base = int(round(times[t] * 1000)), Fraction(1, 1000)
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return path


def write_audio_only(path: pathlib.Path, seconds: float = 1.0) -> pathlib.Path:
    with av.open(str(path), "w") as output:
        stream = output.add_stream("aac", rate=16000)
        samples = int(16000 * seconds)
        for start in range(0, samples, 1024):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, start
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return path


def write_frame_folder(folder: pathlib.Path, frames: int = 20, width: int = 64, height: int = 48) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    for t in range(frames):
        Image.fromarray(pattern(t, height, width)).save(folder / f"img_{t + 1:05d}.jpg", quality=90)
    return folder


def build_messy_corpus(root: pathlib.Path) -> tuple[pathlib.Path, dict[str, str], list[str]]:
    """A PPMA split file over good and bad inputs; returns (split file, {bad source: reason start},
    [good sources])."""
    good = {
        "good/h264.mp4": lambda p: write_video(p),
        "good/mpeg4.avi": lambda p: write_video(p, codec="mpeg4"),
        "good/h264.mkv": lambda p: write_video(p, fps=25, frames=30),
        "good/vp9.webm": lambda p: write_video(p, codec="libvpx-vp9"),
        "good/mjpeg.mov": lambda p: write_video(p, codec="mjpeg", pix_fmt="yuvj420p"),
        "good/frames_ucf": lambda p: write_frame_folder(p),
        "odd/odd_size.mkv": lambda p: write_video(p, width=67, height=49, codec="ffv1", pix_fmt="yuv444p"),
        "odd/gray.mkv": lambda p: write_video(p, codec="ffv1", pix_fmt="gray"),
        "odd/ten_bit.mp4": lambda p: write_video(p, pix_fmt="yuv420p10le"),
        "odd/rotated.mp4": lambda p: write_video(p, rotation=90),
        "odd/vfr.mkv": lambda p: write_video(p, frames=30, fps=12, times=[0.05 * t + (0.03 if t % 3 else 0)
                                                                               for t in range(30)]),
    }
    full = write_video(root / "scratch/full.mp4", frames=48)
    full_mkv = write_video(root / "scratch/full.mkv", frames=48)
    bad = {
        "bad/empty.mp4": (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
        "bad/truncated.mp4": (lambda p: p.write_bytes(full.read_bytes()[: full.stat().st_size // 2]),
                              "damaged mp4/mov file (truncated?)"),
        "bad/truncated.mkv": (lambda p: p.write_bytes(full_mkv.read_bytes()[: full_mkv.stat().st_size // 2]),
                              "truncated: the decoded frames end at"),
        "bad/not_a_video.mp4": (lambda p: p.write_text("this is a text file, not a video\n" * 20),
                                "not a video file (format not recognised)"),
        "bad/audio_only.m4a": (write_audio_only, "no video stream (streams present: audio)"),
        "bad/single_frame.mp4": (lambda p: write_video(p, frames=1), "too short: 1 frame(s)"),
        "bad/short.mp4": (lambda p: write_video(p, frames=10), "too short: 10 frame(s)"),
        "bad/missing.mp4": (lambda p: None, "file not found"),
        "bad/frames_broken": (lambda p: (write_frame_folder(p), (p / "img_00005.jpg").write_bytes(b"garbage")),
                              "unreadable frame file img_00005.jpg"),
        "bad/frames_empty": (lambda p: p.mkdir(parents=True), "frame folder holds no image files"),
    }
    lines = []
    for label, (source, make) in enumerate(good.items()):
        (root / source).parent.mkdir(parents=True, exist_ok=True)
        make(root / source)
        lines.append(f"{source};{label % 4}")
    for label, (source, (make, _)) in enumerate(bad.items()):
        (root / source).parent.mkdir(parents=True, exist_ok=True)
        make(root / source)
        lines.append(f"{source};{label % 4}")
    split = root / "split.txt"
    split.write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("a\nb\nc\nd\n")
    return split, {s: reason for s, (_, reason) in bad.items()}, list(good)


@pytest.fixture(scope="session")
def messy_corpus(tmp_path_factory) -> tuple[pathlib.Path, dict[str, str], list[str]]:
    """(split file, {bad source: expected reason prefix}, [good sources]) built once per session."""
    return build_messy_corpus(tmp_path_factory.mktemp("messy"))


@pytest.fixture
def pattern_frames():
    """`pattern_frames(T, height=48, width=64)` -> (T, H, W, 3) uint8 frames of the test pattern."""
    return lambda frames, height=48, width=64: np.stack([pattern(t, height, width) for t in range(frames)])
