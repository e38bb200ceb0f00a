"""The feature store, schema 2: content, segments and membership (DESIGN.md section 4).

Layout of ``<cache_root>/<fingerprint>/``::

    meta.json                      fingerprint, config, schema version, array specs (sealed JSON)
    features.zarr/                 a plain Zarr v3 group; attributes["msgvip"] hold a copy of meta.json
      segments/<segment>/          one group per writer (an extract process, a dask task)
        frame, slot                (V,) int32: the frame and person slot of each row
        <family>                   (V, ...) rows of valid person-frames only, e.g. geometry (V, 18)
    commits/<segment>-<seq>.json   commit records: content hash -> rows of a segment, with an
                                   xxh3 checksum of each array's rows (sealed JSON)
    datasets/<name>.json           dataset snapshots: clip key -> content hash, split, target, scene
    last_used, pinned              access time written by msgvip; gc never takes a pinned store

Content: the rows of a clip are keyed by its content hash; the same bytes are never extracted
twice. Rows are ragged (valid person-frames only), so bytes on disk and in RAM follow the people
present, never T x N of the largest clip.
Segments: a writer appends to its own segment and seals each batch of clips with a commit record
written after the rows, so writers never share an array, a chunk or a file and need no lock; a
killed writer leaves only rows no record names (``compact`` reclaims them). Where several records
name one content hash (a repair, or two writers racing) the newest wins.
Membership: a snapshot per dataset name, replaced whole by each `extract` run of that name.
Reads are verified: every clip's rows are checked against the checksums of its record, so a
missing chunk (which Zarr reads back as zeros) or a damaged one is an error naming the clip.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
import zarr.api.asynchronous
from zarr.codecs import BloscCodec, Crc32cCodec
from zarr.core.sync import sync

from .fingerprint import array_checksum, fingerprint, is_fingerprint
from .locks import check_lease, store_lease
from .records import ClipRecord, DamagedRecord, Snapshot, commit_document, parse_commit, seal, unseal
from .storage import ENDPOINT_HINT, Storage, object_store_errors, open_storage

SCHEMA_VERSION = 2
ZARR_DIR = "features.zarr"  # bookkeeping lives outside it, so plain Zarr sees only arrays
META_FILE = "meta.json"  # the store's metadata, sealed (a copy sits in the Zarr group's attributes)
SEGMENTS = "segments"
COMMITS = "commits"
DATASETS = "datasets"
LAST_USED_FILE = "last_used"
PIN_FILE = "pinned"
MASK_ARRAY = "person_mask"  # what writers hand in beside the families; stored as the frame/slot rows
INDEX_ARRAYS = ("frame", "slot")
CHUNK_TARGET_BYTES = 4 << 20  # uncompressed bytes per chunk of the widest array
# A commit batch (64 clips: ~8k rows of demo clips, ~46k of real ones) should fill whole chunks:
# a flush that ends inside a chunk makes the next one decode and re-encode it. Measured on
# geometry-only demo clips: 64k-row chunks encoded 5.6x the bytes written, 8k-row chunks ~2x.
MAX_ROWS_PER_CHUNK = 1 << 13
COMMIT_EVERY_CLIPS = 64  # a killed writer loses at most this many clips' work


class StoreError(Exception):
    """A store that cannot be opened or used as asked; the message names the store and the fix."""


class DamagedClipError(StoreError):
    """A clip whose rows are missing or fail their checksum."""


@dataclass(frozen=True)
class ArraySpec:
    """One feature array: its per-row trailing shape and its on-disk dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    dims: tuple[str, ...] = ()  # names of the trailing dims, for xarray

    def __post_init__(self) -> None:
        if len(self.dims) != len(self.shape):
            object.__setattr__(self, "dims", tuple(f"{self.name}_dim{i}" for i in range(len(self.shape))))

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "dims": list(self.dims)}

    @classmethod
    def from_json(cls, record: Mapping) -> ArraySpec:
        return cls(record["name"], tuple(record["shape"]), record["dtype"], tuple(record["dims"]))

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


INDEX_SPECS = tuple(ArraySpec(name, (), "int32") for name in INDEX_ARRAYS)


def _compressors(dtype: np.dtype) -> list:
    # Embeddings barely compress: a fast codec with bit-shuffle; geometry and indices compress
    # well with zstd. crc32c makes any flipped byte in a chunk fail loudly on read.
    if dtype == np.float16:
        blosc = BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")
    else:
        blosc = BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")
    return [blosc, Crc32cCodec()]


def _group_document(attributes: Mapping) -> bytes:
    """A Zarr v3 group's zarr.json."""
    return json.dumps({"zarr_format": 3, "node_type": "group", "attributes": dict(attributes)}, indent=2).encode()


def new_segment_id() -> str:
    """Time-ordered and unique across hosts: newest records sort last."""
    return f"{time.time_ns():016x}-{secrets.token_hex(4)}"


class FeatureStore:
    """One fingerprinted store of a cache root (local or object storage).

    Open one with :meth:`create` (writers) or :meth:`open` (readers). ``clips`` holds the newest
    committed record of each content hash; :meth:`snapshot` gives a dataset's membership.
    """

    def __init__(self, storage: Storage, fp: str, meta: Mapping):
        self.storage = storage
        self.fingerprint = fp
        self.config: dict = meta["config"]
        self.settings: dict = meta.get("settings", {})
        self.specs: tuple[ArraySpec, ...] = tuple(ArraySpec.from_json(a) for a in meta["arrays"])
        self.created_at: float = meta["created_at"]
        self.clips: dict[str, ClipRecord] = {}
        self.damaged_commits: dict[str, str] = {}  # commit key -> problem
        self._seen_commits: set[str] = set()
        self._arrays: dict[tuple[str, str], zarr.Array] = {}
        self._zarr = storage.zarr_store_at(f"{fp}/{ZARR_DIR}")

    # ---------------------------------------------------------------- naming
    def key(self, *parts: str) -> str:
        return "/".join((self.fingerprint, *parts))

    @property
    def location(self) -> str:
        """The store as a user would name it: a path, or a URL on object storage."""
        return self.storage.child_url(self.fingerprint)

    @property
    def path(self) -> Path:
        """The local directory of the store (object-storage stores have none)."""
        if self.storage.local_path is None:
            raise StoreError(f"{self.location}: on object storage, not a local directory")
        return self.storage.local_path / self.fingerprint

    @property
    def families(self) -> list[str]:
        return [s.name for s in self.specs]

    # ---------------------------------------------------------------- opening
    @classmethod
    def create(
        cls, storage: Storage, fp: str, config: Mapping, arrays: Sequence[ArraySpec], settings: Mapping | None = None
    ) -> FeatureStore:
        """Open store ``fp`` of ``storage``, creating it if missing; an existing one must match.
        Call it under :func:`store_lease` so gc cannot take the store while it is being made."""
        if storage.is_local:
            refuse_symlinks(storage.local_path / fp)
        if storage.read(f"{fp}/{META_FILE}") is None:
            meta = {
                "fingerprint": fp, "config": dict(config), "settings": dict(settings or {}), "schema_version": SCHEMA_VERSION,
                "arrays": [a.to_json() for a in arrays], "created_at": time.time(), "versions": _package_versions(),
            }  # fmt: skip
            # the Zarr group's document, written whole (an atomic write, where zarr's open_group would
            # fail with ContainsGroupError if an extract racing this one made the group first); its
            # attributes hold a copy of meta.json for plain-Zarr readers, meta.json is what msgvip trusts
            storage.write(f"{fp}/{ZARR_DIR}/zarr.json", _group_document({"msgvip": meta}))
            storage.write(f"{fp}/{META_FILE}", seal(meta))  # last: its presence means the store exists
        store = cls.open_in(storage, fp)
        store._repair_group_documents()
        if fingerprint(store.config) != fingerprint(config) or store.families != [a.name for a in arrays]:
            raise StoreError(f"{store.location}: holds another config than its fingerprint {fp} names; the store is damaged (nothing was changed)")
        return store

    def _repair_group_documents(self) -> None:
        """Rewrite a missing or damaged zarr.json of the Zarr group or of ``segments/``. No reader
        needs them (each array has its own), but zarr reads them to create an array below, so one
        bad byte there would stop every later extract. Written whole, never via zarr's overwrite,
        which would delete the arrays below."""
        for key, attributes in ((self.key(ZARR_DIR, "zarr.json"), {"msgvip": read_store_meta(self.storage, self.fingerprint)}),
                                (self.key(ZARR_DIR, SEGMENTS, "zarr.json"), {})):  # fmt: skip
            data = self.storage.read(key)
            if data is None and attributes == {}:
                continue  # made with the first segment
            try:
                doc = json.loads(data)
                intact = doc["zarr_format"] == 3 and doc["node_type"] == "group"
            except (TypeError, ValueError, KeyError):
                intact = False
            if not intact:
                self.storage.write(key, _group_document(attributes))

    @classmethod
    def open_in(cls, storage: Storage, fp: str, refresh: bool = True) -> FeatureStore:
        """Open store ``fp`` of ``storage``; ``refresh=False`` skips reading the commit records
        (for a writer that needs no view of what others committed)."""
        store = cls(storage, fp, read_store_meta(storage, fp))
        if refresh:
            store.refresh()
        return store

    @classmethod
    def open(cls, location: str | os.PathLike, options: Mapping[str, str] | None = None) -> FeatureStore:
        """Open a store from its path or URL (``<cache_root>/<fingerprint>``)."""
        text = os.fspath(location).rstrip("/")
        if "://" not in text:
            text = str(Path(text).expanduser().absolute())
        parent, _, fp = text.rpartition("/")
        return cls.open_in(open_storage(parent or "/", options), fp)

    # ---------------------------------------------------------------- records
    def refresh(self) -> None:
        """Read commit records written since the last call; the newest record of a clip wins.
        A damaged record is kept aside (``damaged_commits``), never trusted."""
        fresh = sorted(k for k in self.storage.list(self.key(COMMITS) + "/") if k.endswith(".json") and k not in self._seen_commits)
        for key, data in zip(fresh, self.storage.read_many(fresh)):  # segment ids are time-ordered: newest last, so it wins
            self._seen_commits.add(key)
            if data is None:
                continue  # removed by a compaction since it was listed
            try:
                for record in parse_commit(data):
                    self.clips[record.content_hash] = record
            except DamagedRecord as err:
                self.damaged_commits[key] = str(err)

    def __contains__(self, content_hash: str) -> bool:
        return content_hash in self.clips

    def __len__(self) -> int:
        return len(self.clips)

    # ---------------------------------------------------------------- snapshots
    def snapshot_names(self) -> list[str]:
        names = self.storage.list_dir(self.key(DATASETS))
        return sorted(n[: -len(".json")] for n in names if n.endswith(".json"))

    def snapshot(self, name: str) -> Snapshot:
        data = self.storage.read(self.key(DATASETS, f"{name}.json"))
        if data is None:
            known = ", ".join(self.snapshot_names()) or "none"
            raise StoreError(f"{self.location}: no dataset {name!r} (datasets: {known}); `msgvip extract DATA --dataset {name}` writes it")
        try:
            return Snapshot.from_bytes(data)
        except DamagedRecord as err:
            raise StoreError(f"{self.location}: dataset snapshot {name!r} is damaged ({err}); rerun `msgvip extract` on its data to rewrite it") from None

    def resolve_dataset(self, name: str | None) -> Snapshot:
        """The snapshot named ``name``; without a name, the only one the store has."""
        if name is not None:
            return self.snapshot(name)
        names = self.snapshot_names()
        if len(names) == 1:
            return self.snapshot(names[0])
        if not names:
            raise StoreError(f"{self.location}: no dataset snapshot yet; run `msgvip extract DATA` to write one")
        raise StoreError(f"{self.location}: holds datasets {', '.join(names)}; choose one with --dataset NAME")

    def write_snapshot(self, snapshot: Snapshot) -> None:
        """Replace the snapshot of its name at once (one atomic write)."""
        self.storage.write(self.key(DATASETS, f"{snapshot.name}.json"), snapshot.to_bytes())

    # ---------------------------------------------------------------- writing
    def writer(self) -> SegmentWriter:
        return SegmentWriter(self)

    def rows_per_chunk(self) -> int:
        widest = max(s.row_bytes for s in (*self.specs, *INDEX_SPECS))
        rows = 1
        while rows * 2 <= MAX_ROWS_PER_CHUNK and rows * 2 * widest <= CHUNK_TARGET_BYTES:
            rows *= 2
        return rows

    def _array(self, segment: str, spec: ArraySpec, create: bool = False) -> zarr.Array:
        handle = self._arrays.get((segment, spec.name))
        if handle is None:
            path = f"{SEGMENTS}/{segment}/{spec.name}"
            if create:
                handle = zarr.create_array(
                    store=self._zarr, name=path, shape=(0, *spec.shape), chunks=(self.rows_per_chunk(), *spec.shape),
                    dtype=spec.dtype, fill_value=0, compressors=_compressors(np.dtype(spec.dtype)), dimension_names=("row", *spec.dims),
                    zarr_format=3,
                )  # fmt: skip
            else:
                handle = zarr.open_array(store=self._zarr, path=path, mode="r", zarr_format=3)
            self._arrays[(segment, spec.name)] = handle
        return handle

    # ---------------------------------------------------------------- reading
    def read_clips(self, records: Sequence[ClipRecord], names: Sequence[str] | None = None, label=None) -> dict[str, np.ndarray]:
        """Rows of ``records`` concatenated in their order, per array (``frame``, ``slot`` and the
        families in ``names``, default all), each clip checked against its checksums.

        Rows are read in runs of nearby records of one segment, one read per array per run.
        ``label(record)`` names a clip in errors (default: its content hash)."""
        names = [*INDEX_ARRAYS, *(self.families if names is None else names)]
        specs = {s.name: s for s in (*self.specs, *INDEX_SPECS)}
        parts: dict[str, list[np.ndarray]] = {n: [None] * len(records) for n in names}
        runs = _runs(records)
        one_read = len(runs) == 1 and _contiguous(records)
        whole: dict[str, np.ndarray] = {}  # filled when one read covers exactly ``records``, in order
        for run in runs:
            lo = min(records[i].offset for i in run)
            hi = max(records[i].offset + records[i].length for i in run)
            reads = self._read_arrays(records[run[0]].segment, [specs[n] for n in names], lo, hi)
            for name, rows in zip(names, reads):
                if isinstance(rows, (PermissionError, *object_store_errors())):  # the store is out of reach, not damaged
                    raise StoreError(f"{self.location}: cannot read the store ({type(rows).__name__}: {rows}); {ENDPOINT_HINT}")
                if isinstance(rows, Exception):  # a chunk failing its crc32c or its decompression, a missing array
                    err = rows
                    if len(run) > 1:
                        for i in run:  # find the clip(s) the damage belongs to
                            parts[name][i] = self.read_clips([records[i]], [name] if name not in INDEX_ARRAYS else [], label)[name]
                        continue
                    raise self._damaged(records[run[0]], name, f"unreadable ({type(err).__name__}: {err})", label) from None
                if one_read:
                    whole[name] = rows
                for i in run:
                    r = records[i]
                    parts[name][i] = rows[r.offset - lo : r.offset - lo + r.length]
        for name in names:
            for i, r in enumerate(records):
                if array_checksum(parts[name][i]) != r.checksums.get(name):
                    raise self._damaged(r, name, "rows fail their checksum (missing or changed chunk)", label)
        if len(whole) == len(names):  # back-to-back clips in order: the one read is the answer, no copy
            return whole
        return {n: np.concatenate(p) if p else np.zeros((0, *specs[n].shape), specs[n].dtype) for n, p in parts.items()}

    def _read_arrays(self, segment: str, specs: Sequence[ArraySpec], lo: int, hi: int) -> list[np.ndarray | Exception]:
        """Rows lo:hi of several arrays of a segment, opened and read concurrently in one round
        trip to zarr's I/O loop (their chunks decode in parallel); an array that fails gives its error."""

        async def read(spec: ArraySpec):
            try:
                handle = self._arrays.get((segment, spec.name))
                if handle is None:  # opening reads the array's zarr.json
                    opened = await zarr.api.asynchronous.open_array(store=self._zarr, path=f"{SEGMENTS}/{segment}/{spec.name}", mode="r", zarr_format=3)
                    handle = self._arrays[(segment, spec.name)] = zarr.Array(opened)
                return await handle._async_array.getitem(slice(lo, hi))
            except Exception as err:  # a missing or damaged array, a failed read: the caller tells damage from an unreachable store
                return err

        async def read_all():
            return await asyncio.gather(*(read(spec) for spec in specs))

        return sync(read_all())

    def _damaged(self, record: ClipRecord, name: str, problem: str, label) -> DamagedClipError:
        return DamagedClipError(
            f"{self.location}: clip {label(record) if label else record.content_hash}: array {name!r} of segment "
            f"{record.segment}: {problem}; rerun `msgvip extract` on its data to re-extract it (see `msgvip cache verify {self.fingerprint[:12]}`)"
        )

    def read_clip(self, content_hash: str, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """One clip as dense arrays: ``person_mask`` (T, N) and each family (T, N, ...), zeros where absent."""
        record = self.clips[content_hash]
        rows = self.read_clips([record], names)
        mask = np.zeros((record.frames, record.persons), bool)
        mask[rows["frame"], rows["slot"]] = True
        out = {MASK_ARRAY: mask}
        for spec in self.specs:
            if spec.name in rows:
                dense = np.zeros((record.frames, record.persons, *spec.shape), spec.dtype)
                dense[rows["frame"], rows["slot"]] = rows[spec.name]
                out[spec.name] = dense
        return out

    # ---------------------------------------------------------------- checking
    def check(self, records: Sequence[ClipRecord], batch: int = 256, label=None) -> list[tuple[ClipRecord, str]]:
        """(record, problem) for each clip whose rows are missing or damaged: read in batches,
        a failing batch again clip by clip to name the culprits."""
        records = sorted(records, key=lambda r: (r.segment, r.offset))
        problems = []
        for i in range(0, len(records), batch):
            try:
                self.read_clips(records[i : i + batch])
            except DamagedClipError:
                for record in records[i : i + batch]:
                    try:
                        self.read_clips([record], label=label)
                    except DamagedClipError as err:
                        problems.append((record, str(err)))
        return problems

    def verify(self) -> list[tuple[str, str]]:
        """Check every byte that changes results: metadata (fingerprint re-derived from the
        recorded config), every commit record, every snapshot, and the rows of every committed
        clip. Returns (what, problem) pairs, collected rather than raised."""
        problems: list[tuple[str, str]] = []
        try:
            read_store_meta(self.storage, self.fingerprint, check=True)
        except StoreError as err:
            problems.append(("metadata", str(err)))
        self.refresh()
        problems += [(key, f"commit record damaged: {why}") for key, why in sorted(self.damaged_commits.items())]
        for name in self.snapshot_names():
            try:
                snapshot = self.snapshot(name)
            except StoreError as err:
                problems.append((f"dataset {name}", str(err)))
                continue
            missing = [e.key for e in snapshot.entries if e.content_hash not in self.clips]
            problems += [(f"dataset {name}", f"clip {k} has no committed rows; rerun `msgvip extract` on its data") for k in missing]
        names: dict[str, list[str]] = {}  # content hash -> "dataset:key" of every clip that uses it
        for name in self.snapshot_names():
            try:
                for e in self.snapshot(name).entries:
                    names.setdefault(e.content_hash, []).append(f"{name}:{e.key}")
            except StoreError:
                continue  # reported above
        label = lambda r: ", ".join(names.get(r.content_hash, [])) or f"{r.content_hash} (in no dataset)"  # noqa: E731
        problems += [(label(r), why) for r, why in self.check(list(self.clips.values()), label=label)]
        return problems

    # ---------------------------------------------------------------- state
    @contextmanager
    def lease(self) -> Iterator[None]:
        """Hold a shared lease for the block: gc and compact leave the store alone while it is
        held. The commit records are read again once it is held: a compaction that ran before may
        have replaced the ones read when the store was opened."""
        with store_lease(self.storage, self.fingerprint):
            self.reload()
            yield

    def reload(self) -> None:
        """Read every commit record afresh (records a compaction removed are forgotten)."""
        self.clips, self.damaged_commits, self._seen_commits = {}, {}, set()
        self._arrays.clear()
        self.refresh()

    def touch(self) -> None:
        """Record use now (file atime is unreliable, so msgvip writes it itself)."""
        self.storage.write(self.key(LAST_USED_FILE), f"{time.time():.3f}\n".encode())

    @property
    def last_used(self) -> float:
        try:
            value = float((self.storage.read(self.key(LAST_USED_FILE)) or b"").decode())
        except (ValueError, UnicodeDecodeError):
            value = math.nan
        # missing, garbled or impossible (-inf, nan, the future beyond a day): the creation time is the honest fallback
        return value if math.isfinite(value) and 0 < value < time.time() + 86400 else self.created_at

    @property
    def pinned(self) -> bool:
        return self.storage.read(self.key(PIN_FILE)) is not None

    def set_pinned(self, pinned: bool) -> None:
        if pinned:
            self.storage.write(self.key(PIN_FILE), b"")
        else:
            self.storage.delete(self.key(PIN_FILE))


def _contiguous(records: Sequence[ClipRecord]) -> bool:
    """Whether ``records`` are back-to-back rows of one segment, in this order."""
    return bool(records) and all(
        b.segment == a.segment and b.offset == a.offset + a.length for a, b in zip(records, records[1:])
    )


def _runs(records: Sequence[ClipRecord], max_gap: int = 4096) -> list[list[int]]:
    """Positions of ``records`` grouped into runs of one segment whose rows lie close together,
    so a run is read with one contiguous read per array without reading much it does not need."""
    order = sorted(range(len(records)), key=lambda i: (records[i].segment, records[i].offset))
    runs: list[list[int]] = []
    end = None
    for i in order:
        r = records[i]
        if runs and records[runs[-1][0]].segment == r.segment and r.offset - end <= max_gap:
            runs[-1].append(i)
            end = max(end, r.offset + r.length)
        else:
            runs.append([i])
            end = r.offset + r.length
    return runs


class SegmentWriter:
    """Appends clips to a segment of its own and commits them in batches.

    ``add`` packs a clip's valid person-frames into rows. Once a chunk's worth of rows is buffered,
    :meth:`flush` writes whole chunks only (each chunk is then encoded once, never read back and
    re-encoded to merge a later write) and seals a commit record naming the clips whose rows are
    all written; rows of a clip that straddles the last chunk boundary wait for the next write.
    After ``COMMIT_EVERY_CLIPS`` clips everything buffered is written and committed anyway, so a
    killed writer loses little work. Use as a context manager: leaving the block writes and commits
    the rest.
    """

    def __init__(self, store: FeatureStore):
        self.store = store
        self.segment = new_segment_id()
        self.rows = 0  # rows written so far
        self.seq = 0
        self.pending: list[ClipRecord] = []  # clips not yet committed, offsets assigned
        self.committed: list[ClipRecord] = []
        self._unwritten: dict[str, list[np.ndarray]] = {s.name: [] for s in (*INDEX_SPECS, *store.specs)}
        self._end = 0  # rows assigned so far: written + unwritten
        self._created = False  # the segment's arrays exist
        self._pending_hashes: set[str] = set()
        self._rows_per_chunk = store.rows_per_chunk()

    def __enter__(self) -> SegmentWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.flush()

    def add(self, content_hash: str, features: Mapping[str, np.ndarray]) -> list[ClipRecord]:
        """Buffer one clip: ``features`` maps ``person_mask`` (T, N) and every family of the store
        to (T, N, ...). Returns the records committed by this call, if any."""
        where = self.store.location
        expected = {MASK_ARRAY, *self.store.families}
        if set(features) != expected:
            raise StoreError(f"{where}: clip {content_hash} has arrays {sorted(features)}, the store holds {sorted(expected)}")
        mask = np.asarray(features[MASK_ARRAY], bool)
        if mask.ndim != 2:
            raise StoreError(f"{where}: clip {content_hash}: person_mask has shape {mask.shape}, expected (T, N)")
        frame, slot = np.nonzero(mask)
        rows = {"frame": frame.astype(np.int32), "slot": slot.astype(np.int32)}
        for spec in self.store.specs:
            array = np.asarray(features[spec.name])
            if array.shape != (*mask.shape, *spec.shape):
                raise StoreError(f"{where}: array {spec.name!r} of clip {content_hash} has shape {array.shape}, expected {(*mask.shape, *spec.shape)}")
            rows[spec.name] = array[mask]
        return self.add_rows(content_hash, *mask.shape, rows)

    def add_rows(self, content_hash: str, frames: int, persons: int, rows: Mapping[str, np.ndarray]) -> list[ClipRecord]:
        """Buffer one clip given as rows already (``frame``, ``slot`` and every family)."""
        if content_hash in self._pending_hashes:
            return []
        rows = {s.name: np.ascontiguousarray(rows[s.name], dtype=s.dtype) for s in (*INDEX_SPECS, *self.store.specs)}
        length = len(rows["frame"])
        self.pending.append(ClipRecord(content_hash, self.segment, self._end, length, frames, persons, {n: array_checksum(a) for n, a in rows.items()}))
        self._pending_hashes.add(content_hash)
        for name, array in rows.items():
            self._unwritten[name].append(array)
        self._end += length
        if len(self.pending) >= COMMIT_EVERY_CLIPS:
            return self.flush()
        if self._end - self.rows >= self._rows_per_chunk:
            return self._write(self._end // self._rows_per_chunk * self._rows_per_chunk)
        return []

    def flush(self) -> list[ClipRecord]:
        """Write every buffered row, then commit; returns the records committed."""
        return self._write(self._end)

    def _write(self, end: int) -> list[ClipRecord]:
        """Write the buffered rows up to row ``end``, then commit the clips they complete."""
        if end > self.rows or (self.pending and not self._created):  # clips without rows still need the arrays
            count = end - self.rows
            for spec in (*INDEX_SPECS, *self.store.specs):
                array = self.store._array(self.segment, spec, create=not self._created)
                if count:
                    buffered = np.concatenate(self._unwritten[spec.name])
                    array.resize((end, *spec.shape))
                    array[self.rows : end] = buffered[:count]
                    self._unwritten[spec.name] = [buffered[count:]]
            self._created, self.rows = True, end
        done = [r for r in self.pending if r.offset + r.length <= self.rows]
        if not done:
            return []
        self.pending = self.pending[len(done) :]
        self._pending_hashes.difference_update(r.content_hash for r in done)
        key = self.store.key(COMMITS, f"{self.segment}-{self.seq:06d}.json")
        check_lease(self.store.storage, self.store.fingerprint)  # a lost lease fails here: a compaction may have dropped this segment
        self.store.storage.write(key, commit_document(self.segment, self.seq, done, time.time()))
        self.seq += 1
        self.committed += done
        self.store.clips.update((r.content_hash, r) for r in done)
        return done


def refuse_symlinks(path: Path) -> None:
    """Writers refuse a store holding symlinks: writing through one could change files outside
    the cache root. (Readers and gc never follow them either.)"""
    if path.is_symlink():
        raise StoreError(f"{path}: is a symlink; msgvip writes only into real directories under the cache root")
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            if os.path.islink(os.path.join(dirpath, name)):
                raise StoreError(f"{os.path.join(dirpath, name)}: a symlink inside a store; refusing to write through it")


def read_store_meta(storage: Storage, fp: str, check: bool = False) -> dict:
    """The store's metadata (``meta.json``, sealed), with a clear error for missing, foreign, old
    or damaged stores. ``check`` also re-derives the fingerprint from the recorded config."""
    where = storage.child_url(fp)
    data = storage.read(f"{fp}/{META_FILE}")
    if data is None:
        try:
            attrs = json.loads(storage.read(f"{fp}/{ZARR_DIR}/zarr.json") or b"null")
            old = attrs["attributes"]["msgvip"]
        except (ValueError, KeyError, TypeError):
            old = None
        if isinstance(old, dict) and old.get("schema_version") != SCHEMA_VERSION:
            raise StoreError(
                f"{where}: store schema version {old.get('schema_version')}, this msgvip reads version {SCHEMA_VERSION} (ragged rows, "
                "dataset snapshots); rebuild it: `msgvip extract DATA` writes a new store, `msgvip cache gc --old-schema` removes this one"
            )
        if storage.read(f"{fp}/{ZARR_DIR}/zarr.json") is not None:
            raise StoreError(f"{where}: {META_FILE} missing: not an msgvip feature store, or one whose creation was cut short (nothing was changed)")
        raise StoreError(f"{where}: no feature store here ({META_FILE} missing); run `msgvip extract` to create one")
    try:
        meta = unseal(data)
        [ArraySpec.from_json(a) for a in meta["arrays"]], meta["config"], meta["created_at"]
    except DamagedRecord as err:
        raise StoreError(f"{where}: {META_FILE} is damaged ({err}); the store cannot be trusted, rebuild it with `msgvip extract`") from None
    except (KeyError, TypeError) as err:
        raise StoreError(f"{where}: {META_FILE} lacks {err}; the store is damaged") from None
    if meta.get("fingerprint") != fp or not is_fingerprint(fp):
        raise StoreError(f"{where}: records fingerprint {meta.get('fingerprint')!r}, not its directory's {fp}; the store is damaged or forged")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise StoreError(f"{where}: store schema version {meta.get('schema_version')}, this msgvip reads version {SCHEMA_VERSION}; rebuild it with `msgvip extract`")
    if check and fingerprint(meta["config"]) != fp:
        raise StoreError(f"{where}: the recorded config hashes to {fingerprint(meta['config'])}, not {fp}; the store is damaged or forged")
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
