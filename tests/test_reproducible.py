"""The same command gives the same numbers, whatever else the machine is doing."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import torch
from click.testing import CliRunner

from msgvip.cli import main
from msgvip.data.synthetic import DemoDataConfig, write_demo_data
from msgvip.pipelines.extract import run_extract

TIMINGS = ("seconds", "data_wait_fraction")


def _metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMINGS} for row in csv.DictReader(f)]


def test_a_busy_machine_changes_no_number_of_a_run(tmp_path):
    write_demo_data(tmp_path / "data", DemoDataConfig(clips=80, frames=12, persons=6, height=48, width=80, seed=5))
    store = run_extract(tmp_path / "data", cache_dir=tmp_path / "cache", progress=False).store
    command = ["train", "--store", str(store), "--epochs", "3", "--no-probe"]
    quiet = CliRunner().invoke(main, [*command, "--out", str(tmp_path / "quiet")])
    assert quiet.exit_code == 0, quiet.output
    # two processes spinning on the two cores: thread timings shift, the sums must not
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        busy = CliRunner().invoke(main, [*command, "--out", str(tmp_path / "busy")])
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert busy.exit_code == 0, busy.output
    assert _metrics(tmp_path / "quiet") == _metrics(tmp_path / "busy")
    runtime = json.loads((tmp_path / "busy" / "config.json").read_text())["runtime"]
    assert runtime == {"threads": torch.get_num_threads(), "torch": str(torch.__version__), "deterministic": True}
    assert not torch.are_deterministic_algorithms_enabled()  # restored for the rest of the process
