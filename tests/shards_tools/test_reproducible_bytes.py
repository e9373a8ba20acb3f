"""The same frames encode to the same bytes however the process used its heap before.

FFmpeg's libx264 path reads heap memory nobody wrote (shards_tools/heapfill.py); without the fix
this loop gave 3-5 different encodings of the same clip in 300 (this machine, x264 via PyAV 18).
The loop runs in a fresh interpreter: the fix is per process and must be in force before the
first encode, as in a pack worker.
"""
from __future__ import annotations

import subprocess
import sys

from shards_tools.heapfill import fill_new_heap_blocks

ENCODE_LOOP = r"""
import hashlib, sys
import av, numpy as np
from shards_tools.videoio import PIX_FMT, VideoWriter
rng = np.random.default_rng(0)
t = np.arange(32)[:, None, None]
y, x = np.mgrid[0:96, 0:128]
base = ((x[None] * 2 + y[None] + 5 * t) % 256).astype(np.uint8)
frames = np.stack([base, np.roll(base, 7, axis=2), 255 - base], axis=-1)
frames = np.clip(frames.astype(int) + rng.integers(-40, 40, frames.shape), 0, 255).astype(np.uint8)
outputs = set()
for _ in range(int(sys.argv[1])):
    # converting afresh each round churns the heap the way a pack worker does
    small = [av.VideoFrame.from_ndarray(f, format="rgb24").reformat(width=96, height=72, format=PIX_FMT,
                                                                     interpolation="AREA") for f in frames]
    writer = VideoWriter(96, 72, 15.0, "h264", 23, 8, "veryfast", 1)
    for frame in small:
        writer.write(frame)
    outputs.add(hashlib.sha1(writer.finish()).hexdigest())
print(len(outputs))
"""


def test_repeated_encodes_of_the_same_frames_are_byte_identical():
    assert fill_new_heap_blocks()  # glibc here: the fix is in force
    result = subprocess.run([sys.executable, "-c", ENCODE_LOOP, "300"], capture_output=True, text=True,
                            timeout=300, check=True)
    assert result.stdout.strip() == "1", result.stdout + result.stderr
