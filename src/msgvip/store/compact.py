"""`msgvip cache compact`: merge a store's segments into one and drop rows no snapshot needs.

Writers each leave a segment of their own (a dask task writes a small one), killed writers leave
rows no commit record names, and re-extracted or deleted clips leave rows no snapshot names.
Compaction copies the rows every snapshot references, checked against their checksums, into one
new segment with its own commit record, then deletes the old records and after them the old
segments: an interruption at any point leaves a readable store (the newest record wins), and the
next compaction finishes the job. It needs the store to itself (an exclusive lease).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .feature_store import COMMITS, SEGMENTS, ZARR_DIR, DamagedClipError, FeatureStore, StoreError
from .locks import exclusive_store_lease
from .records import ClipRecord
from .storage import Storage

BATCH_CLIPS = 256  # clips read and written at a time: bounds memory, not speed


@dataclass
class CompactSummary:
    fingerprint: str
    segments_before: int
    clips_kept: int
    clips_dropped: int  # committed but referenced by no snapshot
    damaged: list[str]  # referenced but unreadable: dropped; `msgvip extract` re-extracts them
    bytes_before: int
    bytes_after: int
    seconds: float


def compact(root: Storage, fp: str) -> CompactSummary:
    start = time.perf_counter()
    with exclusive_store_lease(root, fp) as free:
        if not free:
            raise StoreError(f"{root.child_url(fp)}: in use (an extract, train or evaluate holds its lease); compact it when they are done")
        store = FeatureStore.open_in(root, fp)
        bytes_before = root.size(fp)
        referenced = {e.content_hash for name in store.snapshot_names() for e in store.snapshot(name).entries}
        keep = sorted((store.clips[h] for h in referenced if h in store.clips), key=lambda r: (r.segment, r.offset))
        old_commits = root.list(store.key(COMMITS) + "/")
        old_segments = [s for s in root.list_dir(store.key(ZARR_DIR, SEGMENTS)) if s != "zarr.json"]
        damaged, kept = [], 0
        with store.writer() as writer:
            for i in range(0, len(keep), BATCH_CLIPS):
                batch = keep[i : i + BATCH_CLIPS]
                for record, rows in zip(batch, _read_batch(store, batch)):
                    if rows is None:
                        damaged.append(record.content_hash)
                        continue
                    writer.add_rows(record.content_hash, record.frames, record.persons, rows)
                    kept += 1
        for key in old_commits:  # records first: no record may name rows that are gone
            root.delete(key)
        for segment in old_segments:
            if segment != writer.segment:
                root.delete_prefix(store.key(ZARR_DIR, SEGMENTS, segment))
        return CompactSummary(fp, len(old_segments), kept, len(store.clips) - len(keep), damaged, bytes_before, root.size(fp), time.perf_counter() - start)


def _read_batch(store: FeatureStore, batch: list[ClipRecord]) -> list[dict[str, np.ndarray] | None]:
    """Rows of each clip of ``batch`` (None for a damaged one): one read per array per run of
    nearby clips; clip by clip only when the batch holds damage."""
    try:
        rows = store.read_clips(batch)
    except DamagedClipError:
        return [_read_one(store, record) for record in batch]
    bounds = np.cumsum([r.length for r in batch])[:-1]
    parts = {name: np.split(array, bounds) for name, array in rows.items()}
    return [{name: split[k] for name, split in parts.items()} for k in range(len(batch))]


def _read_one(store: FeatureStore, record: ClipRecord) -> dict[str, np.ndarray] | None:
    try:
        return store.read_clips([record])
    except DamagedClipError:
        return None
