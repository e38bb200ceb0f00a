"""The schema-1 feature store (msgvip at commit df34f65), kept only as the baseline of
``bench_store.py``: it is not part of msgvip, nothing else imports it, and it must not be
used to write real caches. Copied verbatim except for its package-relative imports, which
now name ``msgvip.store.fingerprint`` and ``msgvip.store.locks`` so it runs from ``benchmarks/``,
and for ``ArraySpec``, which it takes from the current store (the same record, unchanged).

The original module docstring follows.

The feature store: one Zarr v3 group per extraction config (DESIGN.md section 4).

Layout of ``<cache_root>/<fingerprint>/``::

    features.zarr/     a plain Zarr v3 group; attributes["msgvip"] hold fingerprint, config,
                       schema version and the array specs
      person_mask/     (C, T, N) bool
      <family>/        (C, T, N, ...) per feature family, e.g. geometry (C, T, N, 18) float32
                       chunks hold whole clips: R rows of full (T, N) each, R a power of two
                       sized for ~8 MB chunks (a geometry-only store: 64 clips per chunk)
    index.jsonl        one JSON line per committed clip (the commit record, written last)
    state.json         {"complete": bool, "clips_expected": int, "updated_at": unix time}
    last_used          unix time of the last train/evaluate/extract that opened the store
    pinned             present when the store is pinned (gc never removes it)
    .write.lock        exclusive flock for row reservation and index commits
    .lease             shared flock held by every reader and writer; gc needs it exclusively

C (clip rows) grows one chunk (R rows) at a time, each block owned by the one writer that reserved
it, so concurrent writers never touch the same chunk; T and N grow to the largest clip seen. A
clip occupies ``[row, :frames, :persons]``, the rest of its row is zeros. A row is visible only
once its index line exists: arrays are written first, the index lines last, so a killed writer
leaves at most unused rows that no reader ever sees (Zarr writes each chunk key atomically, but
an array with unwritten chunks reads back zeros, so zeros are never trusted as data).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from msgvip.store.feature_store import ArraySpec
from msgvip.store.fingerprint import array_checksum, is_fingerprint
from msgvip.store.locks import file_lock

SCHEMA_VERSION = 1
INDEX_FILE = "index.jsonl"
STATE_FILE = "state.json"
LAST_USED_FILE = "last_used"
PIN_FILE = "pinned"
LOCK_FILE = ".write.lock"
LEASE_FILE = ".lease"
MASK_ARRAY = "person_mask"
CHUNK_TARGET_BYTES = 8 << 20  # uncompressed bytes per chunk: big enough to amortise Zarr's per-chunk cost
MAX_ROWS_PER_CHUNK = 64  # and small enough that a killed writer loses little work
ZARR_DIR = "features.zarr"  # bookkeeping files stay outside it, so plain Zarr sees only arrays


class StoreError(Exception):
    """A store that cannot be opened or used as asked; the message names the path and the fix."""


MASK_SPEC = ArraySpec(MASK_ARRAY, (), "bool")


@dataclass(frozen=True)
class IndexEntry:
    """One committed clip: where its row is, what it is, and how to check it."""

    content_hash: str
    clip_id: str
    source: str
    split: str
    target: int  # -1 = unlabeled
    scene: str
    frames: int
    persons: int
    row: int
    checksums: dict[str, str]
    written_at: float
    repairs: dict[str, int] = field(default_factory=dict)

    def to_line(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")) + "\n"

    @classmethod
    def from_line(cls, line: str) -> IndexEntry:
        return cls(**json.loads(line))


def _compressors(dtype: np.dtype) -> list:
    # Embeddings barely compress: a fast codec with bit-shuffle; geometry and masks are mostly
    # zero padding and compress well with zstd. crc32c makes any flipped byte in a chunk fail.
    if dtype == np.float16:
        blosc = BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")
    else:
        blosc = BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")
    return [blosc, Crc32cCodec()]


class FeatureStore:
    """A fingerprinted Zarr v3 feature store on local disk.

    Open one with :meth:`create` (writers) or :meth:`open` (readers). Readers see only clips in
    the index; :meth:`write_clip` is safe from several processes at once.
    """

    def __init__(self, path: Path, meta: Mapping):
        self.path = Path(path)
        self.fingerprint: str = meta["fingerprint"]
        self.config: dict = meta["config"]
        self.settings: dict = meta.get("settings", {})
        self.arrays: tuple[ArraySpec, ...] = tuple(ArraySpec.from_json(a) for a in meta["arrays"])
        self.created_at: float = meta["created_at"]
        self._entries: dict[str, IndexEntry] = {}
        self._index_offset = 0
        self._handles: dict[str, zarr.Array] = {}
        self._last_chunk: dict[str, tuple[int, np.ndarray]] = {}  # array name -> (chunk index, rows)
        self._rows_per_chunk: int | None = None

    # ---------------------------------------------------------------- opening
    @classmethod
    def create(
        cls, path: Path, fingerprint: str, config: Mapping, arrays: Sequence[ArraySpec], settings: Mapping | None = None
    ) -> FeatureStore:
        """Open the store at ``path``, creating it if missing; an existing one must match.

        ``config`` is the record the fingerprint hashes; ``settings`` are the user-facing options
        that produced it (kept so the same extraction can be rerun on new clips).
        """
        path = Path(path)
        if path.is_symlink():
            raise StoreError(f"{path}: is a symlink; msgvip writes only into real directories under the cache root")
        path.mkdir(parents=True, exist_ok=True)
        refuse_symlinks(path)
        with file_lock(path / LOCK_FILE):
            if not (path / ZARR_DIR / "zarr.json").exists():
                meta = {
                    "fingerprint": fingerprint,
                    "config": dict(config),
                    "settings": dict(settings or {}),
                    "schema_version": SCHEMA_VERSION,
                    "arrays": [a.to_json() for a in (MASK_SPEC, *arrays)],
                    "created_at": time.time(),
                    "versions": _package_versions(),
                }
                group = zarr.open_group(str(path / ZARR_DIR), mode="w", zarr_format=3)
                group.attrs["msgvip"] = meta
                _write_json_atomic(path / STATE_FILE, {"complete": False, "clips_expected": 0, "updated_at": time.time()})
        store = cls.open(path)
        if store.fingerprint != fingerprint:
            raise StoreError(f"{path}: holds fingerprint {store.fingerprint}, expected {fingerprint}; refusing to mix configs")
        return store

    @classmethod
    def open(cls, path: Path) -> FeatureStore:
        """Open an existing store for reading (and writing); clear errors for foreign or old stores."""
        path = Path(path)
        meta = read_store_meta(path)
        store = cls(path, meta)
        store.refresh()
        return store

    # ---------------------------------------------------------------- index
    def refresh(self) -> None:
        """Read index lines appended since the last call (a torn last line is left for later)."""
        index = self.path / INDEX_FILE
        if not index.exists():
            return
        with open(index, "rb") as f:
            f.seek(self._index_offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        names = {a.name for a in self.arrays}
        for line in data[:end].splitlines():
            try:
                entry = IndexEntry.from_line(line.decode("utf-8"))
            except (ValueError, TypeError, UnicodeDecodeError):
                continue  # a torn line from a killed writer, later overwritten: never data
            if set(entry.checksums) != names or entry.row < 0:
                raise StoreError(
                    f"{index}: entry for clip {entry.clip_id!r} has arrays {sorted(entry.checksums)} at row {entry.row}, "
                    f"this store holds {sorted(names)}: the index belongs to another store or is damaged (nothing was changed)"
                )
            self._entries[entry.content_hash] = entry  # the last line for a clip wins (relabels)
        self._index_offset += end

    @property
    def entries(self) -> dict[str, IndexEntry]:
        """Committed clips by content hash."""
        return self._entries

    def __contains__(self, content_hash: str) -> bool:
        return content_hash in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def entries_for(self, split: str | None = None) -> list[IndexEntry]:
        """Committed clips of one split (all when None), in row order."""
        rows = [e for e in self._entries.values() if split is None or e.split == split]
        return sorted(rows, key=lambda e: e.row)

    # ---------------------------------------------------------------- writing
    def writer(self) -> StoreWriter:
        """A buffered writer: clips are written a chunk of rows at a time, then committed."""
        return StoreWriter(self)

    def write_clip(self, entry: IndexEntry, features: Mapping[str, np.ndarray]) -> IndexEntry | None:
        """Write and commit one clip at once (a whole chunk of rows for one clip: for tests and
        small jobs; bulk writers use :meth:`writer`). None if another writer committed it first."""
        with self.writer() as writer:
            writer.add(entry, features)
        return writer.committed[0] if writer.committed else None

    def update_labels(self, updates: Sequence[IndexEntry]) -> None:
        """Re-commit entries whose labels or split changed; features are untouched."""
        if not updates:
            return
        with file_lock(self.path / LOCK_FILE):
            self.refresh()
            self._append_index("".join(u.to_line() for u in updates))

    def _append_index(self, text: str) -> None:
        # Called under the writer lock, right after refresh(), so every complete line is consumed
        # and whatever lies past the offset is a line torn by a killed writer: cut it off so the
        # next line does not fuse with it.
        with open(self.path / INDEX_FILE, "ab") as f:
            f.truncate(self._index_offset)
            f.write(text.encode("utf-8"))
        self.refresh()

    @property
    def rows_per_chunk(self) -> int | None:
        """Clip rows per chunk of every array (None before the first write; fixed after it)."""
        if self._rows_per_chunk is None:
            meta = self.path / ZARR_DIR / MASK_ARRAY / "zarr.json"
            if meta.exists():
                self._rows_per_chunk = int(json.loads(meta.read_text())["chunk_grid"]["configuration"]["chunk_shape"][0])
        return self._rows_per_chunk

    def _rows_per_chunk_for(self, frames: int, persons: int) -> int:
        """The largest power of two of rows whose biggest array chunk stays under the target size."""
        row_bytes = max(int(np.prod(a.shape, dtype=np.int64)) * np.dtype(a.dtype).itemsize for a in self.arrays) * frames * persons
        rows = 1
        while rows * 2 <= MAX_ROWS_PER_CHUNK and rows * 2 * row_bytes <= CHUNK_TARGET_BYTES:
            rows *= 2
        return rows

    def _reserve_block(self, frames: int, persons: int) -> tuple[int, int, int, int]:
        """Append one chunk of rows to every array (growing T and N to at least frames x persons)
        and return (first row, rows per chunk, T, N). The block belongs to the caller alone, so
        concurrent writers never share a chunk."""
        with file_lock(self.path / LOCK_FILE):
            group = zarr.open_group(str(self.path / ZARR_DIR), mode="r+")
            exists = (self.path / ZARR_DIR / MASK_ARRAY / "zarr.json").exists()
            if exists:
                mask = group[MASK_ARRAY]
                (start, t, n), block = mask.shape, mask.chunks[0]
            else:
                start, t, n, block = 0, frames, persons, self._rows_per_chunk_for(frames, persons)
            t, n = max(t, frames), max(n, persons)
            for spec in self.arrays:
                shape = (start + block, t, n, *spec.shape)
                if exists:
                    group[spec.name].resize(shape)
                else:
                    group.create_array(
                        spec.name,
                        shape=shape,
                        chunks=(block, t, n, *spec.shape),
                        dtype=spec.dtype,
                        fill_value=0,
                        compressors=_compressors(np.dtype(spec.dtype)),
                        dimension_names=("clip", "frame", "person", *spec.dims),
                    )
        self._handles.clear()  # shapes changed: reopen lazily
        return start, block, t, n

    def _commit(self, entries: Sequence[IndexEntry]) -> list[IndexEntry]:
        """Append index lines for entries no other writer committed first; returns those."""
        with file_lock(self.path / LOCK_FILE):
            self.refresh()
            fresh = [e for e in entries if e.content_hash not in self._entries]
            fresh = list({e.content_hash: e for e in fresh}.values())
            if fresh:
                self._append_index("".join(e.to_line() for e in fresh))
        return fresh

    def _handle(self, name: str, row: int = -1) -> zarr.Array:
        handle = self._handles.get(name)
        if handle is None or row >= handle.shape[0]:
            handle = self._handles[name] = zarr.open_array(str(self.path / ZARR_DIR), path=name, mode="r+")
        return handle

    # ---------------------------------------------------------------- reading
    def read_clip(self, entry: IndexEntry, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The clip's arrays cropped to its own (frames, persons).

        The last decoded chunk of each array is kept, so reading clips in row order decodes each
        chunk once. Safe because a chunk is written whole, once, before any of its rows is
        committed, and never again."""
        names = [a.name for a in self.arrays] if names is None else names
        block = self.rows_per_chunk or 1
        chunk = entry.row // block
        out = {}
        for n in names:
            cached = self._last_chunk.get(n)
            if cached is None or cached[0] != chunk:
                cached = self._last_chunk[n] = (chunk, self._handle(n, entry.row)[chunk * block : (chunk + 1) * block])
            out[n] = cached[1][entry.row - chunk * block, : entry.frames, : entry.persons]
        return out

    def read_rows(self, rows: np.ndarray, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Whole padded rows, (len(rows), T, N, ...) per array; rows must be committed ones."""
        names = [a.name for a in self.arrays] if names is None else names
        rows = np.asarray(rows, dtype=np.int64)
        if not rows.size:
            return {n: self._handle(n)[0:0] for n in names}
        low, high = int(rows.min()), int(rows.max()) + 1
        out = {}
        for n in names:
            handle = self._handle(n, high - 1)
            if len(rows) * 4 >= high - low:  # dense: one contiguous read beats per-row selection
                out[n] = handle[low:high][rows - low]
            else:
                out[n] = handle.get_orthogonal_selection((rows,))
        return out

    def index_problem(self) -> str | None:
        """A store-level problem of the index, or None: arrays with rows but no index at all."""
        if not (self.path / INDEX_FILE).exists() and self.rows_per_chunk is not None:
            rows = zarr.open_array(str(self.path / ZARR_DIR), path=MASK_ARRAY, mode="r").shape[0]
            return f"{self.path / INDEX_FILE}: index.jsonl is missing while the arrays hold {rows} rows; no clip counts as committed (nothing was changed)"
        return None

    def verify(self) -> list[tuple[IndexEntry, str]]:
        """Re-read every committed clip, a chunk at a time, and compare checksums; returns
        (entry, problem) pairs, collected rather than raised."""
        problems = []
        by_chunk: dict[int, list[IndexEntry]] = {}
        for entry in self.entries_for():
            by_chunk.setdefault(entry.row // (self.rows_per_chunk or 1), []).append(entry)
        for entries in by_chunk.values():
            for spec in self.arrays:
                try:
                    rows = self.read_rows(np.array([e.row for e in entries]), [spec.name])[spec.name]
                except Exception as err:  # a corrupt chunk fails its crc32c or its decompression
                    problems += [(e, f"{spec.name}: unreadable chunk ({type(err).__name__}: {err})") for e in entries]
                    continue
                for entry, row in zip(entries, rows):
                    if array_checksum(row[: entry.frames, : entry.persons]) != entry.checksums.get(spec.name):
                        problems.append((entry, f"{spec.name}: checksum mismatch"))
        return problems

    # ---------------------------------------------------------------- state
    @contextmanager
    def lease(self) -> Iterator[None]:
        """Hold a shared lease for the block: gc leaves the store alone while it is held."""
        with file_lock(self.path / LEASE_FILE, shared=True, timeout=None):
            yield

    def touch(self) -> None:
        """Record use now (file atime is unreliable, so msgvip writes it itself)."""
        _write_text_atomic(self.path / LAST_USED_FILE, f"{time.time():.3f}\n")

    def set_state(self, *, complete: bool, clips_expected: int) -> None:
        _write_json_atomic(self.path / STATE_FILE, {"complete": complete, "clips_expected": clips_expected, "updated_at": time.time()})

    def state(self) -> dict:
        try:
            return json.loads((self.path / STATE_FILE).read_text())
        except (OSError, ValueError):
            return {"complete": False, "clips_expected": 0, "updated_at": 0.0}

    @property
    def last_used(self) -> float:
        try:
            return float((self.path / LAST_USED_FILE).read_text())
        except (OSError, ValueError):
            return self.created_at

    @property
    def pinned(self) -> bool:
        return (self.path / PIN_FILE).exists()

    def set_pinned(self, pinned: bool) -> None:
        if pinned:
            os.close(os.open(self.path / PIN_FILE, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644))
        else:
            (self.path / PIN_FILE).unlink(missing_ok=True)


def refuse_symlinks(path: Path) -> None:
    """Writers refuse a store holding symlinks: writing through one could change files outside
    the cache root. (Readers and gc never follow them either.)"""
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            if os.path.islink(os.path.join(dirpath, name)):
                raise StoreError(f"{os.path.join(dirpath, name)}: a symlink inside a store; refusing to write through it")


def read_store_meta(path: Path) -> dict:
    """The store's msgvip attributes, with a clear error for missing, foreign or old stores."""
    meta_file = Path(path) / ZARR_DIR / "zarr.json"
    if not meta_file.is_file():
        raise StoreError(f"{path}: no feature store here (zarr.json missing); run `msgvip extract` to create one")
    try:
        attrs = json.loads(meta_file.read_text()).get("attributes", {})
    except ValueError as err:
        raise StoreError(f"{meta_file}: unreadable ({err}); the store is damaged, nothing was changed") from None
    meta = attrs.get("msgvip")
    if not isinstance(meta, dict):
        raise StoreError(f"{path}: a Zarr group but not an msgvip feature store (no 'msgvip' attribute); nothing was changed")
    if not is_fingerprint(str(meta.get("fingerprint", ""))):
        raise StoreError(f"{path}: records fingerprint {meta.get('fingerprint')!r}, not a 32-digit hex fingerprint; the store is damaged or forged")
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"{path}: store schema version {version}, this msgvip reads version {SCHEMA_VERSION}; "
            "re-extract into a new cache dir or use the msgvip release that wrote it (nothing was changed)"
        )
    return meta


def _package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("msgvip", "zarr", "numpy", "numcodecs"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "unknown"
    return versions


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_json_atomic(path: Path, record: Mapping) -> None:
    _write_text_atomic(path, json.dumps(record, sort_keys=True) + "\n")


class StoreWriter:
    """Buffers clips and writes them a chunk of rows at a time; commits after each chunk.

    Each flush reserves a fresh block of rows (one chunk of every array) under the writer lock,
    writes the buffered clips into it with one chunk write per array, then appends their index
    lines. A writer killed before a flush loses only its buffered, uncommitted clips.
    Use as a context manager: leaving the block flushes what is buffered.
    """

    def __init__(self, store: FeatureStore):
        self.store = store
        self.specs = {a.name: a for a in store.arrays}
        self.pending: list[tuple[IndexEntry, dict[str, np.ndarray]]] = []
        self.committed: list[IndexEntry] = []
        self._rows_per_chunk = store.rows_per_chunk

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.flush()

    def add(self, entry: IndexEntry, features: Mapping[str, np.ndarray]) -> list[IndexEntry]:
        """Buffer one clip; ``features`` maps every array of the store (``person_mask`` included)
        to (frames, persons, *spec.shape). Returns the entries committed by this call, if any."""
        path = self.store.path
        if set(features) != set(self.specs):
            raise StoreError(f"{path}: clip {entry.clip_id} has arrays {sorted(features)}, the store holds {sorted(self.specs)}")
        cast = {}
        for name, spec in self.specs.items():
            array = np.asarray(features[name])
            expected = (entry.frames, entry.persons, *spec.shape)
            if array.shape != expected:
                raise StoreError(f"{path}: array {name!r} of clip {entry.clip_id} has shape {array.shape}, expected {expected}")
            cast[name] = array.astype(spec.dtype, copy=False)
        checksums = {n: array_checksum(a) for n, a in cast.items()}
        self.pending.append((IndexEntry(**{**asdict(entry), "checksums": checksums}), cast))
        if self._rows_per_chunk is None:
            self._rows_per_chunk = self.store._rows_per_chunk_for(entry.frames, entry.persons)
        return self.flush() if len(self.pending) >= self._rows_per_chunk else []

    def flush(self) -> list[IndexEntry]:
        """Write and commit everything buffered; returns the entries committed."""
        committed = []
        while self.pending:
            frames = max(e.frames for e, _ in self.pending)
            persons = max(e.persons for e, _ in self.pending)
            start, block, t, n = self.store._reserve_block(frames, persons)
            self._rows_per_chunk = block
            batch, self.pending = self.pending[:block], self.pending[block:]
            for name, spec in self.specs.items():
                stacked = np.zeros((len(batch), t, n, *spec.shape), dtype=spec.dtype)
                for i, (e, arrays) in enumerate(batch):
                    stacked[i, : e.frames, : e.persons] = arrays[name]
                self.store._handle(name, start + block - 1)[start : start + len(batch)] = stacked
            rows = [IndexEntry(**{**asdict(e), "row": start + i}) for i, (e, _) in enumerate(batch)]
            committed += self.store._commit(rows)
        self.committed += committed
        return committed
