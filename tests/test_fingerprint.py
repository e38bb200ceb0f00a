import json
import os
import subprocess
import sys

import numpy as np
import pytest

from msgvip.config import ExtractConfig
from msgvip.extract.registry import build_extractors, identity
from msgvip.store.fingerprint import canonical_json, content_hash, fingerprint

RECORD = {"schema_version": 1, "features": {"appearance": {"model": "facebook/dinov2-small", "crop": 224, "dtype": "float16"}, "geometry": {"feature_version": 1}}}


def reorder(value):
    """The same record with every dict's keys in reverse insertion order."""
    if isinstance(value, dict):
        return {k: reorder(value[k]) for k in reversed(list(value))}
    return value


def test_key_order_does_not_matter():
    assert fingerprint(RECORD) == fingerprint(reorder(RECORD))
    assert canonical_json(RECORD) == canonical_json(reorder(RECORD))


@pytest.mark.parametrize("seed", ["0", "1", "12345"])
def test_same_fingerprint_across_processes_and_hash_seeds(seed):
    code = "import json,sys; from msgvip.store.fingerprint import fingerprint; print(fingerprint(json.loads(sys.argv[1])))"
    env = {**os.environ, "PYTHONHASHSEED": seed}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(reorder(RECORD))], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == fingerprint(RECORD)


@pytest.mark.parametrize(
    "path, value",
    [
        (("schema_version",), 2),
        (("features", "appearance", "model"), "facebook/dinov2-base"),
        (("features", "appearance", "crop"), 192),
        (("features", "appearance", "crop"), 224.0),  # an int and a float are different values
        (("features", "appearance", "dtype"), "float32"),
        (("features", "geometry", "feature_version"), 2),
    ],
)
def test_any_field_that_changes_numbers_changes_fingerprint(path, value):
    changed = json.loads(json.dumps(RECORD))
    node = changed
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert fingerprint(changed) != fingerprint(RECORD)


def test_batch_size_workers_and_device_do_not_reach_the_fingerprint():
    base = identity(build_extractors(ExtractConfig()))
    other = identity(build_extractors(ExtractConfig(batch_size=7, num_workers=5, device="cuda:3")))
    assert base == other
    assert identity(build_extractors(ExtractConfig(features=("geometry", "geometry")))) == base


def test_unhashable_values_fail_loudly():
    with pytest.raises(TypeError):
        fingerprint({"model": object()})
    with pytest.raises(ValueError):
        fingerprint({"lr": float("nan")})


def test_content_hash_sees_dtype_shape_and_bytes():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    base = content_hash({"bboxes": a})
    assert content_hash({"bboxes": a.copy()}) == base
    assert content_hash({"bboxes": a.reshape(4, 3)}) != base
    assert content_hash({"bboxes": a.astype(np.float64)}) != base
    b = a.copy()
    b[1, 2] += 1
    assert content_hash({"bboxes": b}) != base
    assert content_hash({"boxes": a}) != base
    assert len(base) == 32
