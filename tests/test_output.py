"""Output for a terminal and for a log: on a pipe, progress comes as whole lines (no carriage-return
redraws); with --quiet only the final summary is printed."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import save_clip, tiny_clip

SMALL = ["--set", "model.hidden=16", "--set", "model.gat_heads=2", "--set", "model.temporal_heads=2", "--epochs", "2"]


def msgvip(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "msgvip", *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


def test_progress_on_a_pipe_is_lines_and_quiet_is_only_the_summary(tmp_path):
    for i in range(12):
        save_clip(tmp_path / "data" / ("train" if i < 8 else "val") / f"clip_{i:02d}.npz", tiny_clip(seed=i, slots=4, people=2 + i % 2))
    env = {**os.environ, "MSGVIP_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    piped = msgvip("extract", tmp_path / "data", env=env)
    assert piped.returncode == 0, piped.stderr
    assert "\r" not in piped.stderr and "extract: 12/12 clips (100%)" in piped.stderr
    assert "crops/s" not in piped.stderr + piped.stdout  # geometry cuts no crops

    fp = next(p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith("."))
    trained = msgvip("train", "--store", fp, "--out", tmp_path / "run", *SMALL, env=env)
    assert trained.returncode == 0 and "\r" not in trained.stdout + trained.stderr and "epoch 1: loss" in trained.stdout
    quiet = msgvip("--quiet", "train", "--store", fp, "--out", tmp_path / "quiet", *SMALL, env=env)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    assert "epoch 1: loss" not in quiet.stdout and "probe baseline" not in quiet.stdout
    assert "val split (the split the best epoch was chosen on)" in quiet.stdout and f"run: {tmp_path / 'quiet'}" in quiet.stdout
    again = msgvip("--quiet", "extract", tmp_path / "data", env=env)
    assert again.stderr == "" and again.stdout.startswith("extracted 0 clips, 12 already cached")
