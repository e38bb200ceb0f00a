"""Shared fixtures: tiny clips written by the tests themselves, and a cache dir per test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def tiny_clip(seed: int = 0, frames: int = 6, slots: int = 4, height: int = 24, width: int = 40, people: int = 3) -> dict[str, np.ndarray]:
    """A small valid clip: ``people`` boxes drifting inside the frame, the rest padding."""
    rng = np.random.default_rng(seed)
    bboxes = np.zeros((frames, slots, 4), np.float32)
    mask = np.zeros((frames, slots), bool)
    for slot in rng.choice(slots, people, replace=False):
        x, y = rng.uniform(0, width - 12), rng.uniform(0, height - 14)
        drift = rng.normal(0, 0.5, 2)
        for t in range(frames):
            bboxes[t, slot] = [x + drift[0] * t, y + drift[1] * t, x + 10 + drift[0] * t, y + 12 + drift[1] * t]
        mask[:, slot] = True
    bboxes = np.clip(bboxes, 0, [width, height, width, height]).astype(np.float32)
    return {
        "frames": rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8),
        "bboxes": bboxes,
        "person_mask": mask,
        "target_index": np.array(int(np.flatnonzero(mask[0])[0])),
        "scene_category": np.array("03"),
    }


def save_clip(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def assert_same_clips(store_dir: Path, reference_dir: Path) -> None:
    """Two stores hold the same clips, clip for clip: index records, checksums and arrays."""
    from msgvip.store import FeatureStore

    done, ref = FeatureStore.open(store_dir), FeatureStore.open(reference_dir)
    assert set(done.entries) == set(ref.entries)
    for digest, entry in ref.entries.items():
        mine = done.entries[digest]
        assert (mine.clip_id, mine.split, mine.target, mine.checksums) == (entry.clip_id, entry.split, entry.target, entry.checksums)
        got, want = done.read_clip(mine), ref.read_clip(entry)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
    assert done.verify() == []


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache root; $MSGVIP_CACHE points at it so no test touches the user's cache."""
    root = tmp_path / "cache"
    monkeypatch.setenv("MSGVIP_CACHE", str(root))
    return root


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """<data>/{train,val}/*.npz with 6 + 2 tiny valid clips."""
    data = tmp_path / "data"
    for i in range(8):
        save_clip(data / ("train" if i < 6 else "val") / f"clip_{i}.npz", tiny_clip(seed=i))
    return data
