"""Faults a long batch job meets: concurrent extracts, gc during training, disk full, damaged indexes."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zarr.storage
from click.testing import CliRunner
from conftest import assert_same_clips, save_clip, tiny_clip

from msgvip.cli import main
from msgvip.pipelines import run_extract
from msgvip.store import FeatureStore, StoreError
from msgvip.store.feature_store import INDEX_FILE, ZARR_DIR

SMALL_TOML = "[model]\nhidden = 16\ngat_heads = 2\ntemporal_heads = 2\nevent_heads = 2\npool_heads = 2\nrelation_heads = 2\nff_mult = 2\n"


def make_data(root: Path, count: int, frames: int = 8) -> Path:
    for i in range(count):
        save_clip(root / ("train" if i % 4 else "val") / f"clip_{i:03d}.npz", tiny_clip(seed=i, frames=frames, height=48, width=64, slots=5, people=1 + i % 4))
    return root


def msgvip(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "msgvip", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_two_extracts_at_once_commit_every_clip_exactly_once(tmp_path):
    data = make_data(tmp_path / "data", 200)
    reference = run_extract(data, cache_dir=tmp_path / "reference", progress=False)
    procs = [msgvip("extract", str(data), "--cache-dir", str(tmp_path / "cache"), "--json", "--num-workers", "0") for _ in range(2)]
    summaries = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        summaries.append(json.loads(out))
    assert sum(s["written"] for s in summaries) == 200  # each clip written by exactly one of them
    store_dir = tmp_path / "cache" / reference.fingerprint
    lines = [json.loads(line)["content_hash"] for line in (store_dir / INDEX_FILE).read_text().splitlines()]
    assert len(lines) == len(set(lines)) == 200
    assert_same_clips(store_dir, tmp_path / "reference" / reference.fingerprint)


def test_gc_while_training_reads_the_store(tmp_path, cache_dir):
    data = make_data(tmp_path / "data", 24)
    summary = run_extract(data, cache_dir=cache_dir, progress=False)
    (tmp_path / "small.toml").write_text(SMALL_TOML)
    env = {**os.environ, "MSGVIP_CACHE": str(cache_dir)}
    trainer = msgvip("train", "--store", summary.fingerprint, "--out", str(tmp_path / "run"), "--epochs", "40", "--patience", "100",
                     "--config", str(tmp_path / "small.toml"), "--device", "cpu", env=env)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "run" / "latest.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert trainer.poll() is None, "training ended before gc could race it"
        result = CliRunner().invoke(main, ["cache", "gc", "--keep-last", "0"])
        assert result.exit_code == 0 and "under lease" in result.output
        assert FeatureStore.open(Path(summary.store)).verify() == []
    finally:
        trainer.kill()
        trainer.wait()
    result = CliRunner().invoke(main, ["cache", "gc", "--keep-last", "0"])
    assert "freed" in result.output and not Path(summary.store).exists()  # collectable once training is gone


def test_disk_full_keeps_committed_clips_and_a_rerun_completes(tmp_path, cache_dir, monkeypatch):
    data = make_data(tmp_path / "data", 150)
    real_set = zarr.storage.LocalStore.set
    writes = {"n": 0}

    async def filling_disk(self, key, value):
        writes["n"] += 1
        if writes["n"] > 8 and "/c/" in key:  # chunk writes fail once the "disk" is full
            raise OSError(errno.ENOSPC, "No space left on device", key)
        return await real_set(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", filling_disk)
    result = CliRunner().invoke(main, ["extract", str(data), "--num-workers", "0", "--batch-size", "16"])
    assert result.exit_code == 1 and "no space left" in result.output.lower() and "Traceback" not in result.output
    store = FeatureStore.open(next(p for p in cache_dir.iterdir() if p.is_dir()))
    committed = len(store)
    assert 0 < committed < 150 and store.verify() == []

    monkeypatch.setattr(zarr.storage.LocalStore, "set", real_set)  # space is back
    final = run_extract(data, cache_dir=cache_dir, progress=False)
    assert final.ok and final.cached == committed and final.written == 150 - committed
    assert FeatureStore.open(Path(final.store)).verify() == []


def test_missing_or_foreign_index_is_reported_and_nothing_is_deleted(tmp_path, cache_dir):
    data = make_data(tmp_path / "data", 8)
    summary = run_extract(data, cache_dir=cache_dir, progress=False)
    store_dir = Path(summary.store)
    index = (store_dir / INDEX_FILE).read_text()

    foreign = [json.loads(line) for line in index.splitlines()]
    for entry in foreign:
        entry["checksums"] = {"appearance": "0" * 16}
    (store_dir / INDEX_FILE).write_text("".join(json.dumps(e) + "\n" for e in foreign))
    before = sorted(p.relative_to(store_dir) for p in store_dir.rglob("*"))
    with pytest.raises(StoreError, match="another store"):
        FeatureStore.open(store_dir)
    result = CliRunner().invoke(main, ["cache", "verify", summary.fingerprint])
    assert result.exit_code == 1 and "another store" in result.output and "Traceback" not in result.output
    assert sorted(p.relative_to(store_dir) for p in store_dir.rglob("*")) == before

    (store_dir / INDEX_FILE).unlink()
    result = CliRunner().invoke(main, ["cache", "verify", summary.fingerprint])
    assert result.exit_code == 1 and "index.jsonl is missing" in result.output
    assert (store_dir / ZARR_DIR / "geometry").is_dir()
