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

from .feature_store import COMMITS, SEGMENTS, ZARR_DIR, DamagedClipError, FeatureStore, StoreError
from .locks import exclusive_store_lease
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
        keep = [store.clips[h] for h in sorted(referenced) if h in store.clips]
        old_commits = root.list(store.key(COMMITS) + "/")
        old_segments = [s for s in root.list_dir(store.key(ZARR_DIR, SEGMENTS)) if s != "zarr.json"]
        damaged, kept = [], 0
        with store.writer() as writer:
            for i in range(0, len(keep), BATCH_CLIPS):
                for record in keep[i : i + BATCH_CLIPS]:
                    try:
                        rows = store.read_clips([record])
                    except DamagedClipError:
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
