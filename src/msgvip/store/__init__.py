"""Feature stores: fingerprints, storage, the Zarr store, snapshots, locks and cache management.
Knows no models."""

from .cache import (
    CacheScan,
    GcPlan,
    GcPolicyError,
    StoreInfo,
    cache_root,
    execute_gc,
    parse_duration,
    parse_size,
    plan_gc,
    resolve_store,
    scan_cache,
    store_info,
)
from .compact import CompactSummary, compact
from .feature_store import SCHEMA_VERSION, ArraySpec, DamagedClipError, FeatureStore, SegmentWriter, StoreError
from .fingerprint import canonical_json, content_hash, fingerprint
from .hash_cache import HashCache
from .records import ClipRecord, Snapshot, SnapshotEntry
from .storage import Storage, StorageError, open_storage

__all__ = [
    "SCHEMA_VERSION",
    "ArraySpec",
    "CacheScan",
    "ClipRecord",
    "CompactSummary",
    "DamagedClipError",
    "FeatureStore",
    "GcPlan",
    "GcPolicyError",
    "HashCache",
    "SegmentWriter",
    "Snapshot",
    "SnapshotEntry",
    "Storage",
    "StorageError",
    "StoreError",
    "StoreInfo",
    "cache_root",
    "canonical_json",
    "compact",
    "content_hash",
    "execute_gc",
    "fingerprint",
    "open_storage",
    "parse_duration",
    "parse_size",
    "plan_gc",
    "resolve_store",
    "scan_cache",
    "store_info",
]
