"""SIGKILL `msgvip extract` mid-run and nothing it started survives: decode workers, their
forkserver, dask workers and resource trackers all end within seconds (issue #8, item 4)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from conftest import save_clip, tiny_clip

CLIPS = 400  # enough that the decode workers are still running when the test sees them
START_TIMEOUT_S = 120  # torch imports and worker start-up on a loaded two-core machine
EXIT_TIMEOUT_S = 10  # a killed run's forkserver may first finish its preload imports (~2-5 s)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("data")
    for i in range(CLIPS):
        save_clip(data / ("train" if i % 5 else "val") / f"clip_{i:03d}.npz", tiny_clip(seed=i, frames=8, height=48, width=64, slots=5, people=1 + i % 4))
    return data


def live_tree(roots: list[psutil.Process]) -> dict[int, psutil.Process]:
    """``roots`` and all their descendants that are still running (a zombie has ended)."""
    found = {}
    for root in roots:
        with contextlib.suppress(psutil.NoSuchProcess):
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    if proc.status() != psutil.STATUS_ZOMBIE:
                        found[proc.pid] = proc
    return found


def describe(procs: list[psutil.Process]) -> str:
    lines = []
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            lines.append(f"  pid {proc.pid} (ppid {proc.ppid()}): {' '.join(proc.cmdline())[:200]}")
    return "\n".join(lines)


def forkserver_children(extract: psutil.Process, helpers: list[psutil.Process]) -> list[psutil.Process]:
    """The decode workers: forked by the forkserver, so grandchildren of the extract process."""
    workers = []
    for proc in helpers:
        with contextlib.suppress(psutil.NoSuchProcess):
            if proc.ppid() != extract.pid:
                workers.append(proc)
    return workers


def spawned_children(extract: psutil.Process, helpers: list[psutil.Process]) -> list[psutil.Process]:
    """The dask workers: started by multiprocessing's spawn method."""
    workers = []
    for proc in helpers:
        with contextlib.suppress(psutil.NoSuchProcess):
            if "spawn_main" in " ".join(proc.cmdline()):
                workers.append(proc)
    return workers


def sigkill_when_workers_run(args: list[str], log: Path, workers: Callable[[psutil.Process, list[psutil.Process]], list[psutil.Process]]) -> None:
    """Start ``msgvip extract ARGS``, SIGKILL it once two of its workers run, and assert that every
    process it started has ended within EXIT_TIMEOUT_S."""
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "msgvip", "extract", *args, "--json"], stdout=subprocess.DEVNULL, stderr=stderr)
    extract = psutil.Process(proc.pid)
    helpers: dict[int, psutil.Process] = {}
    deadline = time.monotonic() + START_TIMEOUT_S
    while len(workers(extract, list(helpers.values()))) < 2:
        if proc.poll() is not None:
            pytest.fail(f"extract ended (exit code {proc.returncode}) before two workers were seen (if it succeeded, it needs more than {CLIPS} clips to still be running then); its stderr:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no two workers after {START_TIMEOUT_S} s; extract's processes:\n{describe(list(helpers.values()))}")
        helpers.update(live_tree([extract]))
        helpers.pop(extract.pid, None)
        time.sleep(0.05)

    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + EXIT_TIMEOUT_S
    while (alive := live_tree(list(helpers.values()))) and time.monotonic() < deadline:
        helpers.update(alive)  # a forkserver can still fork workers the dead run had asked for
        time.sleep(0.1)
    survivors = describe(list(alive.values()))
    for leftover in alive.values():  # the next tests run without them, pass or fail
        with contextlib.suppress(psutil.NoSuchProcess):
            leftover.kill()
    assert not alive, f"{len(alive)} processes of the killed extract still ran {EXIT_TIMEOUT_S} s after it died:\n{survivors}"


def test_sigkill_ends_the_decode_workers_and_their_forkserver(clips, tmp_path):
    args = [str(clips), "--cache-dir", str(tmp_path / "cache"), "--num-workers", "2"]
    sigkill_when_workers_run(args, tmp_path / "extract.log", forkserver_children)


def test_sigkill_ends_the_dask_workers(clips, tmp_path):
    args = [str(clips), "--cache-dir", str(tmp_path / "cache"), "--workers", "2"]
    sigkill_when_workers_run(args, tmp_path / "extract.log", spawned_children)
