"""Feature stores: fingerprints, the Zarr store, locks, and cache management. Knows no models."""

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
from .feature_store import SCHEMA_VERSION, ArraySpec, FeatureStore, IndexEntry, StoreError
from .fingerprint import canonical_json, content_hash, fingerprint
from .hash_cache import HashCache

__all__ = [
    "SCHEMA_VERSION",
    "ArraySpec",
    "CacheScan",
    "FeatureStore",
    "GcPlan",
    "GcPolicyError",
    "HashCache",
    "IndexEntry",
    "StoreError",
    "StoreInfo",
    "cache_root",
    "canonical_json",
    "content_hash",
    "execute_gc",
    "fingerprint",
    "parse_duration",
    "parse_size",
    "plan_gc",
    "resolve_store",
    "scan_cache",
    "store_info",
]
