"""Reading the small files a command trusts (a run's config.json, metrics.csv, evaluation) as
data: only regular files, only up to a size such a file can have, never through a symlink out
of the folder they belong to. open() on a FIFO blocks for ever and /dev/zero never ends."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import xxhash

RUN_FILE_LIMIT = 256 * 2**20  # far above any metrics.csv or config.json a run writes


class UnsafeFileError(OSError):
    """A file a command will not read: not a regular file, too large, or a link out of its folder."""


def read_regular(path: str | os.PathLike, limit: int = RUN_FILE_LIMIT, within: str | os.PathLike | None = None) -> bytes:
    """The bytes of ``path``, which must be a regular file of at most ``limit`` bytes (and,
    given ``within``, resolve inside that folder). FileNotFoundError as open() raises it; any
    other refusal is an :class:`UnsafeFileError` naming the file."""
    path = Path(path)
    if within is not None and not path.resolve().is_relative_to(Path(within).resolve()):
        raise UnsafeFileError(f"{path}: a link out of {within} ({path.resolve()}); refusing to read it")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: opening a FIFO returns instead of waiting for a writer
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file (a FIFO, device or socket)"
            raise UnsafeFileError(f"{path}: {kind}; refusing to read it")
        if info.st_size > limit:
            raise UnsafeFileError(f"{path}: {info.st_size:,} bytes, more than the {limit:,} such a file can hold; refusing to read it")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
        if len(data) > limit:  # grew while being read
            raise UnsafeFileError(f"{path}: more than the {limit:,} bytes such a file can hold; refusing to read it")
        return data
    finally:
        os.close(fd)


def read_regular_text(path: str | os.PathLike, limit: int = RUN_FILE_LIMIT, within: str | os.PathLike | None = None) -> str:
    """:func:`read_regular` decoded as UTF-8 (UnicodeDecodeError where it is not)."""
    return read_regular(path, limit, within).decode("utf-8")


def refuse_link(folder: str | os.PathLike, option: str) -> None:
    """Refuse an output folder given as a symlink (a command would write into whatever it points
    at): a ConfigError-like UnsafeFileError naming the option and the target."""
    folder = Path(folder)
    if folder.is_symlink():
        raise UnsafeFileError(f"{option} {folder}: a symlink (to {os.readlink(folder)}); give the folder itself")


def file_name_of(text: str, limit: int = 96) -> str:
    """``text`` (a clip key, a path) as a file name: characters outside ``[A-Za-z0-9._-]`` as _,
    and a long one cut to ``limit`` with a digest of the whole, so two long keys never collide
    and none reaches the file system's 255-byte limit."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text)
    if len(name) <= limit:
        return name
    return f"{name[: limit - 17]}-{xxhash.xxh64_hexdigest(text.encode('utf-8', 'surrogateescape'))}"
