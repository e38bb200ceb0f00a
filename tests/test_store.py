"""FeatureStore v2 contract: ragged rows, segments and commit records, sealed documents, verified
reads, compaction, foreign and old stores, and plain-Zarr readers."""

from __future__ import annotations

import json
import multiprocessing
import time

import numpy as np
import pytest
import zarr

from msgvip.store import ArraySpec, DamagedClipError, FeatureStore, Snapshot, SnapshotEntry, StoreError, compact, open_storage
from msgvip.store.feature_store import COMMIT_EVERY_CLIPS, COMMITS, DATASETS, META_FILE, SEGMENTS, ZARR_DIR
from msgvip.store.fingerprint import fingerprint

SPECS = [ArraySpec("geometry", (3,), "float32", ("geometry_feature",)), ArraySpec("appearance", (5,), "float16", ("appearance_dim",))]
CONFIG = {"features": {"geometry": {}, "appearance": {}}}
FP = fingerprint(CONFIG)


def digest(i: int) -> str:
    return f"{i:032x}"


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
    return FeatureStore.create(open_storage(tmp_path), FP, CONFIG, SPECS)


def write(store: FeatureStore, clips) -> list:
    with store.writer() as writer:
        for i, (t, n) in clips:
            writer.add(digest(i), features(i, t, n))
    return writer.committed


def snapshot_of(store: FeatureStore, name: str = "d", count: int = 3) -> Snapshot:
    entries = tuple(SnapshotEntry(f"train/c{i}", digest(i), "train", 0, "01", f"/data/train/c{i}.npz") for i in range(count))
    return Snapshot(name, "/data", 1.0, entries)


def test_roundtrip_keeps_only_valid_person_frames(tmp_path):
    store = new_store(tmp_path)
    shapes = [(4, 3), (6, 2), (5, 7), (2, 1)]
    records = write(store, enumerate(shapes))
    reopened = FeatureStore.open(store.path)
    assert len(reopened) == 4
    for i, (t, n) in enumerate(shapes):
        want = features(i, t, n)
        assert reopened.clips[digest(i)].length == want["person_mask"].sum()  # rows = people present, not T x N
        got = reopened.read_clip(digest(i))
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
    rows = reopened.read_clips(records[::-1], ["geometry"])
    assert rows["geometry"].shape == (sum(r.length for r in records), 3) and set(rows) == {"frame", "slot", "geometry"}
    # Zarr is rooted at features.zarr: nothing of it lands in the cache root or the store's folder
    assert not (tmp_path / "zarr.json").exists() and not (store.path / "zarr.json").exists()


def test_a_huge_clip_changes_no_other_clip_bytes(tmp_path):
    """T=500 or N=500 in one clip: the rows of every other clip stay byte for byte the same."""
    store = new_store(tmp_path)
    write(store, [(i, (6, 4)) for i in range(10)])
    segment_files = {p: p.read_bytes() for p in (store.path / ZARR_DIR / SEGMENTS).rglob("*") if p.is_file()}
    write(store, [(100, (500, 3)), (101, (4, 500))])
    for path, data in segment_files.items():
        assert path.read_bytes() == data
    reopened = FeatureStore.open(store.path)
    small = reopened.read_clips([reopened.clips[digest(i)] for i in range(10)])
    assert len(small["frame"]) == sum(features(i, 6, 4)["person_mask"].sum() for i in range(10))


def test_a_writer_commits_in_batches_and_a_killed_one_leaves_nothing_visible(tmp_path):
    store = new_store(tmp_path)
    writer = store.writer()
    committed = [r for i in range(COMMIT_EVERY_CLIPS + 6) for r in writer.add(digest(i), features(i, 4, 3))]
    assert len(committed) == COMMIT_EVERY_CLIPS and len(writer.pending) == 6
    # the writer "dies" here: its 6 buffered clips, and any rows it wrote without a record, are invisible
    half_written = store.writer()
    half_written.add(digest(999), features(999, 4, 3))
    for spec in (*store.specs,):
        array = store._array(half_written.segment, spec, create=True)
        array.resize((10, *spec.shape))
        array[:10] = 1
    reader = FeatureStore.open(store.path)
    assert set(reader.clips) == {digest(i) for i in range(COMMIT_EVERY_CLIPS)} and reader.verify() == []


def _write_many(root: str, start: int, count: int) -> None:
    store = FeatureStore.open_in(open_storage(root), FP)
    with store.writer() as writer:
        for i in range(start, start + count):
            writer.add(digest(i % 12), features(i % 12, 3, 2))


def test_concurrent_writer_processes_share_nothing(tmp_path):
    store = new_store(tmp_path)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(str(tmp_path), k * 5, 8)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    final = FeatureStore.open(store.path)
    assert len(final) == 12 and final.verify() == []
    assert len(list((store.path / COMMITS).iterdir())) == 2  # one record per writer, no shared file
    for h, record in final.clips.items():
        np.testing.assert_array_equal(final.read_clip(h)["geometry"], features(int(h, 16), 3, 2)["geometry"])


@pytest.mark.parametrize("array", ["geometry", "appearance", "frame", "slot"])
@pytest.mark.parametrize("where", [0, 0.5, -1])
def test_verify_and_reads_catch_a_flipped_byte_in_any_chunk(tmp_path, array, where):
    store = new_store(tmp_path)
    write(store, [(i, (4, 3)) for i in range(3)])
    (chunk,) = (p for p in (store.path / ZARR_DIR / SEGMENTS).glob(f"*/{array}/c/**/*") if p.is_file())
    data = bytearray(chunk.read_bytes())
    data[int(where * (len(data) - 1)) if where != -1 else -1] ^= 0x01
    chunk.write_bytes(bytes(data))
    reopened = FeatureStore.open(store.path)
    problems = reopened.verify()
    assert len(problems) == 3 and all(f"array {array!r}" in why for _, why in problems)
    with pytest.raises(DamagedClipError, match=f"clip {digest(1)}: array '{array}'.*rerun `msgvip extract`"):
        reopened.read_clips([reopened.clips[digest(1)]])


@pytest.mark.parametrize("damage", ["removed", "truncated", "emptied"])
def test_a_missing_or_truncated_chunk_is_never_read_as_zeros(tmp_path, damage):
    store = new_store(tmp_path)
    write(store, [(i, (4, 3)) for i in range(3)])
    (chunk,) = (p for p in (store.path / ZARR_DIR / SEGMENTS).glob("*/geometry/c/**/*") if p.is_file())
    if damage == "removed":
        chunk.unlink()
    else:
        chunk.write_bytes(chunk.read_bytes()[: len(chunk.read_bytes()) // 2 if damage == "truncated" else 0])
    reopened = FeatureStore.open(store.path)
    with pytest.raises(DamagedClipError, match="array 'geometry'"):
        reopened.read_clips(list(reopened.clips.values()))


def test_verify_flags_a_one_byte_change_anywhere_in_records_snapshots_and_metadata(tmp_path):
    store = new_store(tmp_path)
    write(store, [(i, (4, 3)) for i in range(3)])
    store.write_snapshot(snapshot_of(store))
    assert store.verify() == []
    (record,) = (store.path / COMMITS).iterdir()
    for path in (record, store.path / DATASETS / "d.json", store.path / META_FILE):
        original = path.read_bytes()
        for position in range(len(original)):
            for change in (0x01, 0x20):
                damaged = bytearray(original)
                damaged[position] ^= change
                path.write_bytes(bytes(damaged))
                try:
                    problems = FeatureStore.open(store.path).verify()
                except StoreError:
                    problems = ["the store refuses to open"]
                assert problems, (path.name, position, change)
        path.write_bytes(original)
    assert FeatureStore.open(store.path).verify() == []


def test_verify_rederives_the_fingerprint_from_the_recorded_config(tmp_path):
    store = new_store(tmp_path)
    meta = json.loads((store.path / META_FILE).read_bytes())
    meta["config"]["features"]["geometry"]["forged"] = True
    from msgvip.store.records import seal

    (store.path / META_FILE).write_bytes(seal(meta))  # resealed: only the fingerprint can tell
    (what, why), *_ = FeatureStore.open(store.path).verify()
    assert what == "metadata" and "hashes to" in why


def test_snapshots_replace_whole_and_report_leaks(tmp_path):
    store = new_store(tmp_path)
    write(store, [(i, (4, 3)) for i in range(3)])
    store.write_snapshot(snapshot_of(store, count=3))
    store.write_snapshot(snapshot_of(store, count=2))
    assert len(store.snapshot("d").entries) == 2 and store.snapshot_names() == ["d"]
    leaky = Snapshot("leaky", "/data", 1.0, (
        SnapshotEntry("train/a", digest(0), "train", 0, "", "/a"), SnapshotEntry("test/b", digest(0), "test", 1, "", "/b"),
        SnapshotEntry("train/c", digest(1), "train", 0, "", "/c"), SnapshotEntry("train/d", digest(1), "train", 0, "", "/d"),
    ))  # fmt: skip
    assert leaky.leaks() == {"test/train": [["test/b", "train/a"]]}  # same split twice is not a leak
    with pytest.raises(StoreError, match="choose one with --dataset"):
        store.write_snapshot(leaky) or store.resolve_dataset(None)
    with pytest.raises(StoreError, match="no dataset 'nope'"):
        store.snapshot("nope")


def test_compact_keeps_referenced_rows_only_and_merges_segments(tmp_path):
    store = new_store(tmp_path)
    for start in range(0, 9, 3):  # three writers, three segments
        write(store, [(i, (4, 3)) for i in range(start, start + 3)])
    store.write_snapshot(snapshot_of(store, count=5))
    before = {digest(i): store.read_clip(digest(i)) for i in range(5)}
    summary = compact(store.storage, store.fingerprint)
    assert (summary.segments_before, summary.clips_kept, summary.clips_dropped) == (3, 5, 4)
    assert summary.bytes_after < summary.bytes_before
    after = FeatureStore.open(store.path)
    assert set(after.clips) == set(before) and after.verify() == []
    assert len([p for p in (store.path / ZARR_DIR / SEGMENTS).iterdir() if p.is_dir()]) == 1
    for h, arrays in before.items():
        for name, want in arrays.items():
            np.testing.assert_array_equal(after.read_clip(h)[name], want)
    with store.lease(), pytest.raises(StoreError, match="in use"):
        compact(store.storage, store.fingerprint)


def test_opening_foreign_old_or_missing_stores_fails_clearly_and_deletes_nothing(tmp_path):
    root = open_storage(tmp_path)
    with pytest.raises(StoreError, match="no feature store here"):
        FeatureStore.open_in(root, "ab" * 16)
    foreign = tmp_path / ("cd" * 16)
    zarr.open_group(str(foreign / ZARR_DIR), mode="w", zarr_format=3).create_array("x", shape=(2,), dtype="f4")
    with pytest.raises(StoreError, match="not an msgvip feature store"):
        FeatureStore.open(foreign)
    old = tmp_path / ("ef" * 16)  # what schema 1 left: attributes in the Zarr group, no meta.json
    zarr.open_group(str(old / ZARR_DIR), mode="w", zarr_format=3).attrs["msgvip"] = {"schema_version": 1, "fingerprint": "ef" * 16}
    before = sorted(p.relative_to(old) for p in old.rglob("*"))
    with pytest.raises(StoreError, match="schema version 1.*rebuild it.*gc --old-schema"):
        FeatureStore.open(old)
    assert sorted(p.relative_to(old) for p in old.rglob("*")) == before


def test_plain_zarr_and_pandas_read_a_split_without_msgvip(tmp_path):
    """The README's snippet: one split's clips from the snapshot, the commit records and Zarr."""
    pd = pytest.importorskip("pandas")
    store = new_store(tmp_path)
    write(store, [(i, (4, 3)) for i in range(3)])
    store.write_snapshot(snapshot_of(store))
    store_dir = store.path

    clips = pd.DataFrame(json.loads((store_dir / "datasets" / "d.json").read_text())["clips"])
    rows = pd.DataFrame([dict(c, segment=r["segment"]) for p in sorted((store_dir / "commits").glob("*.json"))
                         for r in [json.loads(p.read_text())] for c in r["clips"]])  # fmt: skip
    train = clips[clips.split == "train"].merge(rows.drop_duplicates("content_hash", keep="last"), on="content_hash")
    group = zarr.open_group(str(store_dir / "features.zarr"), mode="r")
    for clip in train.itertuples():
        segment = group["segments"][clip.segment]
        geometry = segment["geometry"][clip.offset : clip.offset + clip.length]  # (rows, 3)
        frame, slot = segment["frame"][clip.offset : clip.offset + clip.length], segment["slot"][clip.offset : clip.offset + clip.length]
        i = int(clip.content_hash, 16)
        want = features(i, 4, 3)
        np.testing.assert_array_equal(geometry, want["geometry"][frame, slot])
    assert group.attrs["msgvip"]["fingerprint"] == store.fingerprint
    xr = pytest.importorskip("xarray")
    ds = xr.open_zarr(store_dir / "features.zarr" / "segments" / train.segment.iloc[0], consolidated=False, zarr_format=3)
    assert ds.sizes["row"] == rows.length.sum() and ds.sizes["geometry_feature"] == 3


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
    (store.path / "last_used").write_text("garbage")
    assert FeatureStore.open(store.path).last_used == store.created_at  # a damaged clock is no crash


def test_whole_chunks_are_written_once_and_clips_without_rows_still_commit(tmp_path, monkeypatch):
    from msgvip.store import feature_store

    monkeypatch.setattr(feature_store, "MAX_ROWS_PER_CHUNK", 8)
    store = new_store(tmp_path)
    writes = []
    original = zarr.Array.__setitem__
    monkeypatch.setattr(zarr.Array, "__setitem__", lambda self, key, value: (writes.append((self.path, key)), original(self, key, value))[1])
    empty = {"person_mask": np.zeros((3, 2), bool), "geometry": np.zeros((3, 2, 3), np.float32), "appearance": np.zeros((3, 2, 5), np.float16)}
    with store.writer() as writer:
        writer.add(digest(500), empty)
        for i in range(6):
            writer.add(digest(i), features(i, 4, 3))
    geometry_writes = [key for path, key in writes if path.endswith("geometry")]
    assert all(w.start % 8 == 0 for w in geometry_writes[:-1]) and all(w.stop % 8 == 0 for w in geometry_writes[:-1])  # whole chunks
    reopened = FeatureStore.open(store.path)
    assert len(reopened) == 7 and reopened.clips[digest(500)].length == 0 and reopened.verify() == []
    assert not reopened.read_clip(digest(500))["person_mask"].any()
