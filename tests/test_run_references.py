"""Runs that know their store, a cache that knows its runs: `cache gc` spares a store a run uses."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from msgvip.cli import main
from msgvip.pipelines.extract import run_extract
from msgvip.pipelines.runs import list_runs
from msgvip.store import open_storage
from msgvip.store.cache import store_fingerprints
from msgvip.store.references import references
from conftest import save_clip, tiny_clip


def train_one(tmp_path: Path, cache_dir: Path, name: str) -> tuple[str, Path]:
    data = tmp_path / "data"
    if not data.exists():
        for i in range(8):
            save_clip(data / ("train" if i < 5 else "val") / f"clip_{i:02d}.npz", tiny_clip(seed=i, slots=4, people=2 + i % 2))
    fp = Path(run_extract(data, cache_dir=cache_dir, progress=False).store).name
    run = tmp_path / "runs" / name
    result = CliRunner().invoke(main, ["train", "--store", fp, "--out", str(run), "--epochs", "1", "--no-probe",
                                       "--set", "model.hidden=16", "--set", "model.gat_heads=2", "--set", "model.temporal_heads=2"])  # fmt: skip
    assert result.exit_code == 0, result.output
    return fp, run


def test_gc_spares_a_store_a_run_uses_until_told_and_the_run_then_says_how_to_rebuild_it(tmp_path, cache_dir):
    fp, run = train_one(tmp_path, cache_dir, "a")
    train_one(tmp_path, cache_dir, "b")
    listed = CliRunner().invoke(main, ["cache", "ls", "--json"])
    assert [store["runs"] for store in json.loads(listed.output)] == [[str(tmp_path / "runs" / "a"), str(tmp_path / "runs" / "b")]]

    kept = CliRunner().invoke(main, ["cache", "gc", "--keep-last", "0"])
    assert kept.exit_code == 0, kept.output
    assert f"keep   {fp[:12]}" in kept.output and "used by 2 runs" in kept.output and str(run) in kept.output
    assert store_fingerprints(open_storage(str(cache_dir))) == [fp]

    removed = CliRunner().invoke(main, ["cache", "gc", "--keep-last", "0", "--include-referenced"])
    assert removed.exit_code == 0 and "freed" in removed.output, removed.output
    assert store_fingerprints(open_storage(str(cache_dir))) == []

    (row,) = [r for r in list_runs(tmp_path / "runs") if r.name == "a"]
    assert row.problem is not None and f"its store {fp[:12]} is gone" in row.problem and "rebuild it with: msgvip extract" in row.problem
    evaluated = CliRunner().invoke(main, ["evaluate", str(run), "--split", "val"])
    assert evaluated.exit_code == 1 and "is gone" in evaluated.output and "rebuild it with: msgvip extract" in evaluated.output
    command = evaluated.output.split("rebuild it with: ")[1].split(" (or pass")[0]
    program, *args = shlex.split(command)
    assert program == "msgvip"
    rebuilt = subprocess.run([sys.executable, "-m", "msgvip", *args], capture_output=True, text=True)
    assert rebuilt.returncode == 0, rebuilt.stderr
    again = CliRunner().invoke(main, ["evaluate", str(run), "--split", "val"])
    assert again.exit_code == 0, again.output  # the same fingerprint: the run evaluates on the rebuilt store


def test_a_reference_whose_run_is_gone_is_pruned(tmp_path, cache_dir):
    fp, run = train_one(tmp_path, cache_dir, "a")
    root = open_storage(str(cache_dir))
    assert [r.path for r in references(root, fp)] == [str(run)]
    shutil.rmtree(run)
    assert references(root, fp) == [] and references(root, fp, prune=False) == []
    gc = CliRunner().invoke(main, ["cache", "gc", "--keep-last", "0"])
    assert gc.exit_code == 0 and "freed" in gc.output, gc.output


def test_a_store_that_is_there_but_damaged_is_not_called_gone(tmp_path, cache_dir):
    fp, run = train_one(tmp_path, cache_dir, "a")
    (cache_dir / fp / "meta.json").write_text("{}")
    evaluated = CliRunner().invoke(main, ["evaluate", str(run), "--split", "val"])
    assert evaluated.exit_code == 1 and "cannot be opened" in evaluated.output and "is gone" not in evaluated.output, evaluated.output
