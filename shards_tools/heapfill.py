"""Byte-reproducible encodes: FFmpeg's libx264 path reads heap memory nobody wrote.

Measured (bench/pack/RESULTS.md, "Reproducible bytes"): encoding the same 32 yuv420p frames 600
times in one process gave 2-7 different outputs (0.5-10% of the encodes deviated), in a pattern
set by what the process allocated before; the same loop was byte-identical all 600 times, and
equal to the usual output, once glibc filled every newly allocated block with a fixed byte
(M_PERTURB). So every process that encodes asks for that once. glibc only: elsewhere
`fill_new_heap_blocks` does nothing and returns False.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_PERTURB = -6  # glibc mallopt parameter: fill allocated blocks with ~byte and freed ones with byte
PERTURB_BYTE = 0x5A


@functools.cache
def fill_new_heap_blocks() -> bool:
    """Have glibc fill every block malloc hands out with a fixed byte, for the rest of this process.

    Returns False where that is unavailable (not glibc); encodes then stay correct but are not
    guaranteed to be byte-identical from run to run.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_PERTURB, PERTURB_BYTE))
    except (OSError, AttributeError):
        return False
