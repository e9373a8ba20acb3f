"""Turn one source (video file or JPEG-frame folder) into a packed clip, or reject it with a precise reason.

Runs inside pack's worker processes: decode -> resample to a constant frame rate (by timestamps, so
variable-frame-rate sources keep their timing) -> rotate upright -> scale to the target short side
(even dims, 8-bit 4:2:0) -> encode with a fixed keyframe interval. `--copy` remuxes the original
stream instead when it already meets the target.
"""
from __future__ import annotations

import io
import math
import re
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import av
import numpy as np
from PIL import Image

from shards_tools.videoio import CODECS, PIX_FMT, VideoWriter

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
DEFAULT_CRF = {"h264": 23, "vp9": 32}
# leading bytes of the containers we accept: a file that starts like one but will not open is damaged
CONTAINER_MAGIC = {"mp4/mov": (4, b"ftyp"), "mkv/webm": (0, b"\x1a\x45\xdf\xa3"), "avi": (0, b"RIFF")}
# A hole between consecutive frames longer than both of these is a timestamp jump (broken recording,
# muxer glitch), not a stall: filling it by timestamp would turn a short clip into minutes of one frozen frame.
MAX_GAP_SECONDS = 2.0
MAX_GAP_INTERVALS = 10  # typical frame intervals (keeps low-frame-rate sources such as time-lapses)


class Rejected(Exception):
    """The input cannot be packed; the message is the reason written to the manifest."""


@dataclass(frozen=True)
class EncodeSettings:
    """How every clip is re-encoded (recorded in the manifest's settings)."""

    codec: str = "h264"
    short_side: int = 320
    fps: float | None = None  # None: keep the source's (average) frame rate
    max_duration: float | None = None  # seconds kept from the start; None: all
    gop: int = 32  # ~1 s at 25-30 fps: bench/data measured 1.3x faster loading than 8 (and 3x smaller shards)
    crf: int | None = None  # None: codec default (DEFAULT_CRF)
    preset: str = "veryfast"
    min_frames: int = 16  # fewer output frames than this -> rejected (shorter than a training clip)
    copy: bool = False  # remux the source stream when it already fits
    upscale: bool = False  # scale sources smaller than short_side up (default: keep their size)
    frames_fps: float = 25.0  # frame rate of JPEG-frame folders
    threads: int = 1  # FFmpeg threads per worker process (parallelism comes from processes)

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ValueError(f"codec {self.codec!r} is not supported; choose one of {sorted(CODECS)}")
        for name in ("short_side", "gop", "min_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("fps", "max_duration"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.frames_fps <= 0:
            raise ValueError(f"frames_fps must be positive, got {self.frames_fps}")

    @property
    def effective_crf(self) -> int:
        return DEFAULT_CRF[self.codec] if self.crf is None else self.crf

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "crf": self.effective_crf, "pix_fmt": PIX_FMT}


def output_size(width: int, height: int, short_side: int, upscale: bool) -> tuple[int, int]:
    """Keep the aspect ratio, bring the short side to `short_side` (down only unless `upscale`), even dims."""
    scale = short_side / min(width, height)
    if scale > 1 and not upscale:
        scale = 1.0
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


class FrameRateResampler:
    """Pick source frames for a constant-rate output by timestamp: slot k (time k/fps) shows the last
    source frame at or before it (a quarter source frame of slack absorbs timestamp rounding).
    Identity for a CFR source at the same rate; drops/duplicates frames otherwise, which keeps
    VFR sources in real time."""

    def __init__(self, fps: float, source_fps: float, max_slots: int | None):
        self.fps, self.tolerance = fps, 0.25 / source_fps
        self.max_slots, self.next_slot = max_slots, 0
        self.start: float | None = None
        self.previous = None

    def _slot_time(self, slot: int) -> float:
        return self.start + slot / self.fps

    def done(self) -> bool:
        return self.max_slots is not None and self.next_slot >= self.max_slots

    def push(self, item: Any, time: float) -> Iterator[Any]:
        """Feed a source frame at `time`; yields the frames to output before it."""
        if self.start is None:
            self.start = time
        while self.previous is not None and not self.done() and self._slot_time(self.next_slot) + self.tolerance < time:
            self.next_slot += 1
            yield self.previous
        self.previous = item

    def flush(self, last_time: float, frame_duration: float) -> Iterator[Any]:
        """The last source frame fills the slots up to its own end."""
        while self.previous is not None and not self.done() and \
                self._slot_time(self.next_slot) < last_time + frame_duration - self.tolerance:
            self.next_slot += 1
            yield self.previous


def _rotate(frame: av.VideoFrame, rotation: int) -> av.VideoFrame:
    """Apply the display matrix (counter-clockwise degrees) so the output is upright."""
    quarter_turns = int(round(rotation / 90)) % 4
    if not quarter_turns:
        return frame
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(np.rot90(frame.to_ndarray(format="rgb24"), quarter_turns)),
                                      format="rgb24")


def _describe_open_failure(path: Path, error: Exception) -> str:
    with open(path, "rb") as handle:
        head = handle.read(16)
    for name, (offset, magic) in CONTAINER_MAGIC.items():
        if head[offset:offset + len(magic)] == magic:
            return f"damaged {name} file (truncated?): FFmpeg cannot open it: {error}"
    return f"not a video file (format not recognised): {error}"


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


class _ClipEncoder:
    """Shared tail of both source kinds: resample, rotate, scale, encode, and describe the result."""

    def __init__(self, settings: EncodeSettings, source_fps: float, pixel_aspect: float = 1.0):
        self.settings = settings
        self.pixel_aspect = pixel_aspect  # stored pixel width / height (anamorphic sources: DV, DVD, HDV)
        self.fps = float(settings.fps or source_fps)
        max_slots = None if settings.max_duration is None else max(1, int(math.floor(settings.max_duration * self.fps + 1e-6)))
        self.resampler = FrameRateResampler(self.fps, source_fps, max_slots)
        self.writer: VideoWriter | None = None
        self.times: list[float] = []
        self.source_interval = 1.0 / source_fps
        self.recent_intervals: deque[float] = deque(maxlen=64)
        self.rotation = 0
        self.source_size = (0, 0)

    def _start(self, frame: av.VideoFrame) -> None:
        self.rotation = int(getattr(frame, "rotation", 0) or 0)
        width, height = frame.width, frame.height
        self.source_size = (width, height)
        width = max(1, int(round(width * self.pixel_aspect)))  # as displayed: square pixels out
        if int(round(self.rotation / 90)) % 2:
            width, height = height, width
        out_w, out_h = output_size(width, height, self.settings.short_side, self.settings.upscale)
        s = self.settings
        self.writer = VideoWriter(out_w, out_h, self.fps, s.codec, s.effective_crf, s.gop, s.preset, s.threads)

    def _check_gap(self, time: float) -> None:
        """Reject a timestamp jump before the resampler fills it with copies of the previous frame."""
        if not self.times:
            return
        gap = time - self.times[-1]
        typical = float(np.median(self.recent_intervals)) if self.recent_intervals else self.source_interval
        if gap > max(MAX_GAP_SECONDS, MAX_GAP_INTERVALS * typical):
            self.writer.abort()
            raise Rejected(f"timestamp jump: a {gap:.2f} s gap between frames {len(self.times) - 1} and "
                           f"{len(self.times)} (at {self.times[-1] - self.times[0]:.2f} s) where frames are "
                           f"{typical:.3f} s apart (broken recording?); packing it would fill the gap with one "
                           "frozen frame")
        self.recent_intervals.append(gap)

    def push(self, frame: av.VideoFrame, time: float) -> None:
        self._check_gap(time)
        if self.writer is None:
            self._start(frame)
        self.times.append(time)
        for source in self.resampler.push(frame, time):
            self._write(source)

    def _write(self, frame: av.VideoFrame) -> None:
        source_size = f"{frame.width}x{frame.height}"
        try:
            self.writer.write(_rotate(frame, self.rotation).reformat(
                width=self.writer.width, height=self.writer.height, format=PIX_FMT, interpolation="AREA"))
        except (av.error.FFmpegError, ValueError) as exc:  # the source decoded fine: the output is the problem
            self.writer.abort()
            raise Rejected(f"cannot encode {self.settings.codec} at {self.writer.width}x{self.writer.height} "
                           f"(from a {source_size} source): {exc}") from None

    def finish(self, source_fps: float) -> tuple[bytes, dict[str, Any]]:
        if self.writer is None:
            raise Rejected("no decodable video frame")
        intervals = np.diff(self.times) if len(self.times) > 2 else np.array([1.0 / source_fps])
        frame_duration = float(np.median(intervals)) if len(intervals) else 1.0 / source_fps
        for source in self.resampler.flush(self.times[-1], frame_duration):
            self._write(source)
        frames = self.writer.frames
        if frames < self.settings.min_frames:
            self.writer.abort()
            raise Rejected(f"too short: {frames} frame(s) at {self.fps:g} fps, fewer than --min-frames "
                           f"{self.settings.min_frames} (a training clip needs that many)")
        data = self.writer.finish()
        vfr = bool(len(intervals) > 1 and (intervals.min() <= 0 or intervals.max() > 1.5 * intervals.min()))
        meta = {"fps": self.fps, "frames": frames, "width": self.writer.width, "height": self.writer.height,
                "duration": frames / self.fps, "codec": self.settings.codec, "source_width": self.source_size[0],
                "source_height": self.source_size[1], "source_fps": round(float(source_fps), 4),
                "rotation": self.rotation, "vfr": vfr, "copied": False}
        if self.pixel_aspect != 1.0:
            meta["source_pixel_aspect"] = round(self.pixel_aspect, 4)
        return data, meta


def _encode_frame_folder(folder: Path, settings: EncodeSettings) -> tuple[bytes, dict[str, Any]]:
    names = sorted((p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
    if not names:
        raise Rejected(f"frame folder holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    encoder = _ClipEncoder(settings, settings.frames_fps)
    for index, name in enumerate(names):
        if encoder.resampler.done():
            break
        try:
            with Image.open(folder / name) as image:
                rgb = np.asarray(image.convert("RGB"))
        except (OSError, ValueError) as exc:
            raise Rejected(f"unreadable frame file {name}: {exc}") from None
        encoder.push(av.VideoFrame.from_ndarray(rgb, format="rgb24"), index / settings.frames_fps)
    data, meta = encoder.finish(settings.frames_fps)
    return data, {**meta, "source_codec": "jpeg-frames", "source_pix_fmt": "rgb24"}


def _stream_fps(stream: av.video.stream.VideoStream) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and 0 < float(rate) < 1000:
            return float(rate)
    return None


def _declared_duration(container: av.container.InputContainer, stream) -> tuple[float, bool] | None:
    """(seconds, counted from time 0) of the video as the container states it; None if unknown.

    MP4/MOV give the stream's own length (a span). Matroska/WebM give an end time measured from 0
    (the segment duration, also in the per-stream DURATION tag), so a clip whose timestamps start
    at 10 s declares 14 s for 4 s of video; the tag is there with an audio track too. Otherwise
    the container-wide duration counts only when video is the sole stream: a longer audio track
    must not read as truncation.
    """
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base), False
    from_zero = "matroska" in (container.format.name or "")
    tag = _tag_seconds(stream.metadata.get("DURATION") or stream.metadata.get("duration"))
    if from_zero and tag:
        return tag, True
    if container.duration and len(container.streams) == 1:
        return container.duration / 1e6, from_zero
    return None


def _tag_seconds(text: str | None) -> float | None:
    """'00:00:08.000000000' (Matroska's DURATION tag) -> 8.0; None if absent or unreadable."""
    match = re.fullmatch(r"(\d+):(\d{2}):(\d{2}(?:\.\d*)?)", (text or "").strip())
    if not match:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _decoded_length(declared: tuple[float, bool], first: float, last: float, fps: float) -> float:
    """What the decoded frames cover, measured as `declared` is: a span, or an end time from 0."""
    return last + 1.0 / fps if declared[1] else last - first + 1.0 / fps


def _truncated(declared: tuple[float, bool] | None, decoded: float, fps: float) -> bool:
    return bool(declared) and decoded < 0.9 * declared[0] - 2.0 / fps


def _pixel_aspect(stream) -> float:
    """The stream's sample aspect ratio (1.0 when unset or invalid)."""
    ratio = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
    return float(ratio) if ratio and 0.1 < float(ratio) < 10 else 1.0


def _can_copy(stream, settings: EncodeSettings, source_fps: float) -> bool:
    ctx = stream.codec_context
    return (ctx.name == settings.codec and ctx.pix_fmt == PIX_FMT and ctx.width % 2 == 0 and ctx.height % 2 == 0
            and _pixel_aspect(stream) == 1.0 and min(ctx.width, ctx.height) <= settings.short_side
            and settings.max_duration is None and (settings.fps is None or abs(settings.fps - source_fps) < 1e-3))


def _first_frame_rotation(path: Path) -> int | None:
    """Display rotation of the first frame (None if no frame decodes): a rotated stream is not copied."""
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            return int(frame.rotation or 0)
    return None


def _remux(path: Path, settings: EncodeSettings, source_fps: float) -> tuple[bytes, dict[str, Any]] | None:
    """Copy the video stream into the target container; None if it turns out not to fit (rotated, VFR,
    damaged), so the caller re-encodes instead."""
    if _first_frame_rotation(path) != 0:
        return None
    _, container_format, _ = CODECS[settings.codec]
    buffer, times, keyframes = io.BytesIO(), [], []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        declared = _declared_duration(container, stream)
        with av.open(buffer, mode="w", format=container_format) as output:
            out_stream = output.add_stream_from_template(stream)
            for packet in container.demux(stream):
                if packet.dts is None:
                    continue
                if packet.is_discard or (not times and not packet.is_keyframe):
                    return None  # an edit-list cut (hidden lead-in frames): copied, the count would be wrong
                if packet.is_keyframe:
                    keyframes.append(len(times))
                times.append(float(packet.pts * packet.time_base) if packet.pts is not None else len(times) / source_fps)
                packet.stream = out_stream
                output.mux(packet)
        ctx = stream.codec_context
        width, height = ctx.width, ctx.height
    intervals = np.diff(sorted(times))
    if len(intervals) > 1 and (intervals.min() <= 0 or intervals.max() / intervals.min() > 1.5):
        return None  # variable frame rate: re-encode at a constant one
    if times and (min(times) < 0 or _truncated(declared, _decoded_length(declared, min(times), max(times),
                                                                        source_fps), source_fps)):
        return None  # hidden frames, or fewer packets than declared: let the decoder judge
    if max(np.diff([*keyframes, len(times)]), default=len(times) + 1) > settings.gop:
        return None  # keyframes sparser than --gop: every clip read would decode that much further
    if len(times) < settings.min_frames:
        raise Rejected(f"too short: {len(times)} frame(s), fewer than --min-frames {settings.min_frames} "
                       "(a training clip needs that many)")
    meta = {"fps": source_fps, "frames": len(times), "width": width, "height": height,
            "duration": len(times) / source_fps, "codec": settings.codec, "source_width": width,
            "source_height": height, "source_fps": round(source_fps, 4), "rotation": 0, "vfr": False,
            "copied": True}
    return buffer.getvalue(), meta


def _encode_video_file(path: Path, settings: EncodeSettings) -> tuple[bytes, dict[str, Any]]:
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise Rejected(_describe_open_failure(path, exc)) from None
    with container:
        if not container.streams.video:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
            raise Rejected(f"no video stream (streams present: {kinds})")
        stream = container.streams.video[0]
        stream.codec_context.thread_count = settings.threads
        source_fps = _stream_fps(stream) or 25.0
        info = {"source_codec": stream.codec_context.name, "source_pix_fmt": stream.codec_context.pix_fmt or ""}
        if settings.copy and _can_copy(stream, settings, source_fps):
            copied = _remux(path, settings, source_fps)
            if copied is not None:
                return copied[0], {**copied[1], **info}
        encoder = _ClipEncoder(settings, source_fps, _pixel_aspect(stream))
        try:
            for index, frame in enumerate(container.decode(stream)):
                time = frame.time if frame.time is not None else index / source_fps
                encoder.push(frame, time)
                if encoder.resampler.done():
                    break
        except av.error.FFmpegError as exc:
            raise Rejected(f"decode error after {len(encoder.times)} frame(s) (truncated or corrupt): {exc}") from None
        declared = _declared_duration(container, stream)
        if not encoder.resampler.done() and declared and encoder.times:
            decoded = _decoded_length(declared, encoder.times[0], encoder.times[-1], source_fps)
            if _truncated(declared, decoded, source_fps):
                what = f"the decoded frames end at {decoded:.2f} s" if declared[1] else \
                    f"only {decoded:.2f} s could be decoded"
                raise Rejected(f"truncated: {what} of the {declared[0]:.2f} s the container declares "
                               f"({len(encoder.times)} frames)")
        data, meta = encoder.finish(source_fps)
        return data, {**meta, **info}


def encode_source(path: Path, settings: EncodeSettings) -> tuple[bytes, dict[str, Any]]:
    """Re-encode (or copy) one source; raises `Rejected` with the reason when it cannot be packed."""
    if not path.exists():
        raise Rejected("file not found")
    if path.is_dir():
        return _encode_frame_folder(path, settings)
    size = path.stat().st_size
    if size == 0:
        raise Rejected("empty file (0 bytes)")
    return _encode_video_file(path, settings)
