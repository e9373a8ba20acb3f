"""One job at a time writes a folder: an exclusive, non-blocking `flock` on a lock file in it.

Used by the pack tool for its output folder and by the trainer for its run folder: two jobs writing
one folder would interleave their files (a packed set, or checkpoints and metrics of two runs)."""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
import warnings
from pathlib import Path


class FolderLocked(ValueError):
    """Another job holds the folder's lock."""


class FolderLock:
    """An exclusive, non-blocking `flock` on `folder/name`, held for a whole job (a context manager).
    A second job on the same folder fails at once with an error naming the folder and the holder
    (pid, host, start time, as the holder wrote them into the file).

    The lock dies with its process, so a file left by a crash (kill -9) blocks nothing. A job that
    ends removes the file while still holding the lock, so a finished folder holds no file of it; a
    job that opened the old file meanwhile notices (the path then names another file or none) and
    retries on the new one, so two jobs never both hold "the" lock.

    In a folder this process may not write (a finished set on read-only storage) no lock is taken
    (`held` stays False): no job of ours can write there, and anything it tried would fail on its
    first write. A filesystem without `flock` (some Lustre mounts) is warned about, not refused.
    """

    def __init__(self, folder: Path, name: str, job: str, advice: str):
        self.folder = Path(folder)
        self.path = self.folder / name
        self.job, self.advice = job, advice
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                    return  # read-only folder: see the class docstring
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
                os.close(fd)
                raise FolderLocked(
                    f"{self.folder} is being written by another {self.job} "
                    f"({holder or 'its pid/host not recorded yet'}; lock file {self.path}): {self.advice}") from None
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                    warnings.warn(f"{self.folder}: this filesystem cannot lock files ({exc.strerror}); nothing "
                                  f"stops a second {self.job} from writing the same folder")
                    return
                raise
            except BaseException:
                os.close(fd)
                raise
            try:
                current = os.stat(self.path)
                same = (current.st_dev, current.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed the file between our open and flock: lock the path's file now
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}, since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S %z')}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still held: see the class docstring
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
