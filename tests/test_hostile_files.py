"""Text and files as data: scene names that look like mathtext or hold control characters, clip
keys longer than a file name, FIFOs and devices where a run keeps its files, impossible store
timestamps. Each is shown or refused in a line; nothing hangs, crashes or writes invalid XML."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from msgvip.cli import main
from msgvip.config import ExtractConfig
from msgvip.pipelines import run_extract
from msgvip.ranker import RankerConfig, TrainConfig, train
from msgvip.store import FeatureStore
from msgvip.views import write_report
from conftest import save_clip, tiny_clip

SCENES = ("$\\foo$", "$x^{$", "a$b$c", "ctrl\x01\u202ertl")
LONG_NAME = "a" * 248  # with .npz, as long as a file name gets; the clip key holds its split folder too
TINY_MODEL = RankerConfig(hidden=16, gat_heads=2, temporal_heads=2, event_heads=2, pool_heads=2, relation_heads=2, ff_mult=2)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, FeatureStore, Path]:
    """(run dir, store, cache root): a one-epoch run over clips with hostile scene names and a long key."""
    root = tmp_path_factory.mktemp("hostile")
    for i in range(16):
        clip = tiny_clip(seed=i, slots=4, people=2 + i % 3)
        clip["scene_category"] = np.array(SCENES[i % len(SCENES)])
        split = "train" if i < 8 else "val" if i < 11 else "test"
        save_clip(root / "data" / split / (f"{LONG_NAME}.npz" if i == 15 else f"clip_{i:02d}.npz"), clip)
    store = FeatureStore.open(Path(run_extract(root / "data", ExtractConfig(num_workers=0), cache_dir=root / "cache", progress=False).store))
    train(store, root / "run", TrainConfig(epochs=1, batch_size=4, device="cpu"), TINY_MODEL, progress=False)
    return root / "run", store, root / "cache"


def test_report_draws_scene_names_literally_into_valid_svg(run):
    run_dir, store, _ = run
    page = write_report(run_dir, store=store)
    assert page.is_file()
    figure = page.parent / "figures" / "by-scene.svg"
    ElementTree.parse(figure)  # well-formed XML
    text = figure.read_text()
    assert "$x^{$" in text and "a$b$c" in text and "\\u0001" in text and "\\u202e" in text


def test_a_clip_key_longer_than_a_file_name_is_shown(run, tmp_path):
    run_dir, store, cache = run
    key = next(e.key for e in store.snapshot("data").entries if LONG_NAME in e.key)
    assert len(key) >= 248
    result = CliRunner().invoke(main, ["show", str(run_dir), key, "--cache-dir", str(cache)])
    assert result.exit_code == 0, result.output
    assert all(len(p.name) < 120 for p in (run_dir / "show").iterdir())


def test_runs_ls_beside_a_fifo_or_a_device_returns_and_names_them(run, tmp_path):
    run_dir, store, _ = run
    runs = tmp_path / "runs"
    for name in ("fifo-metrics", "fifo-evaluation", "zero-config"):
        (runs / name).mkdir(parents=True)
        for file in ("config.json", "metrics.csv"):
            (runs / name / file).write_bytes((run_dir / file).read_bytes())
    os.unlink(runs / "fifo-metrics" / "metrics.csv")
    os.mkfifo(runs / "fifo-metrics" / "metrics.csv")
    os.mkfifo(runs / "fifo-evaluation" / "evaluate-test.json")
    os.unlink(runs / "zero-config" / "config.json")
    (runs / "zero-config" / "config.json").symlink_to("/dev/zero")
    done = subprocess.run([sys.executable, "-m", "msgvip", "runs", "ls", str(runs)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    problems = [line for line in done.stdout.splitlines() if line.startswith("problem:")]
    assert len(problems) == 3 and all("refusing to read it" in line for line in problems), done.stdout
    assert any("not a regular file" in line and "metrics.csv" in line for line in problems)


@pytest.mark.parametrize("last_used", [b"-inf", b"nan", b"garbage\xff", b"1e300"])
def test_cache_ls_lists_a_store_whatever_its_last_used_file_says(run, last_used):
    _, store, cache = run
    (Path(store.location) / "last_used").write_bytes(last_used)
    result = CliRunner().invoke(main, ["cache", "ls", "--cache-dir", str(cache)])
    assert result.exit_code == 0 and store.fingerprint[:12] in result.output, result.output
    store.touch()


def test_cache_ls_lists_a_store_with_a_flipped_byte_as_damaged(run, tmp_path):
    _, store, cache = run
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    meta = copy / store.fingerprint / "meta.json"
    data = bytearray(meta.read_bytes())
    data[len(data) // 2] ^= 0x01
    meta.write_bytes(bytes(data))
    result = CliRunner().invoke(main, ["cache", "ls", "--cache-dir", str(copy)])
    assert result.exit_code == 0 and "damaged" in result.output, result.output
    listed = json.loads(CliRunner().invoke(main, ["cache", "ls", "--cache-dir", str(copy), "--json"]).stdout)
    assert [s["state"] for s in listed] == ["damaged"]
