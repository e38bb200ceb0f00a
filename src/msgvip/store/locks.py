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
from contextlib import ExitStack, contextmanager
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
# store. It starts beside the store, not in it, so it can be held before the store's directory
# exists: gc can then never delete a store an extract is in the middle of creating.
#
# Locally it is a shared flock on <root>/.locks/<fp>.lease and, once the store exists, a shared
# flock on the store's directory itself (both dropped by the kernel when the holder dies). A lock
# follows the inode, not the name: a tmp cleaner that unlinks the lease file leaves its holders
# locking a file nobody else can find, but the directory cannot be unlinked while it holds the
# store, so gc and compact, which need both locks exclusively, still find every holder.
#
# Object storage has no locks, so there every party writes a heartbeat object under .leases/<fp>/
# and rewrites it every HEARTBEAT_SECONDS while it holds the lease:
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
#
# A holder cut off from the store for longer than that (a network partition) may have been taken
# for dead, and the store compacted or deleted meanwhile: once no beat has landed for
# STALE_SECONDS - HEARTBEAT_SECONDS, its lease is lost for good (it never beats again), and a
# writer checks its lease (:func:`check_lease`) before each commit, failing instead of committing.

HEARTBEAT_SECONDS = 10.0
STALE_SECONDS = 60.0
WAIT_SECONDS = 1.0  # how often a holder looks again while a gc or compaction has the store
LEASES = ".leases"
DELETING = "deleting-"  # name prefix of an exclusive party's heartbeat


class LeaseLost(RuntimeError):
    """A lease its holder can no longer trust: the store may have been compacted or removed."""


def _lease_file(storage, fp: str) -> Path:
    folder = storage.local_path / ".locks"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{fp}.lease"


def _lock_directory(path: Path, mode: int) -> int | None:
    """An fd of directory ``path`` holding flock ``mode`` (non-blocking); None when it is not
    there; BlockingIOError when another process holds a conflicting lock."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise
    return fd


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


class _Heartbeat:
    """Heartbeat object ``key``, written now and every HEARTBEAT_SECONDS from a thread until
    :meth:`stop`, then deleted. ``lost`` says why it can no longer be trusted, if it cannot."""

    def __init__(self, storage, key: str):
        self.storage, self.key = storage, key
        _write_heartbeat(storage, key)
        self.landed = time.monotonic()  # the last beat known written
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="msgvip-lease")
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            sent = time.monotonic()
            if self.overdue(sent):
                break  # others may have taken it for dead: beating again would hide that
            try:
                _write_heartbeat(self.storage, self.key)
            except Exception:  # a network blip: the next beat retries (STALE_SECONDS allows several misses)
                continue
            if self.overdue(sent):  # it landed, but too late: it says "alive at `sent`", after a gap others may have acted in
                break
            self.landed = sent  # the time the beat says, not when it arrived
        else:
            return  # stopped
        self._lose()

    def overdue(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) - self.landed >= STALE_SECONDS - HEARTBEAT_SECONDS

    def _lose(self) -> None:
        self.lost = f"no heartbeat landed in time for {time.monotonic() - self.landed:.0f} s (a network partition?)"

    def check(self) -> None:
        """Raise LeaseLost unless the heartbeat is fresh and still in the store."""
        if self.lost is None and self.overdue():
            self._lose()
        if self.lost is None and self.storage.read(self.key) is None:
            self.lost = "its heartbeat was removed by a gc or compaction that took it for dead"
        if self.lost is not None:
            raise LeaseLost(self.lost)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self.storage.delete(self.key)
        except Exception:  # cut off still: the heartbeat goes stale within STALE_SECONDS and then blocks no one
            if self.lost is None:
                raise


class Lease:
    """A shared lease on one store, held by this process (see above): :func:`store_lease`."""

    def __init__(self, storage, fp: str):
        self.storage, self.fp = storage, fp
        self._held = ExitStack()  # what releases it: the locks' descriptors, the heartbeat
        self._directory_locked = False  # local: the store directory's flock, once the store exists
        self._heartbeat: _Heartbeat | None = None  # object storage

    def _acquire(self) -> None:
        if self.storage.is_local:
            self._held.enter_context(file_lock(_lease_file(self.storage, self.fp), shared=True, timeout=None))  # waits while a gc or compaction holds it
            self._lock_store_directory()
            return
        self._heartbeat = _Heartbeat(self.storage, f"{LEASES}/{self.fp}/{uuid.uuid4().hex}.json")
        self._held.callback(self._heartbeat.stop)
        while _heartbeats(self.storage, self.fp, mine=self._heartbeat.key, markers_only=True)[0]:
            time.sleep(WAIT_SECONDS)  # a gc is deleting this store: let it finish, then (re)create it

    def _lock_store_directory(self) -> None:
        while not self._directory_locked:
            try:
                fd = _lock_directory(self.storage.local_path / self.fp, fcntl.LOCK_SH)
            except BlockingIOError:
                time.sleep(WAIT_SECONDS / 10)  # a gc or compaction has the store: it ends soon
                continue
            if fd is None:
                return  # no store yet: locked once it exists (check)
            self._held.callback(os.close, fd)  # closing the descriptor releases the lock
            self._directory_locked = True

    def check(self) -> None:
        """Raise LeaseLost if the lease can no longer be trusted; locally, also lock the store's
        directory once it exists (a writer that created the store)."""
        if self._heartbeat is not None:
            self._heartbeat.check()
        else:
            self._lock_store_directory()

    def _release(self) -> None:
        self._held.close()


_held: dict[tuple[str, str], list[Lease]] = {}  # the leases this process holds, by (cache root, fingerprint)
_exclusive: set[tuple[str, str]] = set()  # the stores this process holds exclusively
_held_guard = threading.Lock()


@contextmanager
def store_lease(storage, fp: str) -> Iterator[Lease]:
    """Hold a shared lease on store ``fp`` of ``storage`` for the block (see above); first wait
    while a gc or compaction has the store."""
    lease = Lease(storage, fp)
    try:
        lease._acquire()
    except BaseException:  # interrupted while waiting out a gc: the heartbeat thread and the locks go too
        lease._release()
        raise
    with _held_guard:
        _held.setdefault((storage.url, fp), []).append(lease)
    try:
        yield lease
    finally:
        with _held_guard:
            _held[(storage.url, fp)].remove(lease)
        lease._release()


def check_lease(storage, fp: str) -> None:
    """Before a commit: raise LeaseLost if a lease this process holds on the store is lost (a
    writer holding none checks nothing)."""
    with _held_guard:
        if (storage.url, fp) in _exclusive:
            return  # this process has the store to itself (a compaction's own writer)
        leases = list(_held.get((storage.url, fp), []))
    for lease in leases:
        try:
            lease.check()
        except LeaseLost as err:
            raise LeaseLost(f"{storage.child_url(fp)}: this process's lease on the store is lost ({err}); a gc or compaction may have "
                            "taken the store meanwhile, so nothing more was committed: rerun the command") from None


@contextmanager
def exclusive_store_lease(storage, fp: str) -> Iterator[bool]:
    """Try to take store ``fp`` for deletion or compaction without waiting: yields True when no one
    holds a lease (and no one can take one until the block ends), False when it is in use."""
    if storage.is_local:
        fds, free = [], False
        try:
            fd = try_exclusive(_lease_file(storage, fp))
            if fd is not None:
                fds.append(fd)
                try:
                    directory = _lock_directory(storage.local_path / fp, fcntl.LOCK_EX)
                    free = True
                    if directory is not None:
                        fds.append(directory)
                except BlockingIOError:
                    pass  # a holder whose lease file was unlinked still locks the store itself
            with _holding_exclusively(storage, fp, free):
                yield free
        finally:
            for fd in fds:
                os.close(fd)
        return
    marker = _Heartbeat(storage, f"{LEASES}/{fp}/{DELETING}{uuid.uuid4().hex}.json")
    try:
        fresh, stale = _heartbeats(storage, fp, mine=marker.key)
        if not fresh:
            for key in stale:  # dead parties' heartbeats: nothing else would ever remove them
                storage.delete(key)
        with _holding_exclusively(storage, fp, not fresh):
            yield not fresh
    finally:
        marker.stop()


@contextmanager
def _holding_exclusively(storage, fp: str, held: bool) -> Iterator[None]:
    if not held:
        yield
        return
    with _held_guard:
        _exclusive.add((storage.url, fp))
    try:
        yield
    finally:
        with _held_guard:
            _exclusive.discard((storage.url, fp))


def store_in_use(storage, fp: str) -> bool:
    """Whether a lease on store ``fp`` is held now (a look only: it takes nothing)."""
    if storage.is_local:
        with exclusive_store_lease(storage, fp) as free:
            return not free
    return bool(_heartbeats(storage, fp)[0])
