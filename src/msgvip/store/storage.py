"""Where a cache root lives: a local folder or an object-store prefix, behind one small interface.

Everything msgvip writes, feature chunks and bookkeeping alike, goes through zarr's own store
classes (``LocalStore`` on disk, ``FsspecStore`` for ``s3://`` and the like), so local disk and
object storage share one code path. The protocol above it needs only what both offer: a write of
one key is atomic (zarr's LocalStore writes a temporary file and renames it; an object PUT is
atomic), keys can be listed by prefix, and a key can be deleted. No appends, no renames, no locks.
On local disk, reads and listings of whole keys go to the file system directly: the same bytes,
without a hop to zarr's I/O thread per call (opening a store reads and lists several documents).
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore


class StorageError(Exception):
    """A cache root that cannot be used as given; the message names it and the fix."""


OBJECT_SCHEMES = ("s3",)  # schemes tested here; fsspec knows more, but untested ones are refused
FSSPEC_DEFAULTS = {
    # Other processes write the same prefixes (dask workers, a concurrent extract, gc): a listing
    # s3fs kept from earlier would hide their stores, commits and lease heartbeats.
    "use_listings_cache": False,
    # Above 1, s3fs asks for an object's size (a HEAD) before every read, to split large objects
    # into ranged GETs; chunks and records are far smaller, so that doubled the requests per read.
    "max_concurrency": 1,
}
BOOLEAN_OPTIONS = ("anon", "use_ssl", "requester_pays", "version_aware", "use_listings_cache")  # s3fs's, given as text
# A stalled connection (not a cut one) waited for ever: every request now gives up after these
# seconds without a byte, twice at most (botocore), and s3fs retries it once; the command then
# ends with one line naming the root. ``--storage-option read_timeout=120`` for slow links.
TIMEOUTS = {"connect_timeout": 10.0, "read_timeout": 30.0}
S3FS_RETRIES = 2
ENDPOINT_HINT = (
    "check the endpoint (AWS_ENDPOINT_URL or --storage-option endpoint_url=...) and the credentials "
    "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or --storage-option key=... --storage-option secret=...)"
)


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

    def zarr_store_at(self, prefix: str) -> zarr.abc.store.Store:
        """A zarr store rooted at ``prefix``. Creating an array makes zarr read (and write) every
        parent group's zarr.json up to its store's root: rooted here, it never touches the cache
        root or the store's own folder, and their files never break it."""
        if self.local_path is not None:
            return LocalStore(self.local_path / prefix)
        return FsspecStore(self.zarr_store.fs, path=f"{self.zarr_store.path.rstrip('/')}/{prefix}", allowed_exceptions=self.zarr_store.allowed_exceptions)

    def read(self, key: str) -> bytes | None:
        """The bytes at ``key``, or None when there is no such key."""
        if self.local_path is not None:
            return _read_file(self.local_path / key)
        buffer = self._sync(self.zarr_store.get(key, prototype=default_buffer_prototype()), key)
        return None if buffer is None else buffer.to_bytes()

    def read_many(self, keys: Sequence[str], concurrency: int = 64) -> list[bytes | None]:
        """The bytes of each of ``keys`` in order (None where missing), up to ``concurrency`` reads
        at a time: on object storage every read is a round trip, and opening a store reads each
        of its commit records."""
        if self.local_path is not None:
            return [_read_file(self.local_path / key) for key in keys]

        async def read_all() -> list:
            limit = asyncio.Semaphore(concurrency)

            async def one(key: str):
                async with limit:
                    return await self.zarr_store.get(key, prototype=default_buffer_prototype())

            return await asyncio.gather(*(one(key) for key in keys))

        return [None if buffer is None else buffer.to_bytes() for buffer in self._sync(read_all(), "")]

    def write(self, key: str, data: bytes) -> None:
        """Replace ``key`` with ``data`` atomically: a reader sees the old bytes or the new, never a mix."""
        self._sync(self.zarr_store.set(key, default_buffer_prototype().buffer.from_bytes(data)), key)

    def delete(self, key: str) -> None:
        self._sync(self.zarr_store.delete(key), key)

    def delete_prefix(self, prefix: str) -> None:
        self._sync(self.zarr_store.delete_dir(prefix.rstrip("/")), prefix)

    def list(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (recursively), sorted."""
        if self.local_path is not None:
            top = self.local_path / prefix
            return sorted(
                os.path.relpath(os.path.join(folder, name), self.local_path).replace(os.sep, "/")
                for folder, _, names in os.walk(top) for name in names
            )  # fmt: skip
        return sorted(self._sync(_collect(self.zarr_store.list_prefix(prefix)), prefix))

    def list_dir(self, prefix: str) -> list[str]:
        """Names directly under ``prefix`` (files and folders), sorted."""
        if self.local_path is not None:
            try:
                return sorted(os.listdir(self.local_path / prefix))
            except (FileNotFoundError, NotADirectoryError):
                return []
        return sorted(self._sync(_collect(self.zarr_store.list_dir(prefix.rstrip("/"))), prefix))

    def _sync(self, awaitable, key: str):
        """Run one store call; an object store that cannot be reached or refuses the credentials
        is a StorageError naming the root and the fix, not a botocore traceback."""
        try:
            return sync(awaitable)
        except object_store_errors() as err:
            raise StorageError(f"{self.child_url(key) if key else self.url}: {type(err).__name__}: {err}; {ENDPOINT_HINT}") from err

    def size(self, prefix: str) -> int:
        """Bytes stored under ``prefix`` (0 when there is nothing); one listing on object storage."""
        if self.local_path is not None:
            return _directory_size(self.local_path / prefix)
        try:
            folder = "/".join(part for part in (self.zarr_store.path, prefix.strip("/")) if part)
            found = self._sync(self.zarr_store.fs._find(folder + "/", detail=True), prefix)
        except FileNotFoundError:
            return 0
        return sum(int(info.get("size") or 0) for info in found.values())


def _read_file(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def _directory_size(path: Path) -> int:
    """Bytes of the regular files under ``path``, never following symlinks."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue  # renamed or removed by a writer while we walked
            total += 0 if stat.S_ISLNK(st.st_mode) else st.st_size
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
    storage_options = {**FSSPEC_DEFAULTS, **_aws_environment(), **{k: _typed(k, v) for k, v in (options or {}).items()}}
    timeouts = {k: storage_options.pop(k, default) for k, default in TIMEOUTS.items()}
    storage_options.setdefault("session", _session_without_expect())
    storage_options["config_kwargs"] = {**timeouts, "retries": {"max_attempts": 2, "mode": "standard"}, **storage_options.get("config_kwargs", {})}
    client_kwargs = {}
    if "endpoint_url" in storage_options:
        client_kwargs["endpoint_url"] = storage_options.pop("endpoint_url")
    if "region_name" in storage_options:
        client_kwargs["region_name"] = storage_options.pop("region_name")
    try:
        store = FsspecStore.from_url(text.rstrip("/"), storage_options={**storage_options, "client_kwargs": client_kwargs})
    except ImportError:
        raise StorageError(f"cache root {text!r}: object storage needs s3fs (pip install s3fs)") from None
    store.fs.retries = S3FS_RETRIES  # a class attribute of s3fs (5), not an option
    storage = Storage(text.rstrip("/"), store, None, options or {})
    _check_bucket(storage, bucket)
    return storage


def _session_without_expect():
    """An aiobotocore session whose S3 requests never ask ``Expect: 100-continue``: aiohttp waits
    for the 100 Continue with no timeout at all, so a PUT on a stalled connection (a partition)
    hung for ever while GETs timed out as configured. Without it the body goes with the headers."""
    import aiobotocore.session

    session = aiobotocore.session.AioSession()
    session.register("before-send.s3", _drop_expect)
    return session


def _drop_expect(request, **kwargs) -> None:
    request.headers.pop("Expect", None)


async def _collect(keys) -> list[str]:
    return [key async for key in keys]


def object_store_errors() -> tuple[type[Exception], ...]:
    """botocore's own errors (no endpoint, no credentials, a refused request s3fs passes through);
    s3fs turns most others into OSErrors already."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # no s3fs, so no object storage either
        return ()
    return (BotoCoreError, ClientError)


def _check_bucket(storage: Storage, bucket: str) -> None:
    """Fail now, naming the root, when the bucket does not exist (an empty listing would otherwise
    read as an empty cache). A bucket the credentials may not look at passes: the prefix may
    still be theirs."""
    try:
        storage._sync(storage.zarr_store.fs._info(bucket), "")
    except FileNotFoundError:
        raise StorageError(f"cache root {storage.url}: bucket {bucket!r} does not exist at this endpoint; create it, or fix the URL or the endpoint") from None
    except PermissionError:
        pass


def _typed(key: str, value: object) -> object:
    """A ``--storage-option`` value as s3fs wants it: text, except its boolean and integer settings
    (values given as Python objects pass as they are)."""
    if not isinstance(value, str):
        return value
    if key in BOOLEAN_OPTIONS:
        if value.strip().lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise StorageError(f"--storage-option {key}={value}: {key} is true or false")
        return value.strip().lower() in ("true", "1", "yes")
    if key in TIMEOUTS:
        try:
            seconds = float(value)
        except ValueError:
            seconds = math.nan
        if not math.isfinite(seconds) or seconds <= 0:
            raise StorageError(f"--storage-option {key}={value}: {key} is a number of seconds > 0")
        return seconds
    if key == "max_concurrency":
        if not value.strip().isdigit() or int(value) < 1:
            raise StorageError(f"--storage-option {key}={value}: {key} is a whole number >= 1")
        return int(value)
    return value


def _aws_environment() -> dict[str, str]:
    # s3fs reads the key and secret from the environment itself; the endpoint it does not.
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return {"endpoint_url": endpoint} if endpoint else {}
