"""A CLI that starts fast: commands that never train import neither torch nor torch_geometric."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "torch_geometric", "transformers", "optuna", "dask", "sklearn", "matplotlib")


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["cache", "ls"], ["train", "--help"], ["runs", "--help"]])
def test_a_command_that_never_trains_imports_no_heavy_library(argv, tmp_path):
    script = (
        "import json, sys\n"
        "from msgvip.cli import main\n"
        f"try:\n    main({argv!r}, standalone_mode=False)\n"
        "except SystemExit:\n    pass\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={"MSGVIP_CACHE": str(tmp_path / "cache"), "PATH": "", "HOME": str(tmp_path),
                                                                                          "PYTHONPATH": ":".join(sys.path)})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
