"""A stat cache: (path, size, mtime) -> clip content hash, so a rerun on unchanged files skips
reading them. Shared by every store under one cache root (a content hash does not depend on the
extraction config). SQLite gives safe concurrent use from several processes."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from .feature_store import StoreError

HASH_CACHE_FILE = "content-hashes.sqlite"


class HashCache:
    def __init__(self, cache_root: Path):
        Path(cache_root).mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm", "-journal"):
            if (Path(cache_root) / (HASH_CACHE_FILE + suffix)).is_symlink():
                raise StoreError(f"{Path(cache_root) / (HASH_CACHE_FILE + suffix)}: a symlink; refusing to write through it")
        # Writes are batched in one transaction per run (committed on close): losing them to a
        # crash only costs a re-hash next time.
        self._db = sqlite3.connect(Path(cache_root) / HASH_CACHE_FILE, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS hashes (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, digest TEXT)"
        )
        self._db.commit()

    @staticmethod
    def stat(path: Path) -> tuple[int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_size, st.st_mtime_ns

    def get(self, path: Path) -> str | None:
        """The recorded hash if the file's size and mtime are unchanged since it was recorded."""
        stat = self.stat(path)
        if stat is None:
            return None
        row = self._db.execute("SELECT size, mtime_ns, digest FROM hashes WHERE path = ?", (str(Path(path).resolve()),)).fetchone()
        return row[2] if row is not None and tuple(row[:2]) == stat else None

    def put(self, path: Path, stat: tuple[int, int], digest: str) -> None:
        """Record ``digest`` for ``path`` as it was at ``stat`` (taken before the file was read)."""
        self._db.execute(
            "INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?)", (str(Path(path).resolve()), *stat, digest)
        )

    def close(self) -> None:
        self._db.commit()
        self._db.close()
