"""A stat cache: a file's identity on disk -> its clip content hash and labels, so a rerun on
unchanged files skips reading them. Shared by every store under one cache root (a content hash
does not depend on the extraction config). SQLite gives safe concurrent use from several processes.

A file counts as unchanged only when its path, size, mtime, inode and ctime all match. ctime
cannot be set from user space, so a file rewritten with the same size and a restored mtime
(``touch -d``, ``rsync -t``, ``cp -p``) is still seen as changed.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from .feature_store import StoreError

HASH_CACHE_FILE = "content-hashes-v2.sqlite"

FileStat = tuple[int, int, int, int]  # size, mtime_ns, inode, ctime_ns


class HashCache:
    def __init__(self, folder: Path):
        Path(folder).mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm", "-journal"):
            if (Path(folder) / (HASH_CACHE_FILE + suffix)).is_symlink():
                raise StoreError(f"{Path(folder) / (HASH_CACHE_FILE + suffix)}: a symlink; refusing to write through it")
        # Autocommit: every write is its own short transaction, so another extract on the same
        # cache root never waits on this one for more than one row (a transaction held for a
        # whole run made the second run fail with "database is locked" after a minute).
        self._db = sqlite3.connect(Path(folder) / HASH_CACHE_FILE, timeout=60, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # a lost row after a power cut costs one re-hash
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS hashes (path BLOB PRIMARY KEY, size INTEGER, mtime_ns INTEGER, inode INTEGER, "
            "ctime_ns INTEGER, digest TEXT, target INTEGER, scene BLOB)"
        )

    @staticmethod
    def stat(path: Path) -> FileStat | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns

    @staticmethod
    def _key(path: Path) -> bytes:
        return os.fsencode(Path(path).resolve())  # bytes: a file name need not be valid UTF-8

    def get(self, path: Path) -> tuple[str, int, str] | None:
        """(digest, target, scene) recorded for ``path`` if the file is unchanged since."""
        stat = self.stat(path)
        if stat is None:
            return None
        row = self._db.execute(
            "SELECT size, mtime_ns, inode, ctime_ns, digest, target, scene FROM hashes WHERE path = ?", (self._key(path),)
        ).fetchone()
        return (row[4], row[5], row[6].decode("utf-8", "surrogateescape")) if row is not None and tuple(row[:4]) == stat else None

    def put(self, path: Path, stat: FileStat | None, digest: str, target: int, scene: str) -> None:
        """Record what ``path`` held when it was ``stat`` (taken before the file was read)."""
        if stat is None:
            return
        self._db.execute("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (self._key(path), *stat, digest, target, scene.encode("utf-8", "surrogateescape")))

    def close(self) -> None:
        self._db.close()
