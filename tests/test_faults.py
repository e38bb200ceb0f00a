"""Faults a long batch job meets: concurrent extracts, gc during training, disk full, damaged indexes."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import zarr.storage
from click.testing import CliRunner
from conftest import assert_same_clips, save_clip, tiny_clip

from msgvip.cli import main
from msgvip.pipelines import run_extract
from msgvip.store import FeatureStore, HashCache
from msgvip.store.feature_store import COMMITS
from msgvip.store.fingerprint import is_fingerprint

SMALL_TOML = "[model]\nhidden = 16\ngat_heads = 2\ntemporal_heads = 2\nevent_heads = 2\npool_heads = 2\nrelation_heads = 2\nff_mult = 2\n"


def make_data(root: Path, count: int, frames: int = 8) -> Path:
    for i in range(count):
        save_clip(root / ("train" if i % 4 else "val") / f"clip_{i:03d}.npz", tiny_clip(seed=i, frames=frames, height=48, width=64, slots=5, people=1 + i % 4))
    return root


def msgvip(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "msgvip", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_two_extracts_at_once_both_finish_with_every_clip(tmp_path):
    data = make_data(tmp_path / "data", 200)
    reference = run_extract(data, cache_dir=tmp_path / "reference", progress=False)
    procs = [msgvip("extract", str(data), "--cache-dir", str(tmp_path / "cache"), "--json", "--num-workers", "0") for _ in range(2)]
    summaries = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and "Traceback" not in err, err[-2000:]
        summaries.append(json.loads(out))
    # Writers share nothing, so both may extract a clip the other has not committed yet; the
    # newest record wins and `cache compact` reclaims the spare rows.
    assert all(s["written"] + s["cached"] == 200 for s in summaries) and sum(s["written"] for s in summaries) >= 200
    store_dir = tmp_path / "cache" / reference.fingerprint
    assert_same_clips(store_dir, tmp_path / "reference" / reference.fingerprint)


def test_the_hash_cache_never_holds_a_write_lock_between_writes(tmp_path):
    # Two extracts on one cache root write the hash cache in turn; the second died with "database is
    # locked" a minute in when the first kept its transaction open for the whole run.
    first, second = HashCache(tmp_path), HashCache(tmp_path)
    second._db.execute("PRAGMA busy_timeout = 100")  # fail fast instead of waiting out the lock
    clip = save_clip(tmp_path / "clip.npz", tiny_clip())
    for k in range(3):
        first.put(clip, HashCache.stat(clip), f"{k:032x}", 0, "01")
        second.put(clip, HashCache.stat(clip), f"{k + 1:032x}", 1, "02")  # would raise if first still held the lock
    assert first.get(clip) == (f"{3:032x}", 1, "02")
    first.close(), second.close()


def test_a_rewritten_clip_with_the_same_size_and_mtime_is_seen_as_changed(tmp_path):
    cache = HashCache(tmp_path / "cache")
    clip = save_clip(tmp_path / "clip.npz", tiny_clip(seed=1))
    cache.put(clip, HashCache.stat(clip), "a" * 32, 0, "01")
    st = os.stat(clip)
    other = tiny_clip(seed=1)
    other["frames"] = other["frames"][:, ::-1].copy()  # same shapes, same file size
    save_clip(clip, other)
    os.utime(clip, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the old mtime restored
    assert os.stat(clip).st_size == st.st_size and os.stat(clip).st_mtime_ns == st.st_mtime_ns
    assert cache.get(clip) is None


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
    assert "used by 1 run" in result.output and Path(summary.store).exists()  # the run still needs it
    result = CliRunner().invoke(main, ["cache", "gc", "--keep-last", "0", "--include-referenced"])
    assert "freed" in result.output and not Path(summary.store).exists()  # collectable once training is gone, if told


def test_disk_full_keeps_committed_clips_and_a_rerun_completes(tmp_path, cache_dir, monkeypatch):
    data = make_data(tmp_path / "data", 150)
    real_set = zarr.storage.LocalStore.set
    writes = {"n": 0}

    async def filling_disk(self, key, value):
        if "/c/" in key:  # chunk writes fail once the "disk" is full: after two commits' worth
            writes["n"] += 1
            if writes["n"] > 6:
                raise OSError(errno.ENOSPC, "No space left on device", key)
        return await real_set(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", filling_disk)
    result = CliRunner().invoke(main, ["extract", str(data), "--num-workers", "0", "--batch-size", "16"])
    assert result.exit_code == 1 and "no space left" in result.output.lower() and "Traceback" not in result.output
    store = FeatureStore.open(next(p for p in cache_dir.iterdir() if is_fingerprint(p.name)))
    committed = len(store)
    assert 0 < committed < 150 and store.verify() == []

    monkeypatch.setattr(zarr.storage.LocalStore, "set", real_set)  # space is back
    final = run_extract(data, cache_dir=cache_dir, progress=False)
    assert final.ok and final.cached == committed and final.written == 150 - committed
    assert FeatureStore.open(Path(final.store)).verify() == []


def test_a_damaged_commit_record_is_reported_never_trusted_and_a_rerun_repairs(tmp_path, cache_dir):
    data = make_data(tmp_path / "data", 8)
    summary = run_extract(data, cache_dir=cache_dir, progress=False)
    store_dir = Path(summary.store)
    (record,) = (store_dir / COMMITS).iterdir()
    raw = bytearray(record.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    record.write_bytes(bytes(raw))
    before = sorted(p.relative_to(store_dir) for p in store_dir.rglob("*"))
    result = CliRunner().invoke(main, ["cache", "verify", summary.fingerprint])
    assert result.exit_code == 1 and "commit record damaged" in result.output and "Traceback" not in result.output
    assert sorted(p.relative_to(store_dir) for p in store_dir.rglob("*")) == before  # nothing deleted
    assert len(FeatureStore.open(store_dir)) == 0  # its clips count as not extracted
    again = run_extract(data, cache_dir=cache_dir, progress=False)
    assert (again.written, again.cached) == (8, 0)
    result = CliRunner().invoke(main, ["cache", "verify", summary.fingerprint])
    assert result.exit_code == 1 and "1 problems" in result.output  # the damaged record stays until compacted
    assert CliRunner().invoke(main, ["cache", "compact", summary.fingerprint]).exit_code == 0
    assert CliRunner().invoke(main, ["cache", "verify", summary.fingerprint]).exit_code == 0


def test_a_store_in_use_survives_its_lease_file_being_unlinked(tmp_path, cache_dir):
    # the kernel's lock follows the inode: unlinking the lease file (a tmp cleaner) leaves its
    # holder locking a file nobody else finds, but the store's directory is locked too
    summary = run_extract(make_data(tmp_path / "data", 24), cache_dir=cache_dir, progress=False)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom msgvip.store import FeatureStore\n"
         f"store = FeatureStore.open({summary.store!r})\nwith store.lease():\n    print('held', flush=True)\n    time.sleep(120)"],
        stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        lease = cache_dir / ".locks" / f"{summary.fingerprint}.lease"
        for _ in range(3):
            lease.unlink(missing_ok=True)
            result = CliRunner().invoke(main, ["cache", "gc", "--max-size", "0", "--include-referenced"])
            assert result.exit_code == 0 and "under lease" in result.output and Path(summary.store).is_dir(), result.output
            compacted = CliRunner().invoke(main, ["cache", "compact", summary.fingerprint])
            assert compacted.exit_code == 1 and "in use" in compacted.output
        assert FeatureStore.open(Path(summary.store)).verify() == []
    finally:
        holder.kill()
        holder.wait()
    result = CliRunner().invoke(main, ["cache", "gc", "--max-size", "0", "--include-referenced"])
    assert "freed" in result.output and not Path(summary.store).exists()  # free once its holder is gone


def test_evaluate_beside_compact_never_reports_false_damage(tmp_path, cache_dir):
    data = make_data(tmp_path / "data", 40)
    summary = run_extract(data, cache_dir=cache_dir, progress=False)
    (tmp_path / "small.toml").write_text(SMALL_TOML)
    env = {**os.environ, "MSGVIP_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1"}
    trained = subprocess.run([sys.executable, "-m", "msgvip", "train", "--store", summary.fingerprint, "--out", str(tmp_path / "run"), "--epochs", "1",
                              "--config", str(tmp_path / "small.toml"), "--no-probe"], env=env, capture_output=True, text=True)  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-2000:]
    compactor = subprocess.Popen([sys.executable, "-c", "import sys\nfrom msgvip.store.compact import compact\nfrom msgvip.store import open_storage\n"
                                  "from msgvip.store.feature_store import StoreError\nroot = open_storage(sys.argv[1])\nfor _ in range(400):\n"
                                  "    try:\n        compact(root, sys.argv[2])\n    except StoreError:\n        pass\n",
                                  str(cache_dir), summary.fingerprint], env=env)  # fmt: skip
    try:
        for _ in range(6):
            evaluated = subprocess.run([sys.executable, "-m", "msgvip", "evaluate", str(tmp_path / "run"), "--split", "val"], env=env, capture_output=True, text=True)
            assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    finally:
        compactor.kill()
        compactor.wait()
    assert FeatureStore.open(Path(summary.store)).verify() == []
