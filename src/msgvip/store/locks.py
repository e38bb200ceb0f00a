"""Advisory file locks: the writer lock and the lease that ``cache gc`` honours.

Both are ``flock`` locks on small files inside a store, so the kernel drops them when the holder
dies (no stale lock files after a SIGKILL) and they work across processes on one host and on a
shared POSIX file system that supports ``flock`` (NFS v4 maps it to byte-range locks).

- writer lock: exclusive, held only for the short metadata steps (row reservation, index commit).
- lease: shared, held by every process that writes or reads the store for its whole run;
  gc takes it exclusively without waiting, so a store under lease is never collected.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class LockTimeout(TimeoutError):
    pass


@contextmanager
def file_lock(path: Path, *, shared: bool = False, timeout: float | None = 600.0) -> Iterator[None]:
    """Hold an flock on ``path`` (created if missing); raise LockTimeout after ``timeout`` s."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise LockTimeout(f"could not lock {path} within {timeout:.0f} s: another msgvip process holds it") from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def try_exclusive(path: Path) -> int | None:
    """Take an exclusive lock without waiting; return the open fd (close it to release) or None."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
