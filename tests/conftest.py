"""Shared fixtures: tiny clips written by the tests themselves, and a cache dir per test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch


def random_batch(dims: dict[str, int], B: int, T: int, N: int, p: float, generator: torch.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Model inputs: random features (B, T, N, D) per family and a person mask (B, T, N) with
    every clip holding at least one person."""
    mask = torch.rand(B, T, N, generator=generator) < p
    mask[:, 0, 0] = True
    features = {k: torch.randn(B, T, N, d, generator=generator) for k, d in dims.items()}
    return features, mask


def garbage_like(x: torch.Tensor) -> torch.Tensor:
    """What a padded slot or absent person-frame might hold: huge values, NaN, inf."""
    out = torch.randn_like(x) * 1e6
    out.view(-1)[::7] = float("nan")
    out.view(-1)[3::11] = float("inf")
    return out


def with_garbage(features: dict[str, torch.Tensor], mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """``features`` with garbage wherever ``mask`` (B, T, N) is False."""
    return {k: torch.where(mask.unsqueeze(-1), v, garbage_like(v)) for k, v in features.items()}


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


def bytes_named_file(folder: Path, name: bytes) -> Path:
    """An (empty) file whose name is raw bytes, e.g. not valid UTF-8; skips the test where the file
    system refuses such names."""
    import os

    folder.mkdir(parents=True, exist_ok=True)
    path = os.path.join(os.fsencode(folder), name)
    try:
        open(path, "wb").close()
    except OSError:
        pytest.skip("this file system refuses file names that are not UTF-8")
    return Path(os.fsdecode(path))


def assert_same_clips(store_dir: Path, reference_dir: Path, dataset: str = "data") -> None:
    """Two stores hold the same dataset, clip for clip: snapshot entries, checksums and rows."""
    from msgvip.store import FeatureStore

    done, ref = FeatureStore.open(store_dir), FeatureStore.open(reference_dir)
    mine, theirs = done.snapshot(dataset), ref.snapshot(dataset)
    assert [(e.key, e.content_hash, e.split, e.target, e.scene) for e in mine.entries] == [
        (e.key, e.content_hash, e.split, e.target, e.scene) for e in theirs.entries
    ]
    for entry in theirs.entries:
        assert done.clips[entry.content_hash].checksums == ref.clips[entry.content_hash].checksums
        got, want = done.read_clip(entry.content_hash), ref.read_clip(entry.content_hash)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
    assert done.verify() == []


def committed_clips(store_dir: Path) -> int:
    """Clips committed to the store so far (0 before it exists)."""
    from msgvip.store import FeatureStore, StoreError

    try:
        return len(FeatureStore.open(store_dir))
    except StoreError:
        return 0


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


LEFTOVER_GRACE_S = 5.0  # processes a test just stopped may still be exiting
PR_SET_CHILD_SUBREAPER = 36  # from <linux/prctl.h>


def _adopt_orphans() -> None:
    """Make this pytest process the reaper of its subtree (Linux): a process a test orphans (the
    forkserver of a killed `msgvip extract`, say) is reparented here, not to init, so it stays a
    descendant and the check below sees it instead of letting it escape."""
    import ctypes
    import sys

    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _leftover_processes() -> list:
    """Running descendants of this process, minus multiprocessing's own helpers of it: the
    forkserver and resource tracker serve this process and exit when it does (their children
    are not exempt)."""
    from multiprocessing import forkserver, resource_tracker

    import psutil

    own_helpers = {getattr(forkserver._forkserver, "_forkserver_pid", None), getattr(resource_tracker._resource_tracker, "_pid", None)}
    leftovers = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.pid not in own_helpers and proc.status() != psutil.STATUS_ZOMBIE:
                leftovers.append(proc)
        except psutil.NoSuchProcess:
            pass
    return leftovers


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind():
    """Fail the session, naming them, if processes the tests started still run at its end; then
    end them, so `make test` leaves nothing behind either way."""
    import time

    import psutil

    _adopt_orphans()
    yield
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    while (leftovers := _leftover_processes()) and time.monotonic() < deadline:
        time.sleep(0.1)
    if not leftovers:
        return
    described = []
    for proc in leftovers:
        try:
            described.append(f"  pid {proc.pid} (ppid {proc.ppid()}): {' '.join(proc.cmdline())[:300]}")
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    pytest.fail(f"{len(leftovers)} processes started by the tests still ran {LEFTOVER_GRACE_S:.0f} s after the session ended (now killed):\n" + "\n".join(described))


@pytest.fixture(autouse=True)
def cli_never_shows_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every in-process CLI call of every test: no 'Traceback' in its stdout or stderr, and no
    exception escaping the command (a user error is a one-line message and an exit code)."""
    from click.testing import CliRunner

    invoke = CliRunner.invoke

    def checked(self, cli, args=None, *rest, **kwargs):
        result = invoke(self, cli, args, *rest, **kwargs)
        assert "Traceback" not in result.output, f"msgvip {args}: a traceback reached the user:\n{result.output[-3000:]}"
        debug = "--debug" in (args or []) or (kwargs.get("env") or {}).get("MSGVIP_DEBUG") == "1"  # tracebacks asked for
        escaped = result.exception is not None and not isinstance(result.exception, SystemExit)
        assert not escaped or debug, f"msgvip {args}: {type(result.exception).__name__} escaped: {result.exception}"
        return result

    monkeypatch.setattr(CliRunner, "invoke", checked)
