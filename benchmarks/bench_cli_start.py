"""How long msgvip takes to start: `msgvip --help`, `--version` and `cache ls` (an empty cache),
each as a fresh process, against a bare `python -c pass` and against importing torch, measured
in the same run (median of --repeats).

    .venv/bin/python benchmarks/bench_cli_start.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

COMMANDS = {
    "python -c pass": ["-c", "pass"],
    "python -c 'import torch'": ["-c", "import torch"],
    "msgvip --help": ["-m", "msgvip", "--help"],
    "msgvip --version": ["-m", "msgvip", "--version"],
    "msgvip cache ls": ["-m", "msgvip", "cache", "ls"],
}


def seconds(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *argv], check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "MSGVIP_CACHE": os.path.join(cache, "cache")}
        times = {name: statistics.median(seconds(argv, env) for _ in range(args.repeats)) for name, argv in COMMANDS.items()}
    bare, torch = times["python -c pass"], times["python -c 'import torch'"]
    print(f"{'command':<28} {'median s':>9} {'- bare python':>14} {'/ import torch':>15}")
    for name, value in times.items():
        print(f"{name:<28} {value:9.3f} {value - bare:14.3f} {value / torch:15.2f}")


if __name__ == "__main__":
    main()
