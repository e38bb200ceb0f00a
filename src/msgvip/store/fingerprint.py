"""Config fingerprints and clip content hashes (DESIGN.md section 3).

Both are xxh3-128 over an explicit record, never over pickled objects: a fingerprint is the
hash of a canonical JSON document (sorted keys, no whitespace, no NaN), a content hash is the
hash of the dtype, shape and bytes of the arrays the extractors read.

>>> fingerprint({"b": 1, "a": [1.0, "x"]}) == fingerprint({"a": [1.0, "x"], "b": 1})
True
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import xxhash

FINGERPRINT_LENGTH = 32  # hex digits of an xxh3-128 digest


def canonical_json(record: Mapping) -> str:
    """JSON with sorted keys and no whitespace; raises TypeError on anything not plain JSON.

    Refusing unknown types (sets, numpy scalars, objects) is deliberate: a value that cannot be
    written exactly must never be hashed approximately.
    """
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def fingerprint(record: Mapping) -> str:
    """xxh3-128 hex digest of ``canonical_json(record)``."""
    return xxhash.xxh3_128_hexdigest(canonical_json(record).encode("utf-8"))


def content_hash(arrays: Mapping[str, np.ndarray]) -> str:
    """xxh3-128 of the named arrays' dtype, shape and bytes, in name order."""
    digest = xxhash.xxh3_128()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.view(np.uint8).reshape(-1) if array.size else b"")
    return digest.hexdigest()


def array_checksum(array: np.ndarray) -> str:
    """xxh3-64 of one array's dtype, shape and bytes: the per-row checksum the store records."""
    array = np.ascontiguousarray(array)
    digest = xxhash.xxh3_64(f"{array.dtype.str}:{array.shape};".encode())
    digest.update(array.view(np.uint8).reshape(-1) if array.size else b"")
    return digest.hexdigest()


def is_fingerprint(text: str) -> bool:
    return len(text) == FINGERPRINT_LENGTH and all(c in "0123456789abcdef" for c in text)
