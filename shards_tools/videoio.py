"""Encode and decode video with PyAV (FFmpeg): used by synth, pack, verify, show and tests.

`VideoWriter` streams frames into an in-memory container so a long source never has to sit in
memory as raw frames; `encode_video` is the whole-array shortcut.
"""
from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
from av.video.frame import PictureType

from shards_tools.heapfill import fill_new_heap_blocks

# codec name -> (FFmpeg encoder, container format, file extension used in shards)
CODECS = {
    "h264": ("libx264", "mp4", "mp4"),
    "vp9": ("libvpx-vp9", "webm", "webm"),
}
# every packed clip is 8-bit 4:2:0: NVDEC rejects 4:4:4 and DALI's CPU VP9 path expects it
PIX_FMT = "yuv420p"


def encoder_options(codec: str, crf: int, gop: int, preset: str, threads: int) -> dict[str, str]:
    """FFmpeg options for a fixed keyframe interval and constant quality."""
    if codec == "h264":
        # fixed keyframe interval, no scene-cut keyframes, no B-frames (decode order == display order)
        params = f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0"
        # a53cc=0: closed captions riding on source frames are not copied into training clips
        return {"crf": str(crf), "preset": preset, "x264-params": params, "threads": str(threads), "a53cc": "0"}
    return {"crf": str(crf), "g": str(gop), "b:v": "0", "deadline": "realtime",
            "cpu-used": "8", "row-mt": "1", "threads": str(threads)}


class VideoWriter:
    """Encode frames one at a time into an in-memory mp4 (H.264) or webm (VP9).

    Frames may be RGB arrays (H, W, 3 uint8) or `av.VideoFrame`s of the output size in any pixel
    format; they are converted to yuv420p here.
    """

    def __init__(self, width: int, height: int, fps: float = 25.0, codec: str = "h264",
                 crf: int = 23, gop: int = 8, preset: str = "veryfast", threads: int = 0):
        if codec not in CODECS:
            raise ValueError(f"codec {codec!r} is not supported; choose one of {sorted(CODECS)}")
        if height % 2 or width % 2 or height <= 0 or width <= 0:
            raise ValueError(f"frame size {width}x{height} must be positive and even for {PIX_FMT}")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        encoder, container_format, _ = CODECS[codec]
        fill_new_heap_blocks()  # the same frames must give the same bytes (see heapfill.py)
        self.width, self.height, self.frames = width, height, 0
        self._buffer = io.BytesIO()
        self._container = av.open(self._buffer, mode="w", format=container_format)
        self._rate = Fraction(fps).limit_denominator(1001)
        self._stream = self._container.add_stream(encoder, rate=self._rate)
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, PIX_FMT
        self._stream.options = encoder_options(codec, crf, gop, preset, threads)

    def write(self, frame: np.ndarray | av.VideoFrame) -> None:
        if isinstance(frame, np.ndarray):
            frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
        if frame.width != self.width or frame.height != self.height:
            raise ValueError(f"frame is {frame.width}x{frame.height}, writer expects {self.width}x{self.height}")
        if frame.format.name != PIX_FMT:
            frame = frame.reformat(format=PIX_FMT)
        # constant frame rate: frame i is shown at i / fps, whatever timestamps the source had; a
        # decoded source frame's picture type would force the encoder's (I where the source had I)
        frame.pts, frame.time_base = self.frames, 1 / self._rate
        frame.pict_type = PictureType.NONE
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def finish(self) -> bytes:
        """Flush the encoder, close the container and return its bytes."""
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        return self._buffer.getvalue()

    def abort(self) -> None:
        try:
            self._container.close()
        except av.error.FFmpegError:
            pass


def encode_video(
    frames: np.ndarray,
    fps: float = 25.0,
    codec: str = "h264",
    crf: int = 23,
    gop: int = 8,
    preset: str = "veryfast",
    threads: int = 0,
) -> bytes:
    """Encode `frames` (T, H, W, 3 uint8 RGB; H and W even) and return the container's bytes.

    A short keyframe interval (`gop`) lets a reader seek close to any clip start.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:3]
    writer = VideoWriter(width, height, fps, codec, crf, gop, preset, threads)
    for frame in frames:
        writer.write(frame)
    return writer.finish()


def decode_video(data: bytes, max_frames: int | None = None) -> np.ndarray:
    """Decode an in-memory video to RGB frames (T, H, W, 3 uint8); for tools and tests, not training."""
    frames = []
    with av.open(io.BytesIO(data)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if max_frames is not None and len(frames) >= max_frames:
                break
    if not frames:
        raise ValueError("the video holds no decodable frame")
    return np.stack(frames)


def video_extension(codec: str) -> str:
    """The shard field name (file extension) for a codec: h264 -> mp4, vp9 -> webm."""
    return CODECS[codec][2]
