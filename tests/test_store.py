"""FeatureStore contract: commit protocol, growth, checksums, foreign and old stores, plain readers."""

from __future__ import annotations

import json
import multiprocessing
import time

import numpy as np
import pytest
import zarr

from msgvip.store import ArraySpec, FeatureStore, IndexEntry, StoreError
from msgvip.store.feature_store import INDEX_FILE, ZARR_DIR

SPECS = [ArraySpec("geometry", (3,), "float32", ("geometry_feature",)), ArraySpec("appearance", (5,), "float16", ("appearance_dim",))]


def entry(i: int, frames: int, persons: int, split: str = "train") -> IndexEntry:
    return IndexEntry(f"{i:032x}", f"clip{i}", f"/data/clip{i}.npz", split, 0, "01", frames, persons, -1, {}, 0.0)


def features(i: int, frames: int, persons: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(i)
    mask = rng.random((frames, persons)) < 0.6
    mask[:, 0] = True
    return {
        "person_mask": mask,
        "geometry": rng.normal(size=(frames, persons, 3)).astype(np.float32) * mask[..., None],
        "appearance": rng.normal(size=(frames, persons, 5)).astype(np.float16) * mask[..., None],
    }


def new_store(tmp_path) -> FeatureStore:
    return FeatureStore.create(tmp_path / ("ab" * 16), "ab" * 16, {"features": {"geometry": {}}}, SPECS)


def test_roundtrip_with_growing_frames_and_persons(tmp_path):
    store = new_store(tmp_path)
    shapes = [(4, 3), (6, 2), (5, 7), (2, 1)]
    rows = [store.write_clip(entry(i, t, n), features(i, t, n)).row for i, (t, n) in enumerate(shapes)]
    assert rows == sorted(set(rows))
    reopened = FeatureStore.open(store.path)
    assert len(reopened) == 4
    for i, (t, n) in enumerate(shapes):
        got = reopened.read_clip(reopened.entries[f"{i:032x}"])
        for name, want in features(i, t, n).items():
            np.testing.assert_array_equal(got[name], want)
    rows = reopened.read_rows(np.array([rows[0], rows[2]]))
    assert rows["geometry"].shape == (2, 6, 7, 3)
    assert not rows["person_mask"][0, 4:].any() and not rows["person_mask"][0, :, 3:].any()  # padding is empty


def test_uncommitted_rows_are_invisible_and_torn_index_lines_are_dropped(tmp_path):
    store = new_store(tmp_path)
    store.write_clip(entry(0, 3, 2), features(0, 3, 2))
    row, _, _, _ = store._reserve_block(3, 2)  # a writer that died after reserving, before committing
    with open(store.path / INDEX_FILE, "a") as f:
        f.write('{"content_hash": "dead')  # ... and one killed in the middle of its index line
    reader = FeatureStore.open(store.path)
    assert list(reader.entries) == [f"{0:032x}"] and row == store.rows_per_chunk
    store.write_clip(entry(1, 3, 2), features(1, 3, 2))
    lines = (store.path / INDEX_FILE).read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line) for line in lines)
    assert FeatureStore.open(store.path).entries[f"{1:032x}"].row == 2 * store.rows_per_chunk


def test_buffered_writer_fills_whole_chunks(tmp_path):
    store = new_store(tmp_path)
    with store.writer() as writer:
        committed = [e for i in range(70) for e in writer.add(entry(i, 4, 3), features(i, 4, 3))]
        assert len(committed) == 64 and len(writer.pending) == 6  # a chunk holds 64 of these rows
    assert len(FeatureStore.open(store.path)) == 70 and store.rows_per_chunk == 64
    chunk_files = sorted((store.path / ZARR_DIR / "geometry" / "c").iterdir())
    assert [p.name for p in chunk_files] == ["0", "1"]


def test_same_clip_is_committed_once(tmp_path):
    store = new_store(tmp_path)
    other = FeatureStore.open(store.path)  # a second writer that has not seen the first commit
    assert store.write_clip(entry(0, 3, 2), features(0, 3, 2)) is not None
    assert other.write_clip(entry(0, 3, 2), features(0, 3, 2)) is None
    assert len((store.path / INDEX_FILE).read_text().splitlines()) == 1


def _write_many(path: str, start: int, count: int) -> None:
    store = FeatureStore.open(path)
    for i in range(start, start + count):
        store.write_clip(entry(i % 12, 3, 2), features(i % 12, 3, 2))


def test_concurrent_writer_processes(tmp_path):
    store = new_store(tmp_path)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(str(store.path), k * 5, 8)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    final = FeatureStore.open(store.path)
    hashes = [json.loads(line)["content_hash"] for line in (store.path / INDEX_FILE).read_text().splitlines()]
    assert len(hashes) == len(set(hashes)) == 12  # clips 0..12 written by two processes, each once
    assert final.verify() == []
    for h, e in final.entries.items():
        np.testing.assert_array_equal(final.read_clip(e)["geometry"], features(int(h, 16), 3, 2)["geometry"])


@pytest.mark.parametrize("array", ["geometry", "appearance", "person_mask"])
@pytest.mark.parametrize("where", [0, 0.5, -1])
def test_verify_catches_a_flipped_byte_in_any_chunk(tmp_path, array, where):
    store = new_store(tmp_path)
    for i in range(3):
        store.write_clip(entry(i, 4, 3), features(i, 4, 3))
    chunk = store.path / ZARR_DIR / array / "c" / "1" / "0" / "0"
    if array != "person_mask":
        chunk = chunk / "0"
    data = bytearray(chunk.read_bytes())
    data[int(where * (len(data) - 1)) if where != -1 else -1] ^= 0x01
    chunk.write_bytes(bytes(data))
    problems = FeatureStore.open(store.path).verify()
    assert [(e.clip_id, p.split(":")[0]) for e, p in problems] == [("clip1", array)]


def test_relabel_keeps_features(tmp_path):
    store = new_store(tmp_path)
    first = store.write_clip(entry(0, 3, 2), features(0, 3, 2))
    store.update_labels([IndexEntry(**{**first.__dict__, "target": 1, "split": "val"})])
    again = FeatureStore.open(store.path).entries[first.content_hash]
    assert (again.target, again.split, again.row, again.checksums) == (1, "val", first.row, first.checksums)


def test_opening_foreign_old_or_missing_stores_fails_clearly_and_deletes_nothing(tmp_path):
    with pytest.raises(StoreError, match="no feature store here"):
        FeatureStore.open(tmp_path / "nothing")
    foreign = tmp_path / "foreign"
    zarr.open_group(str(foreign / ZARR_DIR), mode="w", zarr_format=3).create_array("x", shape=(2,), dtype="f4")
    with pytest.raises(StoreError, match="not an msgvip feature store"):
        FeatureStore.open(foreign)
    store = new_store(tmp_path)
    store.write_clip(entry(0, 3, 2), features(0, 3, 2))
    meta_file = store.path / ZARR_DIR / "zarr.json"
    meta = json.loads(meta_file.read_text())
    meta["attributes"]["msgvip"]["schema_version"] = 0
    meta_file.write_text(json.dumps(meta))
    before = sorted(p.relative_to(store.path) for p in store.path.rglob("*"))
    with pytest.raises(StoreError, match="schema version 0"):
        FeatureStore.open(store.path)
    assert sorted(p.relative_to(store.path) for p in store.path.rglob("*")) == before
    FeatureStore.create(tmp_path / "other", "cd" * 16, {}, SPECS)
    with pytest.raises(StoreError, match="refusing to mix configs"):
        FeatureStore.create(tmp_path / "other", "ef" * 16, {}, SPECS)


def test_plain_zarr_and_xarray_read_the_store(tmp_path):
    xr = pytest.importorskip("xarray")
    store = new_store(tmp_path)
    with store.writer() as writer:
        for i in range(3):
            writer.add(entry(i, 4, 3), features(i, 4, 3))
    index = {e["clip_id"]: e for e in map(json.loads, (store.path / INDEX_FILE).read_text().splitlines())}
    group = zarr.open_group(str(store.path / ZARR_DIR), mode="r")
    assert group.attrs["msgvip"]["fingerprint"] == store.fingerprint
    np.testing.assert_array_equal(group["geometry"][index["clip1"]["row"]], features(1, 4, 3)["geometry"])
    ds = xr.open_zarr(str(store.path / ZARR_DIR), consolidated=False, zarr_format=3)
    assert {k: v for k, v in ds.sizes.items() if k != "clip"} == {"frame": 4, "person": 3, "geometry_feature": 3, "appearance_dim": 5}
    assert ds.sizes["clip"] >= 3  # whole chunks of rows; the index says which rows hold clips
    np.testing.assert_array_equal(ds["appearance"][index["clip0"]["row"]].values, features(0, 4, 3)["appearance"])


def test_last_used_and_pin(tmp_path):
    store = new_store(tmp_path)
    assert store.last_used == store.created_at and not store.pinned
    time.sleep(0.01)
    store.touch()
    assert store.last_used > store.created_at
    store.set_pinned(True)
    assert FeatureStore.open(store.path).pinned
    store.set_pinned(False)
    assert not store.pinned
