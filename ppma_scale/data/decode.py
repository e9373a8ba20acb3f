"""Decoders behind one interface: encoded clips + frame indices -> frames (T, H, W, 3 uint8).

Backends:
- `pyav`: FFmpeg through PyAV on the CPU. Seeks to the keyframe before the first needed frame,
  decodes forwards only until the last needed one, and converts to RGB only the frames kept.
- `dali_cpu` / `dali_mixed`: DALI's `fn.decoders.video` (see `dali.py`), fed by our stream; the
  CPU backend decodes VP8/VP9/MJPEG only (and, in DALI 2.4, from the start of the stream rather
  than from a keyframe, so `auto` prefers PyAV on CPUs), the mixed backend uses NVDEC on a GPU.

`choose_decoder` turns `data.decoder: auto|dali|pyav` into one of these and says why.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Protocol, Sequence

import av
import numpy as np

DALI_CPU_CODECS = {"vp8", "vp9", "mjpeg"}  # what DALI's CPU video decoder accepts (PITFALLS.md)


class DecodeError(RuntimeError):
    """A clip that cannot be decoded; the stream skips, counts and names it."""


@dataclass
class EncodedClip:
    """One request: the container bytes and which frames (any order, repeats allowed)."""

    data: bytes
    indices: np.ndarray
    key: str = ""


class VideoDecoder(Protocol):
    name: str

    def decode(self, clips: Sequence[EncodedClip]) -> list[np.ndarray | Exception]:
        """Frames (len(indices), H, W, 3 uint8; a torch tensor on the GPU for dali_mixed) or the error."""


def probe(data: bytes) -> tuple[int, float]:
    """(frame count, frame rate) from the container, for samples whose metadata lacks them."""
    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 25)
            frames = int(stream.frames or 0)
            if frames <= 0:
                if stream.duration is not None:
                    seconds = float(stream.duration * stream.time_base)
                else:
                    seconds = (container.duration or 0) / av.time_base
                frames = int(round(seconds * fps))
            if frames <= 0:  # nothing recorded: count by decoding
                frames = sum(1 for _ in container.decode(video=0))
    except (av.error.FFmpegError, IndexError, ValueError) as exc:
        raise DecodeError(f"not a readable video: {exc}") from None
    if frames <= 0:
        raise DecodeError("the video holds no frame")
    return frames, fps


def decode_pyav(data: bytes, indices: np.ndarray, threads: int = 1, counts: dict | None = None) -> np.ndarray:
    """Decode the frames at `indices` (frame numbers from the start) with as little work as possible.

    `counts`, if given, receives {"decoded": frames the codec produced} (how much work was done).
    """
    indices = np.asarray(indices, dtype=np.int64)
    wanted = np.unique(indices)
    counts = {} if counts is None else counts
    counts["decoded"] = 0
    try:
        frames = _decode_range(data, wanted, threads, int(wanted[0]) > 0, counts)
        if int(wanted[0]) not in frames and frames and min(frames) > wanted[0]:
            frames = _decode_range(data, wanted, threads, False, counts)  # seek landed late: start over
    except (av.error.FFmpegError, IndexError, ValueError, OverflowError) as exc:
        raise DecodeError(f"decode failed: {exc}") from None
    if not frames:
        raise DecodeError("no frame decoded")
    known = np.array(sorted(frames))
    first = frames[int(known[0])].shape
    changed = next((int(i) for i in known if frames[int(i)].shape != first), None)
    if changed is not None:  # legal in H.264/VP9 streams, and seen in damaged VP9 keyframes
        size = frames[changed].shape
        raise DecodeError(f"the frame size changes from {first[1]}x{first[0]} to {size[1]}x{size[0]} "
                          f"at frame {changed}; re-encode the video at one size")
    # frames past the end of a short video repeat the clip's last frame; a gap repeats the frame before it
    pick = known[np.maximum(np.searchsorted(known, indices, side="right") - 1, 0)]
    return np.stack([frames[int(i)] for i in pick])


def _decode_range(data: bytes, wanted: np.ndarray, threads: int, seek: bool, counts: dict) -> dict[int, np.ndarray]:
    keep = set(int(i) for i in wanted)
    last = int(wanted[-1])
    frames: dict[int, np.ndarray] = {}
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        if threads > 0:
            stream.thread_count = threads
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate:
            raise DecodeError("the video stream has no frame rate")
        time_base = stream.time_base
        start = stream.start_time or 0
        if seek:
            target = start + int(int(wanted[0]) / rate / time_base)
            container.seek(target, stream=stream, backward=True, any_frame=False)
        index, frame = -1, None
        for frame in container.decode(stream):
            counts["decoded"] += 1
            index = index + 1 if frame.pts is None else int(round(float((frame.pts - start) * time_base * rate)))
            if index in keep:
                frames[index] = frame.to_ndarray(format="rgb24")
            if index >= last:
                break
        else:  # the clip ended before `last`: keep its last frame, which pads the indices past the end (as DALI)
            if frame is not None and index not in frames:
                frames[index] = frame.to_ndarray(format="rgb24")
    return frames


class PyAVDecoder:
    """CPU decode through PyAV, one clip at a time (parallelism comes from DataLoader workers)."""

    name = "pyav"

    def __init__(self, threads: int = 1):
        self.threads = threads

    def decode(self, clips: Sequence[EncodedClip]) -> list[np.ndarray | Exception]:
        out: list[np.ndarray | Exception] = []
        for clip in clips:
            try:
                out.append(decode_pyav(clip.data, clip.indices, self.threads))
            except DecodeError as exc:
                out.append(without_tracebacks(exc))
        return out


def without_tracebacks(exc: BaseException) -> BaseException:
    """`exc` with its traceback (and those of the exceptions it chains to) dropped, so it can be kept
    as a result. Kept with them, it is a reference cycle (result list -> traceback -> the frame that
    holds the list) that also holds PyAV's codec context; left to the cycle collector, it may be freed
    first in a DataLoader worker forked later, whose copy then waits forever in avcodec_free_context
    for decoder threads that exist only in the parent (seen in tests/data/test_maindecode_failures.py)."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        link.__traceback__ = None
        link = link.__cause__ or link.__context__
    return exc


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def choose_decoder(requested: str, codecs: Sequence[str | None], on_gpu: bool,
                   needs_cpu_frames: bool = False) -> tuple[str, str]:
    """(backend, reason) for `data.decoder`; backend is 'pyav', 'dali_cpu' or 'dali_mixed'.

    `needs_cpu_frames`: an augmentation (RandAugment) works on CPU frames, ruling out GPU decode.
    """
    if requested not in ("auto", "dali", "pyav"):
        raise ValueError(f"data.decoder must be 'auto', 'dali' or 'pyav', got {requested!r}")
    known = {c for c in codecs if c}
    cpu_ok = bool(known) and None not in codecs and known <= DALI_CPU_CODECS
    if requested == "pyav":
        return "pyav", "data.decoder=pyav"
    if requested == "dali":
        if not dali_available():
            raise ValueError("data.decoder=dali but nvidia-dali is not installed "
                             "(pip install nvidia-dali-cuda130, or use data.decoder=pyav)")
        if on_gpu and not needs_cpu_frames:
            return "dali_mixed", "data.decoder=dali on a GPU: NVDEC"
        if cpu_ok:
            return "dali_cpu", "data.decoder=dali without a GPU: DALI CPU backend on VP9/VP8/MJPEG shards"
        raise ValueError(f"data.decoder=dali without GPU decode needs VP8/VP9/MJPEG shards (DALI's CPU decoder "
                         f"refuses H.264/HEVC/AV1); the shards hold {sorted(known) or 'an unrecorded codec'}. "
                         "Use data.decoder=pyav or auto" + (", or drop augment.randaugment" if needs_cpu_frames else ""))
    if on_gpu and dali_available() and not needs_cpu_frames:
        return "dali_mixed", "auto: GPU present and DALI installed -> DALI mixed (NVDEC)"
    # DALI's CPU decoder decodes from the stream start instead of seeking (DALI 2.4), so PyAV is
    # faster for training clips even on VP9 shards (bench/data/RESULTS.md)
    why = "RandAugment needs CPU frames" if needs_cpu_frames and on_gpu else \
        "DALI not installed" if on_gpu else "no GPU decode"
    return "pyav", f"auto: {why} -> PyAV"


def make_decoder(kind: str, batch_size: int = 8, device_id: int | None = None, threads: int = 1) -> VideoDecoder:
    """Instantiate a backend chosen by `choose_decoder` (DALI builds its pipeline on first use)."""
    if kind == "pyav":
        return PyAVDecoder(threads)
    if kind in ("dali_cpu", "dali_mixed"):
        from ppma_scale.data.dali import DaliDecoder  # lazy: the package imports without DALI

        return DaliDecoder("cpu" if kind == "dali_cpu" else "mixed", batch_size, device_id, threads)
    raise ValueError(f"unknown decoder backend {kind!r}")
