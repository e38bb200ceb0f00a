"""Advisory file locks: the writer lock and the lease that ``cache gc`` honours.

Both are ``flock`` locks on small files inside a store, so the kernel drops them when the holder
dies (no stale lock files after a SIGKILL) and they work across processes on one host and on a
shared POSIX file system that supports ``flock`` (NFS v4 maps it to byte-range locks).

- writer lock: exclusive, held only for the short metadata steps (row reservation, index commit).
- lease: shared, held by every process that writes or reads the store for its whole run;
  gc takes it exclusively without waiting, so a store under lease is never collected. On object
  storage, which has no locks, the lease is a heartbeat object instead (see "store leases" below).
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
import uuid
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


# ------------------------------------------------------------------------------------ store leases
# A lease says "a process is using (or creating) store FP": gc and compact never take a leased
# store. It lives beside the store, not in it, so it can be held before the store's directory
# exists: gc can then never delete a store an extract is in the middle of creating.
#
# Locally it is a shared flock on <root>/.locks/<fp>.lease (dropped by the kernel when the holder
# dies). Object storage has no locks, so there every party writes a heartbeat object under
# .leases/<fp>/ and rewrites it every HEARTBEAT_SECONDS while it holds the lease:
#
#   <hex>.json            a holder (extract, a dask task, train, evaluate, verify): shared
#   deleting-<hex>.json   a gc or a compaction: exclusive
#
# A heartbeat younger than STALE_SECONDS counts; an older one is a dead (or cut-off) party's and is
# ignored, so a killed process blocks nothing for longer than that. Exclusive first writes its
# marker, then lists: any other fresh heartbeat (holder or marker) means the store is in use. A
# holder first writes its heartbeat, then lists, and waits while a fresh marker is there. Whichever
# order the two interleave in, one of them sees the other (S3 reads and listings are strongly
# consistent after a write). Freshness compares the writer's clock with the reader's: hosts must
# agree on the time to well within STALE_SECONDS - HEARTBEAT_SECONDS (NTP does).

HEARTBEAT_SECONDS = 10.0
STALE_SECONDS = 60.0
WAIT_SECONDS = 1.0  # how often a holder looks again while a gc or compaction has the store
LEASES = ".leases"
DELETING = "deleting-"  # name prefix of an exclusive party's heartbeat


def _lease_file(storage, fp: str) -> Path:
    folder = storage.local_path / ".locks"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{fp}.lease"


def _write_heartbeat(storage, key: str) -> None:
    storage.write(key, json.dumps({"heartbeat": time.time(), "pid": os.getpid()}).encode())


def _fresh(data: bytes | None, now: float) -> bool:
    try:
        return data is not None and now - float(json.loads(data)["heartbeat"]) < STALE_SECONDS
    except (ValueError, KeyError, TypeError):
        return False  # garbled (or written by something else): no one keeps it fresh


def _heartbeats(storage, fp: str, mine: str | None = None, markers_only: bool = False) -> tuple[list[str], list[str]]:
    """(fresh, stale) heartbeat keys of store ``fp``, ``mine`` left out (and holders' too with
    ``markers_only``); the heartbeats are read concurrently."""
    keys = [k for k in storage.list(f"{LEASES}/{fp}/") if k != mine and (_is_marker(k) or not markers_only)]
    now = time.time()
    fresh, stale = [], []
    for key, data in zip(keys, storage.read_many(keys)):
        (fresh if _fresh(data, now) else stale).append(key)
    return fresh, stale


def _is_marker(key: str) -> bool:
    return key.rsplit("/", 1)[-1].startswith(DELETING)


@contextmanager
def _heartbeat(storage, key: str) -> Iterator[None]:
    """Write heartbeat ``key`` now and every HEARTBEAT_SECONDS until the block ends, then delete it."""
    _write_heartbeat(storage, key)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            try:
                _write_heartbeat(storage, key)
            except Exception:  # a network blip: the next beat retries (STALE_SECONDS allows several misses)
                continue

    thread = threading.Thread(target=beat, daemon=True, name="msgvip-lease")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        storage.delete(key)


@contextmanager
def store_lease(storage, fp: str) -> Iterator[None]:
    """Hold a shared lease on store ``fp`` of ``storage`` for the block (see above); on object
    storage, first wait while a gc or compaction has the store."""
    if storage.is_local:
        with file_lock(_lease_file(storage, fp), shared=True, timeout=None):
            yield
        return
    key = f"{LEASES}/{fp}/{uuid.uuid4().hex}.json"
    with _heartbeat(storage, key):
        while _heartbeats(storage, fp, mine=key, markers_only=True)[0]:
            time.sleep(WAIT_SECONDS)  # a gc is deleting this store: let it finish, then (re)create it
        yield


@contextmanager
def exclusive_store_lease(storage, fp: str) -> Iterator[bool]:
    """Try to take store ``fp`` for deletion or compaction without waiting: yields True when no one
    holds a lease (and no one can take one until the block ends), False when it is in use."""
    if storage.is_local:
        fd = try_exclusive(_lease_file(storage, fp))
        try:
            yield fd is not None
        finally:
            if fd is not None:
                os.close(fd)
        return
    marker = f"{LEASES}/{fp}/{DELETING}{uuid.uuid4().hex}.json"
    with _heartbeat(storage, marker):
        fresh, stale = _heartbeats(storage, fp, mine=marker)
        if not fresh:
            for key in stale:  # dead parties' heartbeats: nothing else would ever remove them
                storage.delete(key)
        yield not fresh


def store_in_use(storage, fp: str) -> bool:
    """Whether a lease on store ``fp`` is held now (a look only: it takes nothing)."""
    if storage.is_local:
        with exclusive_store_lease(storage, fp) as free:
            return not free
    return bool(_heartbeats(storage, fp)[0])
