"""SIGKILL in the middle of `msgvip extract`, then a rerun: the store ends equal, clip for clip, to
an uninterrupted run's, and no reader ever sees a half-written clip."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
from conftest import assert_same_clips, save_clip, tiny_clip

from msgvip.pipelines import run_extract
from msgvip.store import FeatureStore
from msgvip.store.feature_store import INDEX_FILE


def committed_lines(store_dir) -> int:
    try:
        with open(store_dir / INDEX_FILE, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def assert_visible_rows_are_whole(store_dir) -> int:
    store = FeatureStore.open(store_dir)
    assert store.verify() == []
    return len(store)


def test_sigkill_at_several_points_then_rerun_equals_uninterrupted(tmp_path):
    data = tmp_path / "data"
    for i in range(400):
        save_clip(data / ("train" if i % 5 else "val") / f"clip_{i:03d}.npz", tiny_clip(seed=i, frames=16, height=96, width=160, slots=8, people=1 + i % 6))
    reference = run_extract(data, cache_dir=tmp_path / "reference", progress=False)
    store_dir = tmp_path / "cache" / reference.fingerprint

    # Each run is killed once it has committed `point` more clips than it found. Commits land a
    # chunk (64 of these clips) at a time, so each kill lands mid-run with work left to redo.
    kill_points = np.random.default_rng(0).choice(np.arange(5, 100), 3, replace=False)
    killed = 0
    for point in kill_points:
        target = committed_lines(store_dir) + point
        proc = subprocess.Popen(
            [sys.executable, "-m", "msgvip", "extract", str(data), "--cache-dir", str(tmp_path / "cache"), "--json", "--num-workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        polls = 0
        while proc.poll() is None and committed_lines(store_dir) < target:
            time.sleep(0.002)
            polls += 1
            if polls % 25 == 0 and (store_dir / INDEX_FILE).exists():
                assert_visible_rows_are_whole(store_dir)  # readers racing the writer see whole clips only
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            killed += 1
        proc.wait()
        assert_visible_rows_are_whole(store_dir)
    assert killed == 3, "an extract finished before it could be killed; the test needs more clips"

    final = run_extract(data, cache_dir=tmp_path / "cache", progress=False)
    assert final.ok and final.written + final.cached == 400 and 0 < final.written < 400 - 3 * 64
    assert_same_clips(store_dir, tmp_path / "reference" / reference.fingerprint)
    assert FeatureStore.open(store_dir).state()["complete"]
