"""Encode RGB frames to an in-memory video with PyAV (FFmpeg): used by synth, pack and tests."""
from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np

# codec name -> (FFmpeg encoder, container format, file extension used in shards)
CODECS = {
    "h264": ("libx264", "mp4", "mp4"),
    "vp9": ("libvpx-vp9", "webm", "webm"),
}


def encode_video(
    frames: np.ndarray,
    fps: float = 25.0,
    codec: str = "h264",
    crf: int = 23,
    gop: int = 8,
    preset: str = "veryfast",
) -> bytes:
    """Encode `frames` (T, H, W, 3 uint8 RGB; H and W even) and return the container's bytes.

    A short keyframe interval (`gop`) lets a reader seek close to any clip start.
    """
    if codec not in CODECS:
        raise ValueError(f"codec {codec!r} is not supported; choose one of {sorted(CODECS)}")
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"frame size {width}x{height} must be even for yuv420p")
    encoder, container_format, _ = CODECS[codec]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format) as container:
        stream = container.add_stream(encoder, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "h264":
            # fixed keyframe interval, no scene-cut keyframes, no B-frames (decode order == display order)
            params = f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0"
            options = {"crf": str(crf), "preset": preset, "x264-params": params}
        else:
            options = {"crf": str(crf), "g": str(gop), "b:v": "0", "deadline": "realtime",
                       "cpu-used": "8", "row-mt": "1"}
        stream.options = options
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def video_extension(codec: str) -> str:
    """The shard field name (file extension) for a codec: h264 -> mp4, vp9 -> webm."""
    return CODECS[codec][2]
