"""SIGKILL in the middle of `msgvip extract`, then a rerun: the store ends equal, clip for clip, to
an uninterrupted run's, and no reader ever sees a half-written clip."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
from conftest import assert_same_clips, committed_clips, save_clip, tiny_clip

from msgvip.pipelines import run_extract
from msgvip.store import FeatureStore
from msgvip.store.feature_store import COMMIT_EVERY_CLIPS

KILLS = 10


def assert_visible_rows_are_whole(store_dir) -> None:
    assert FeatureStore.open(store_dir).verify() == []


def test_sigkill_at_ten_random_points_then_rerun_equals_uninterrupted(tmp_path):
    data = tmp_path / "data"
    count = (2 * KILLS + 3) * COMMIT_EVERY_CLIPS  # a killed run commits one or two batches
    for i in range(count):
        save_clip(data / ("train" if i % 5 else "val") / f"clip_{i:04d}.npz", tiny_clip(seed=i, frames=4, height=32, width=48, slots=6, people=1 + i % 5))
    reference = run_extract(data, cache_dir=tmp_path / "reference", progress=False)
    store_dir = tmp_path / "cache" / reference.fingerprint

    # Each run is killed at a random moment after its first commit: mid-run, with work left to redo.
    delays = np.random.default_rng(0).uniform(0.0, 0.05, KILLS)
    killed = 0
    for delay in delays:
        start = committed_clips(store_dir)
        proc = subprocess.Popen(
            [sys.executable, "-m", "msgvip", "extract", str(data), "--cache-dir", str(tmp_path / "cache"), "--json", "--num-workers", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        polls = 0
        while proc.poll() is None and committed_clips(store_dir) <= start:
            time.sleep(0.002)
            polls += 1
            if polls % 50 == 0 and start:
                assert_visible_rows_are_whole(store_dir)  # readers racing the writer see whole clips only
        time.sleep(delay)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            killed += 1
        proc.wait()
        assert_visible_rows_are_whole(store_dir)
    assert killed == KILLS, "an extract finished before it could be killed; the test needs more clips"
    assert FeatureStore.open(store_dir).snapshot_names() == []  # no killed run wrote a snapshot

    final = run_extract(data, cache_dir=tmp_path / "cache", progress=False)
    assert final.ok and final.written + final.cached == count and 0 < final.written < count
    assert_same_clips(store_dir, tmp_path / "reference" / reference.fingerprint)
