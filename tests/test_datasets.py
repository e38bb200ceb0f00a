"""Dataset snapshots end to end: what `train`, `evaluate` and `predict` read is exactly the clips of
one data folder as it is now, whatever else the store holds; damage stops them by name and a rerun
of `extract` repairs it."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import save_clip, tiny_clip

from msgvip.cli import main
from msgvip.pipelines import run_extract
from msgvip.ranker import RankerConfig, StoreDataset, TrainConfig, evaluate_run, train
from msgvip.store import FeatureStore, cache_root, execute_gc, plan_gc, scan_cache
from msgvip.store.feature_store import SEGMENTS, ZARR_DIR

SMALL_MODEL = RankerConfig(hidden=16, gat_heads=2, temporal_heads=2, event_heads=2, pool_heads=2, relation_heads=2, ff_mult=2)
QUICK = TrainConfig(epochs=1, batch_size=4, patience=100, device="cpu")
SMALL_TOML = "[model]\nhidden = 16\ngat_heads = 2\ntemporal_heads = 2\nevent_heads = 2\npool_heads = 2\nrelation_heads = 2\nff_mult = 2\n"


def run(*args, code: int = 0):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


def make_data(root: Path, count: int = 12, **clip) -> Path:
    for i in range(count):
        split = "train" if i % 3 else ("val" if i % 6 == 0 else "test")
        save_clip(root / split / f"clip_{i:02d}.npz", tiny_clip(seed=i, **clip))
    return root


def keys(store: FeatureStore, dataset: str) -> set[str]:
    return {e.key for e in store.snapshot(dataset).entries}


def test_same_bytes_in_train_and_test_keep_their_own_labels_and_are_a_loud_leak(tmp_path, cache_dir):
    data = make_data(tmp_path / "data")
    twin = tiny_clip(seed=1)
    twin["target_index"] = np.array(int(np.flatnonzero(twin["person_mask"][0])[1]))  # same bytes, another label
    save_clip(data / "test" / "twin.npz", twin)
    summary = run_extract(data, progress=False)
    assert summary.leaks == {"test/train": [["test/twin", "train/clip_01"]]}
    store = FeatureStore.open(summary.store)
    entries = {e.key: e for e in store.snapshot("data").entries}
    assert entries["test/twin"].content_hash == entries["train/clip_01"].content_hash
    assert entries["test/twin"].target != entries["train/clip_01"].target
    assert "LEAK test/train: 1 clips" in run("cache", "info", summary.fingerprint).output

    (tmp_path / "small.toml").write_text(SMALL_TOML)
    common = ["train", "--store", summary.fingerprint, "--epochs", "1", "--device", "cpu", "--config", tmp_path / "small.toml"]
    refused = run(*common, "--out", tmp_path / "refused", code=1)
    assert "same clip content in two splits" in refused.output and "--allow-duplicates" in refused.output
    assert not (tmp_path / "refused").exists()
    run(*common, "--out", tmp_path / "run", "--allow-duplicates")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["allow_duplicates"] is True and config["leaks"] == {"test/train": [["test/twin", "train/clip_01"]]}

    snapshot = (store.path / "datasets" / "data.json").read_bytes()
    for _ in range(10):
        again = run_extract(data, progress=False)
        assert (again.written, again.changes["unchanged"]) == (0, 13)
        assert json.loads((store.path / "datasets" / "data.json").read_bytes())["clips"] == json.loads(snapshot)["clips"]


def test_edited_and_deleted_clips_reach_the_snapshot(tmp_path, cache_dir):
    data = make_data(tmp_path / "data")
    first = run_extract(data, progress=False)
    old_hash = next(e.content_hash for e in FeatureStore.open(first.store).snapshot("data").entries if e.key == "train/clip_01")
    edited = tiny_clip(seed=1)
    edited["frames"] = 255 - edited["frames"]
    save_clip(data / "train" / "clip_01.npz", edited)
    (data / "train" / "clip_02.npz").unlink()
    second = run_extract(data, progress=False)
    assert second.changes == {"added": 0, "changed": 1, "removed": 1, "unchanged": 10} and second.written == 1
    store = FeatureStore.open(second.store)
    on_disk = {f"{p.parent.name}/{p.stem}" for p in data.rglob("*.npz")}
    assert keys(store, "data") == on_disk
    entry = next(e for e in store.snapshot("data").entries if e.key == "train/clip_01")
    assert entry.content_hash != old_hash and entry.content_hash in store.clips
    trained = StoreDataset(store, None)
    assert {e.key for e in trained.entries} == on_disk  # training sees exactly the files in the folder


def test_predict_on_other_data_changes_no_evaluation_and_train_data_reads_its_own_snapshot(tmp_path, cache_dir):
    data = make_data(tmp_path / "data")
    summary = run_extract(data, progress=False)
    store = FeatureStore.open(summary.store)
    train(store, tmp_path / "run", QUICK, SMALL_MODEL, progress=False)
    before = json.loads(run("evaluate", tmp_path / "run", "--split", "test", "--json").stdout)

    other = tmp_path / "new-clips"
    for i in range(3):
        save_clip(other / "test" / f"n{i}.npz", tiny_clip(seed=100 + i))
    run("predict", tmp_path / "run", other, "--out", tmp_path / "pred.csv")
    assert len({line.split(",")[2] for line in (tmp_path / "pred.csv").read_text().splitlines()[1:]}) == 3
    after = json.loads(run("evaluate", tmp_path / "run", "--split", "test", "--json").stdout)
    assert after == before and after["clips"] == 2
    assert sorted(FeatureStore.open(summary.store).snapshot_names()) == ["data", "new-clips"]

    small = make_data(tmp_path / "small", 6)  # clips the store holds already, and fewer of them
    run("train", "--data", small, "--out", tmp_path / "run-small", "--epochs", "1", "--device", "cpu", "--config", _toml(tmp_path))
    config = json.loads((tmp_path / "run-small" / "config.json").read_text())
    assert config["dataset"] == "small"
    assert len(StoreDataset(FeatureStore.open(summary.store), None, dataset="small")) == 6


def _toml(tmp_path: Path) -> Path:
    (tmp_path / "small.toml").write_text(SMALL_TOML)
    return tmp_path / "small.toml"


@pytest.mark.parametrize("damage", ["removed", "truncated"])
def test_a_damaged_chunk_stops_train_and_evaluate_by_name_and_extract_repairs_it(tmp_path, cache_dir, damage):
    data = make_data(tmp_path / "data")
    summary = run_extract(data, progress=False)
    store = FeatureStore.open(summary.store)
    train(store, tmp_path / "run", QUICK, SMALL_MODEL, progress=False)
    before = json.loads(run("evaluate", tmp_path / "run", "--split", "val", "--json").stdout)
    (chunk,) = (p for p in (store.path / ZARR_DIR / SEGMENTS).glob("*/geometry/c/**/*") if p.is_file())
    if damage == "removed":
        chunk.unlink()
    else:
        chunk.write_bytes(chunk.read_bytes()[:10])

    for command in (["evaluate", tmp_path / "run", "--split", "val"], ["train", "--store", summary.fingerprint, "--out", tmp_path / "again",
                    "--epochs", "1", "--device", "cpu", "--config", _toml(tmp_path)]):  # fmt: skip
        stopped = run(*command, code=1)
        assert "array 'geometry'" in stopped.output and "rerun `msgvip extract`" in stopped.output
        assert "clip val/clip_00" in stopped.output or "clip train/" in stopped.output

    repaired = run_extract(data, progress=False)
    assert repaired.repaired == repaired.written == 12 and repaired.ok  # the one chunk held every tiny clip
    assert FeatureStore.open(summary.store).verify() == []
    assert json.loads(run("evaluate", tmp_path / "run", "--split", "val", "--json").stdout) == before


def test_one_huge_clip_changes_no_other_clips_ram(tmp_path, cache_dir):
    data = make_data(tmp_path / "data")
    store = FeatureStore.open(run_extract(data, progress=False).store)
    ram = {k: v.clone() for k, v in StoreDataset(store, "train", in_memory="yes")._cache.items()}
    save_clip(data / "test" / "long.npz", tiny_clip(seed=50, frames=500, slots=4))
    save_clip(data / "test" / "crowd.npz", tiny_clip(seed=51, frames=2, slots=500, height=64, width=64, people=40))
    store = FeatureStore.open(run_extract(data, progress=False).store)
    again = StoreDataset(store, "train", in_memory="yes")._cache
    assert set(again) == set(ram) and all(np.array_equal(again[k].numpy(), ram[k].numpy()) for k in ram)
    assert sum(v.numel() * v.element_size() for v in again.values()) == sum(v.numel() * v.element_size() for v in ram.values())


def test_gc_racing_extract_start_up_deletes_nothing_live(tmp_path, cache_dir):
    data = make_data(tmp_path / "data", 4)
    root = cache_root()
    spared = 0
    for _ in range(20):
        execute_gc(plan_gc(scan_cache(root), keep_last=0), root)  # each round creates its store afresh
        turn, done, outcome = threading.Lock(), threading.Event(), {}

        def extract() -> None:
            summary = run_extract(data, progress=False)
            with turn:  # no gc between the end of the run and this look at its store
                path = Path(summary.store)
                outcome["whole"] = not path.exists() or (FeatureStore.open(path).verify() == [] and keys(FeatureStore.open(path), "data"))
                done.set()

        worker = threading.Thread(target=extract)
        worker.start()
        while not done.is_set():  # gc as fast as it can while the extract creates and fills its store
            with turn:
                if not done.is_set():
                    plan = plan_gc(scan_cache(root), keep_last=0)
                    spared += sum(reason == "under lease (in use)" for _, reason in plan.spared)
                    execute_gc(plan, root)
        worker.join()
        # Gone entirely is allowed (gc may take it once the run has ended); half gone never is.
        assert outcome["whole"]
    assert spared >= 20  # gc met live stores (about one a round): the race was run, not only after the fact


def test_a_clip_longer_than_the_frame_embedding_sizes_it_at_start(tmp_path, cache_dir):
    data = make_data(tmp_path / "data", 9, frames=12)
    store = FeatureStore.open(run_extract(data, progress=False).store)
    summary = train(store, tmp_path / "run", QUICK, RankerConfig(**{**SMALL_MODEL.to_dict(), "max_frames": 8}), progress=False)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["max_frames"] == 12 and summary.epochs_run == 1
    assert evaluate_run(tmp_path / "run", store, "val")["clips"] == 2
    longer = tmp_path / "longer"
    save_clip(longer / "test" / "x.npz", tiny_clip(seed=3, frames=40))
    refused = run("predict", tmp_path / "run", longer, "--out", tmp_path / "p.csv", code=1)
    assert "clips of 40 frames" in refused.output and "at most 12" in refused.output


def test_max_clip_bytes_refuses_a_clip_by_its_headers_and_commits_the_others(tmp_path, cache_dir):
    data = make_data(tmp_path / "data", 6)
    save_clip(data / "train" / "big.npz", tiny_clip(seed=7, frames=40, height=64, width=64))  # 40*64*64*3 = 491,520 frame bytes
    result = run("extract", data, "--max-clip-bytes", "300K", "--json", code=1)
    summary = json.loads(result.stdout)
    assert summary["written"] == 6 and [e["path"].rsplit("/", 1)[1] for e in summary["errors"]] == ["big.npz"]
    assert "budget" in summary["errors"][0]["message"] or "bytes" in summary["errors"][0]["message"]
    assert "--max-clip-bytes" in run("extract", data, "--max-clip-bytes", "lots", code=2).output


def test_damage_is_repaired_even_when_the_hash_cache_is_gone(tmp_path, cache_dir):
    data = make_data(tmp_path / "data", 6)
    summary = run_extract(data, progress=False)
    store = FeatureStore.open(summary.store)
    (chunk,) = (p for p in (store.path / ZARR_DIR / SEGMENTS).glob("*/geometry/c/**/*") if p.is_file())
    chunk.unlink()
    for hashes in cache_dir.glob("content-hashes*"):
        hashes.unlink()  # a new machine, or a wiped cache: every clip is decoded again
    repaired = run_extract(data, progress=False)
    assert repaired.repaired == repaired.written == 6
    assert FeatureStore.open(summary.store).verify() == []


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign"])
def test_a_damaged_checkpoint_or_run_config_is_a_one_line_error(tmp_path, cache_dir, damage):
    import torch

    data = make_data(tmp_path / "data", 9)
    store = FeatureStore.open(run_extract(data, progress=False).store)
    train(store, tmp_path / "run", QUICK, SMALL_MODEL, progress=False)
    best = tmp_path / "run" / "best.pt"
    if damage == "garbage":
        best.write_text("garbage\n")
    elif damage == "truncated":
        best.write_bytes(best.read_bytes()[:1000])
    else:
        torch.save({"model": {}}, best)  # a checkpoint, but not one of msgvip's
    failed = run("evaluate", tmp_path / "run", "--split", "val", code=1)
    assert str(best) in failed.output and len(failed.output.strip().splitlines()) == 1
    (tmp_path / "run" / "config.json").write_text("{not json")
    failed = run("evaluate", tmp_path / "run", code=1)
    assert "config.json: unreadable" in failed.output and "damaged" in failed.output


def test_an_outlier_clip_is_batched_alone_and_pads_no_other_clip(tmp_path, cache_dir):
    data = tmp_path / "data"
    for i in range(40):
        save_clip(data / "train" / f"clip_{i:02d}.npz", tiny_clip(seed=i, frames=8, slots=5))
    save_clip(data / "train" / "outlier.npz", tiny_clip(seed=99, frames=400, slots=400, height=24, width=40, people=3))
    store = FeatureStore.open(run_extract(data, progress=False).store)
    dataset = StoreDataset(store, "train", in_memory="yes")
    outlier = next(i for i, e in enumerate(dataset.entries) if "outlier" in e.key)
    for seed in range(3):
        shapes = [(len(b.index), *b.person_mask.shape[1:], outlier in b.index.tolist()) for b in dataset.batches(8, shuffle=True, seed=seed, prefetch=0)]
        assert (1, 400, 400, True) in shapes  # the outlier in a batch of its own
        assert all((t, n) == (8, 5) for _, t, n, has in shapes if not has)  # every other batch at the small clips' size
        assert sum(size for size, *_ in shapes) == len(dataset)
        assert dataset.steps(8) - 2 <= len(shapes) <= dataset.steps(8) + 2
    uniform = StoreDataset(store, "train", in_memory="yes").batch_positions(np.array([p for p in range(len(dataset)) if p != outlier]), 8)
    assert [len(b) for b in uniform] == [8] * 5  # clips of one shape always fill whole batches


def test_a_clip_too_long_to_train_on_is_refused_before_the_first_epoch(tmp_path, cache_dir):
    data = make_data(tmp_path / "data")
    frames, boxes = 100_000, np.tile(np.array([[1, 1, 5, 5], [2, 2, 6, 7]], np.float32), (100_000, 1, 1))
    np.savez_compressed(data / "train" / "endless.npz", frames=np.zeros((frames, 8, 8, 3), np.uint8), bboxes=boxes,
                        person_mask=np.ones((frames, 2), bool), target_index=np.array(0), scene_category=np.array("03"))  # fmt: skip
    store = FeatureStore.open(run_extract(data, progress=False).store)
    started = time.monotonic()
    result = CliRunner().invoke(main, ["train", "--store", str(store.path), "--out", str(tmp_path / "run"), "--no-probe"])
    assert result.exit_code == 1 and "100000 frames x 2 slots) needs at least" in result.output and "GiB" in result.output, result.output
    assert time.monotonic() - started < 60 and not (tmp_path / "run" / "metrics.csv").exists()
