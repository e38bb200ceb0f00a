"""Which run directories use a store: small reference records in the cache root, so that
`cache gc` spares a store a run still needs and `cache ls` shows how many need each.

A consumer (``msgvip train``) registers its directory with :func:`add_reference`; the record is
``<root>/.refs/<fingerprint>/<digest of host and path>.json`` (``.refs`` is no fingerprint, so no
listing takes it for a store). A reference whose directory is gone from this host is pruned when
the references are read; one from another host is kept, since only that host can tell.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import xxhash

from .storage import Storage

REFS_DIR = ".refs"
MARKER = "config.json"  # what a registered directory holds while it lives


@dataclass(frozen=True)
class Reference:
    path: str  # the directory, absolute
    host: str
    dataset: str | None
    time: float  # when it registered

    @property
    def here(self) -> bool:
        return self.host == socket.gethostname()

    @property
    def alive(self) -> bool:
        """Whether the directory still holds what it registered (always true for another host's)."""
        return not self.here or (Path(self.path) / MARKER).is_file()


def _key(fp: str, path: str, host: str) -> str:
    return f"{REFS_DIR}/{fp}/{xxhash.xxh64_hexdigest(f'{host}:{path}'.encode())}.json"


def add_reference(root: Storage, fp: str, directory: str | os.PathLike, dataset: str | None = None) -> Reference:
    """Record that ``directory`` uses store ``fp`` (again: the record is replaced)."""
    ref = Reference(str(Path(directory).absolute()), socket.gethostname(), dataset, time.time())
    root.write(_key(fp, ref.path, ref.host), json.dumps(asdict(ref)).encode())
    return ref


def references(root: Storage, fp: str, prune: bool = True) -> list[Reference]:
    """The live references to store ``fp``, oldest first; with ``prune``, records of directories
    gone from this host are removed. Records that cannot be read are skipped (and pruned)."""
    found = []
    for name in root.list_dir(f"{REFS_DIR}/{fp}"):
        key = f"{REFS_DIR}/{fp}/{name}"
        try:
            ref = Reference(**json.loads(root.read(key) or b""))
        except (ValueError, TypeError):
            ref = None
        if ref is not None and ref.alive:
            found.append(ref)
        elif prune:
            root.delete(key)
    return sorted(found, key=lambda r: r.time)


def drop_references(root: Storage, fp: str) -> None:
    """Remove every reference to store ``fp`` (the store itself is being removed)."""
    root.delete_prefix(f"{REFS_DIR}/{fp}")
