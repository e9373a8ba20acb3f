"""Which frames of a video make a clip: training (one random clip) and test (C evenly spaced clips).

Two ways to cut a clip of T frames:
- `stride`: T frames at a fixed stride s (VideoMAE), covering (T - 1) * s + 1 frames;
- `window`: T frames spread uniformly over a window of D seconds (PPMA: 16 frames over 2.7 s), so
  the clip covers the same time whatever the video's frame rate.
A video shorter than the clip repeats its last frame (the decoder clamps indices to the video).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClipSpec:
    """How a clip is cut from a video."""

    num_frames: int = 16
    sampling: str = "window"  # 'stride' | 'window'
    stride: int = 4
    window_s: float = 2.7

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ValueError(f"data.num_frames must be >= 1, got {self.num_frames}")
        if self.sampling not in ("stride", "window"):
            raise ValueError(f"data.sampling must be 'stride' or 'window', got {self.sampling!r}")
        if self.sampling == "stride" and self.stride < 1:
            raise ValueError(f"data.stride must be >= 1, got {self.stride}")
        if self.sampling == "window" and not self.window_s > 0:
            raise ValueError(f"data.window_s must be > 0, got {self.window_s}")

    def span(self, fps: float) -> int:
        """Frames a clip covers, first to last inclusive."""
        if self.sampling == "stride":
            return (self.num_frames - 1) * self.stride + 1
        return max(1, int(round(self.window_s * fps)))

    def offsets(self, span: int) -> np.ndarray:
        """Frame offsets of the T frames from the clip start, for a clip covering `span` frames."""
        if self.sampling == "stride":
            return np.arange(self.num_frames, dtype=np.int64) * self.stride
        return np.round(np.linspace(0, span - 1, self.num_frames)).astype(np.int64)


def _clip_span(spec: ClipSpec, total: int, fps: float) -> int:
    span = spec.span(fps)
    # a window longer than the video shrinks to the video; a stride clip keeps its stride
    return min(span, total) if spec.sampling == "window" else span


def train_indices(spec: ClipSpec, total: int, fps: float, rng: np.random.Generator) -> np.ndarray:
    """T frame indices of one clip starting at a random frame; clamped to the video's last frame."""
    total = max(1, int(total))
    span = _clip_span(spec, total, fps)
    start = int(rng.integers(0, max(0, total - span) + 1))
    return np.minimum(start + spec.offsets(span), total - 1)


def test_indices(spec: ClipSpec, total: int, fps: float, num_clips: int) -> list[np.ndarray]:
    """`num_clips` clips evenly spaced over the video (one clip: the centre)."""
    if num_clips < 1:
        raise ValueError(f"data.test_clips must be >= 1, got {num_clips}")
    total = max(1, int(total))
    span = _clip_span(spec, total, fps)
    room = max(0, total - span)
    starts = [room / 2] if num_clips == 1 else np.linspace(0, room, num_clips)
    return [np.minimum(int(round(s)) + spec.offsets(span), total - 1) for s in starts]
