"""Where a cache root lives: a local folder or an object-store prefix, behind one small interface.

Everything msgvip writes, feature chunks and bookkeeping alike, goes through zarr's own store
classes (``LocalStore`` on disk, ``FsspecStore`` for ``s3://`` and the like), so local disk and
object storage share one code path. The protocol above it needs only what both offer: a write of
one key is atomic (zarr's LocalStore writes a temporary file and renames it; an object PUT is
atomic), keys can be listed by prefix, and a key can be deleted. No appends, no renames, no locks.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore


class StorageError(Exception):
    """A cache root that cannot be used as given; the message names it and the fix."""


OBJECT_SCHEMES = ("s3",)  # schemes tested here; fsspec knows more, but untested ones are refused


class Storage:
    """Sync key-value access to one cache root (keys are ``/``-separated, relative to the root)."""

    def __init__(self, url: str, zarr_store: zarr.abc.store.Store, local_path: Path | None, options: Mapping[str, str]):
        self.url = url
        self.zarr_store = zarr_store
        self.local_path = local_path  # None on object storage
        self.options = dict(options)

    @property
    def is_local(self) -> bool:
        return self.local_path is not None

    def __repr__(self) -> str:
        return f"Storage({self.url!r})"

    def __reduce__(self):  # dask ships a Storage to its workers: rebuild it there from the URL
        return open_storage, (self.url, self.options)

    def child_url(self, key: str) -> str:
        return f"{self.url.rstrip('/')}/{key}"

    def read(self, key: str) -> bytes | None:
        """The bytes at ``key``, or None when there is no such key."""
        buffer = sync(self.zarr_store.get(key, prototype=default_buffer_prototype()))
        return None if buffer is None else buffer.to_bytes()

    def write(self, key: str, data: bytes) -> None:
        """Replace ``key`` with ``data`` atomically: a reader sees the old bytes or the new, never a mix."""
        sync(self.zarr_store.set(key, default_buffer_prototype().buffer.from_bytes(data)))

    def delete(self, key: str) -> None:
        sync(self.zarr_store.delete(key))

    def delete_prefix(self, prefix: str) -> None:
        sync(self.zarr_store.delete_dir(prefix.rstrip("/")))

    def list(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (recursively), sorted."""
        from zarr.core.sync import collect_aiterator

        return sorted(collect_aiterator(self.zarr_store.list_prefix(prefix)))

    def list_dir(self, prefix: str) -> list[str]:
        """Names directly under ``prefix`` (files and folders), sorted."""
        from zarr.core.sync import collect_aiterator

        return sorted(collect_aiterator(self.zarr_store.list_dir(prefix.rstrip("/"))))

    def size(self, prefix: str) -> int:
        """Bytes stored under ``prefix``."""
        if self.local_path is not None:
            return _directory_size(self.local_path / prefix)
        fs = self.zarr_store.fs
        return int(sum(sync(fs._du(f"{self.zarr_store.path}/{prefix}", total=False)).values())) if self.list(prefix) else 0


def _directory_size(path: Path) -> int:
    """Bytes of the regular files under ``path``, never following symlinks."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            full = os.path.join(dirpath, name)
            total += 0 if os.path.islink(full) else os.lstat(full).st_size
    return total


def parse_storage_options(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``key=value`` strings (``--storage-option``) as a dict; a malformed one is an error naming it."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise StorageError(f"--storage-option {pair!r}: expected key=value, e.g. endpoint_url=http://127.0.0.1:9000")
        options[key.strip()] = value
    return options


_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)")


def open_storage(root: str | os.PathLike, options: Mapping[str, str] | None = None) -> Storage:
    """The storage of a cache root: a local path (or ``file://`` URL), or ``s3://bucket/prefix``.

    Object-store credentials and endpoint come from the usual AWS variables (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``) or from ``options`` (``endpoint_url``,
    ``key``, ``secret``, ... as s3fs names them).
    """
    text = os.fspath(root)
    match = _URL.fullmatch(text)
    if match is None:
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:/", text) and not text.startswith("/"):
            raise StorageError(f"cache root {text!r}: looks like a URL with one slash; write {text.split(':', 1)[0]}://... (two slashes)")
        path = Path(text).expanduser()
        return Storage(str(path), LocalStore(path), path, {})
    scheme, rest = match["scheme"].lower(), match["rest"]
    if scheme == "file":
        path = Path(rest).expanduser()
        if not path.is_absolute():
            raise StorageError(f"cache root {text!r}: a file:// URL needs an absolute path (file:///path/to/cache)")
        return Storage(str(path), LocalStore(path), path, {})
    if scheme not in OBJECT_SCHEMES:
        raise StorageError(f"cache root {text!r}: {scheme}:// is not supported; use a local path, file:///path or s3://bucket/prefix")
    bucket = rest.split("/", 1)[0]
    if not bucket:
        raise StorageError(f"cache root {text!r}: no bucket name; write s3://bucket/prefix")
    storage_options = {**_aws_environment(), **(options or {})}
    client_kwargs = {}
    if "endpoint_url" in storage_options:
        client_kwargs["endpoint_url"] = storage_options.pop("endpoint_url")
    if "region_name" in storage_options:
        client_kwargs["region_name"] = storage_options.pop("region_name")
    try:
        store = FsspecStore.from_url(text.rstrip("/"), storage_options={**storage_options, "client_kwargs": client_kwargs})
    except ImportError:
        raise StorageError(f"cache root {text!r}: object storage needs s3fs (pip install s3fs)") from None
    return Storage(text.rstrip("/"), store, None, options or {})


def _aws_environment() -> dict[str, str]:
    # s3fs reads the key and secret from the environment itself; the endpoint it does not.
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return {"endpoint_url": endpoint} if endpoint else {}
