"""DALI video decode fed from our stream: `fn.external_source` -> `fn.decoders.video`.

DALI only decodes here; which sample, which frames and which crops stay with our stream, so
sharding, mixing and exact resume live in one place (DALI's own readers and checkpoints are not
used: `fn.decoders.video` does not support pipeline checkpointing). The `cpu` backend decodes
VP8/VP9/MJPEG; `mixed` decodes on the GPU with NVDEC (H.264, HEVC, VP9, AV1) and returns frames
as CUDA tensors, which the stream then crops and resizes on the same GPU.

A corrupt clip makes DALI fail the whole batch; the batch is then decoded clip by clip so only
the bad one is skipped, with the line of DALI's message that says why (`dali_reason`).
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from ppma_scale.data.decode import DecodeError, EncodedClip


_DALI_BOILERPLATE = ("Critical error in pipeline", "Current pipeline object is no longer valid",
                     "Error in CPU operator", "Error in GPU operator", "Error in MIXED operator",
                     "which was used in the pipeline definition", "File \"", "return fn.", "encountered:",
                     "C++ context:")
_ASSERT = re.compile(r'^Assert on ".*?" failed:\s*')


def dali_reason(exc: BaseException, limit: int = 300) -> str:
    """The informative part of a DALI error: what follows `encountered:` (without the C++ context and
    the assertion's expression), else the first line that is not DALI's framing."""
    text = str(exc).strip()
    if "encountered:" in text:
        text = text.split("encountered:", 1)[1].split("C++ context:", 1)[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    useful = [_ASSERT.sub("", line) for line in lines if not line.startswith(_DALI_BOILERPLATE)]
    return " ".join(useful)[:limit] or (lines[0][:limit] if lines else type(exc).__name__)


class DaliDecoder:
    """Batched frame decode with DALI; the pipeline is built lazily in the process that uses it."""

    def __init__(self, device: str, batch_size: int, device_id: int | None = None, threads: int = 1):
        if device not in ("cpu", "mixed"):
            raise ValueError(f"DALI decode device must be 'cpu' or 'mixed', got {device!r}")
        if device == "mixed" and device_id is None:
            raise ValueError("DALI mixed (GPU) decode needs a CUDA device id")
        self.device = device
        self.name = f"dali_{device}"
        self.batch_size = max(1, batch_size)
        self.device_id = device_id if device == "mixed" else None
        self.threads = max(1, threads)
        self._pipe = None

    def _pipeline(self):
        if self._pipe is None:
            from nvidia.dali import fn, pipeline_def, types

            @pipeline_def(batch_size=self.batch_size, num_threads=self.threads, device_id=self.device_id,
                          prefetch_queue_depth=1, exec_dynamic=True)
            def video_pipeline():
                encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1, device="cpu")
                frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1, device="cpu")
                return fn.decoders.video(encoded, device=self.device, frames=frames, pad_mode="edge")

            self._pipe = video_pipeline()
            self._pipe.build()
        return self._pipe

    def _run(self, clips: Sequence[EncodedClip]) -> list:
        pipe = self._pipeline()
        pipe.feed_input("encoded", [np.frombuffer(c.data, dtype=np.uint8) for c in clips])
        pipe.feed_input("frames", [np.ascontiguousarray(c.indices, dtype=np.int32) for c in clips])
        (out,) = pipe.run()
        return [self._to_frames(out[i]) for i in range(len(clips))]

    def _to_frames(self, tensor):
        if self.device == "cpu":
            return np.array(tensor)
        import torch
        from nvidia.dali.plugin.pytorch import feed_ndarray

        result = torch.empty(tuple(tensor.shape()), dtype=torch.uint8, device=f"cuda:{self.device_id}")
        feed_ndarray(tensor, result, cuda_stream=torch.cuda.current_stream(self.device_id))
        return result

    def decode(self, clips: Sequence[EncodedClip]) -> list:
        results: list = []
        for start in range(0, len(clips), self.batch_size):
            chunk = list(clips[start:start + self.batch_size])
            try:
                results.extend(self._run(chunk))
            except RuntimeError:
                self._pipe = None  # a failed run can leave the pipeline unusable: rebuild it
                for clip in chunk:
                    try:
                        results.extend(self._run([clip]))
                    except RuntimeError as exc:
                        self._pipe = None
                        results.append(DecodeError(f"DALI decode failed: {dali_reason(exc)}"))
        return results
