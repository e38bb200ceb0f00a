"""Extraction on dask.distributed: equal to a single-process run, and a killed worker corrupts nothing."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from conftest import assert_same_clips, committed_clips, save_clip, tiny_clip

from msgvip.pipelines import run_extract

distributed = pytest.importorskip("dask.distributed")


def make_data(root, count: int):
    for i in range(count):
        save_clip(root / ("train" if i % 4 else "val") / f"clip_{i:03d}.npz", tiny_clip(seed=i, frames=12, height=64, width=96, slots=6, people=1 + i % 5))
    return root


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        yield cluster


def test_two_workers_equal_a_single_process(tmp_path, cluster):
    data = make_data(tmp_path / "data", 40)
    reference = run_extract(data, cache_dir=tmp_path / "single", progress=False)
    spread = run_extract(data, cache_dir=tmp_path / "dask", progress=False, scheduler=cluster.scheduler_address)
    assert spread.ok and (spread.written, spread.fingerprint) == (40, reference.fingerprint)
    assert_same_clips(tmp_path / "dask" / spread.fingerprint, tmp_path / "single" / reference.fingerprint)
    again = run_extract(data, cache_dir=tmp_path / "dask", progress=False, scheduler=cluster.scheduler_address)
    assert (again.written, again.cached) == (0, 40)


def test_a_worker_killed_mid_run_corrupts_nothing(tmp_path, cluster):
    data = make_data(tmp_path / "data", 400)
    reference = run_extract(data, cache_dir=tmp_path / "single", progress=False)
    store_dir = tmp_path / "dask" / reference.fingerprint
    with distributed.Client(cluster.scheduler_address) as client:
        victim = next(iter(client.run(os.getpid).values()))
        outcome = {}
        runner = threading.Thread(target=lambda: outcome.update(summary=run_extract(data, cache_dir=tmp_path / "dask", progress=False, scheduler=cluster.scheduler_address)))
        runner.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and runner.is_alive():
            if committed_clips(store_dir) >= 64:
                break
            time.sleep(0.01)
        killed = runner.is_alive()
        if killed:
            os.kill(victim, signal.SIGKILL)
        runner.join(300)
        client.wait_for_workers(2, timeout=60)  # the nanny restarts the killed worker
    assert killed, "the run finished before a worker could be killed"
    first = outcome.get("summary")
    final = run_extract(data, cache_dir=tmp_path / "dask", progress=False)  # a rerun finishes whatever was lost
    assert final.ok and final.written + final.cached == 400
    assert first is None or first.written + final.written <= 400
    assert_same_clips(store_dir, tmp_path / "single" / reference.fingerprint)
