"""Whole-file writes that a crash or a concurrent reader never sees half done."""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=None)
def _umask() -> int:
    """The process umask, read once: os.umask can only be read by setting it, so it is set to the
    strictest mask for that instant (a file another thread creates meanwhile is never left more open
    than intended) and restored at once."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def plain_file_mode() -> int:
    """The mode a plain `open(path, "w")` gives a new file: 0o666 less the umask."""
    return 0o666 & ~_umask()


def give_plain_mode(path: str | Path) -> None:
    """Set `path` to the mode a plain open() would have given it. Writers that go through a
    temporary file (tempfile.mkstemp, or libraries such as safetensors that use it) leave 0o600,
    which other users on a shared machine cannot read."""
    os.chmod(path, plain_file_mode())


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Replace `path` by `text`: written to a temporary file in the same folder, flushed to disk, then
    renamed over `path`, so the file is always either the old one or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
