"""An ``s3://bucket/prefix`` cache root end to end, against moto's S3 server on 127.0.0.1.

The whole chain runs through the CLI on object storage: demo data, extraction on two dask worker
processes (which reach the store only through S3), training, evaluation (which finds the store
from the run alone), and `cache ls/info/verify/compact/gc`; then the object-storage leases that
gc honours. Nothing reaches any network beyond 127.0.0.1: the endpoint and dummy credentials are
set in the environment (the dask workers inherit it) before anything opens the store.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from msgvip.cli import main
from msgvip.store import FeatureStore, open_storage
from msgvip.store.compact import compact as compact_store
from msgvip.store.feature_store import COMMITS, SEGMENTS, ZARR_DIR
from msgvip.store import locks
from msgvip.store.locks import LEASES, exclusive_store_lease, store_in_use, store_lease

s3fs = pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")
pytest.importorskip("dask.distributed")

BUCKET = "msgvip-test"
CLIPS = 40  # two dask tasks of 32 clips at most: two segments
SMALL_TOML = "[model]\nhidden = 16\ngat_heads = 2\ntemporal_heads = 2\nevent_heads = 2\npool_heads = 2\nrelation_heads = 2\nff_mult = 2\n"


@dataclass(frozen=True)
class S3:
    endpoint: str
    fs: object  # a synchronous s3fs.S3FileSystem on the server, for looking at (and damaging) objects

    def url(self, prefix: str) -> str:
        return f"s3://{BUCKET}/{prefix}"

    def objects(self, prefix: str) -> dict[str, int]:
        """Key (relative to ``prefix``) -> size of every object under ``s3://BUCKET/<prefix>/``."""
        found = self.fs.find(f"{BUCKET}/{prefix}/", detail=True)
        return {name.removeprefix(f"{BUCKET}/{prefix}/"): info["size"] for name, info in found.items()}

    def copy_store(self, fp: str, to: str) -> str:
        """Copy store ``fp`` of ``s3://BUCKET/cache`` into the root ``s3://BUCKET/<to>``; returns that root."""
        for key in self.objects(f"cache/{fp}"):
            self.fs.copy(f"{BUCKET}/cache/{fp}/{key}", f"{BUCKET}/{to}/{fp}/{key}")
        return self.url(to)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on a free port of 127.0.0.1 with one bucket; the AWS variables point at it."""
    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.ERROR)  # one log line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    home = tmp_path_factory.mktemp("s3home")
    try:
        with pytest.MonkeyPatch.context() as env:
            for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3", "MSGVIP_CACHE"):
                env.delenv(name, raising=False)
            env.setenv("AWS_ACCESS_KEY_ID", "testing")
            env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
            env.setenv("AWS_DEFAULT_REGION", "us-east-1")
            env.setenv("AWS_ENDPOINT_URL", endpoint)
            env.setenv("AWS_CONFIG_FILE", str(home / "no-aws-config"))  # never the user's profiles
            env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "no-aws-credentials"))
            env.setenv("AWS_EC2_METADATA_DISABLED", "true")
            env.setenv("XDG_CACHE_HOME", str(home / "xdg-cache"))  # the hash cache of an s3:// root lives in the user cache dir
            fs = s3fs.S3FileSystem(endpoint_url=endpoint, use_listings_cache=False)
            fs.mkdir(BUCKET)
            yield S3(endpoint, fs)
    finally:
        server.stop()
        werkzeug.setLevel(level)


def run(*args: str, code: int = 0):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, result.output[-3000:]
    return result


def run_json(*args: str, code: int = 0):
    return json.loads(run(*args, "--json", code=code).stdout)


@dataclass(frozen=True)
class Extracted:
    data: Path
    root: str
    fingerprint: str
    summary: dict


@pytest.fixture(scope="module")
def extracted(s3, tmp_path_factory) -> Extracted:
    """Demo clips extracted into ``s3://BUCKET/cache`` by a local dask cluster of two worker processes."""
    data = tmp_path_factory.mktemp("s3data") / "data"
    run("demo-data", data, "--clips", CLIPS, "--frames", 8, "--persons", 4)
    summary = run_json("extract", data, "--cache-dir", s3.url("cache"), "--workers", 2)
    return Extracted(data, s3.url("cache"), summary["fingerprint"], summary)


def test_dask_workers_extract_into_s3_through_the_store_protocol(s3, extracted):
    fp = extracted.fingerprint
    assert extracted.summary["ok"] and (extracted.summary["written"], extracted.summary["cached"]) == (CLIPS, 0)
    assert extracted.summary["store"] == f"{extracted.root}/{fp}"
    keys = s3.objects(f"cache/{fp}")
    assert {"meta.json", "last_used", "datasets/data.json", f"{ZARR_DIR}/zarr.json"} <= set(keys)
    # each dask task wrote a segment of its own, and sealed it with commit records of its own
    segments = {k.split("/")[2] for k in keys if k.startswith(f"{ZARR_DIR}/{SEGMENTS}/") and k.count("/") > 3}
    commits = [k for k in keys if k.startswith(f"{COMMITS}/")]
    assert len(segments) == 2 and {k.split("/")[1].rsplit("-", 1)[0] for k in commits} == segments
    assert any(k.startswith(f"{ZARR_DIR}/{SEGMENTS}/") and "/geometry/c/" in k for k in keys)
    assert not s3.fs.find(f"{BUCKET}/cache/{LEASES}/")  # every lease (the run's, each task's) released
    store = FeatureStore.open(extracted.summary["store"])
    assert len(store) == CLIPS and store.verify() == []
    records = [f"{fp}/{k}" for k in commits]
    assert store.storage.read_many([*records, f"{fp}/no-such-key"]) == [*(store.storage.read(k) for k in records), None]
    # a rerun reads nothing again: the hash cache knows the clips, the store has their rows
    again = run_json("extract", extracted.data, "--cache-dir", extracted.root, "--num-workers", 0)
    assert (again["written"], again["cached"], again["changes"]["unchanged"]) == (0, CLIPS, CLIPS)


def test_train_and_evaluate_on_an_s3_store(s3, extracted, tmp_path):
    config = tmp_path / "small.toml"
    config.write_text(SMALL_TOML)
    run_dir = tmp_path / "run"
    out = run("train", "--store", extracted.fingerprint[:10], "--cache-dir", extracted.root, "--epochs", 2, "--config", config,
              "--device", "cpu", "--out", run_dir).output  # fmt: skip
    assert "best epoch" in out
    recorded = json.loads((run_dir / "config.json").read_text())
    assert (recorded["cache_root"], recorded["store"]) == (extracted.root, extracted.summary["store"])
    val = sum(1 for _ in (extracted.data / "val").glob("*.npz"))
    result = run_json("evaluate", run_dir, "--split", "val")  # no --cache-dir: the run names its root
    assert (result["clips"], result["fingerprint"], result["model"]["n"]) == (val, extracted.fingerprint, val)


def test_cache_ls_info_verify_compact_on_s3(s3, extracted):
    fp, root = extracted.fingerprint, extracted.root
    listing = run_json("cache", "ls", "--cache-dir", root)
    assert [(s["fingerprint"], s["location"], s["clips"], s["complete"], s["leased"], s["pinned"]) for s in listing] == [
        (fp, f"{root}/{fp}", CLIPS, True, False, False)
    ]
    assert listing[0]["size_on_disk"] == sum(s3.objects(f"cache/{fp}").values())
    table = run("cache", "ls", "--cache-dir", root).output
    assert fp[:12] in table and "1 stores" in table and root in table
    info = run_json("cache", "info", fp[:8], "--cache-dir", root)
    assert info["datasets"]["data"]["clips"] == CLIPS and sum(info["datasets"]["data"]["splits"].values()) == CLIPS
    assert run_json("cache", "verify", fp, "--cache-dir", root)["ok"] is True
    run("cache", "pin", fp[:8], "--cache-dir", root)
    assert run_json("cache", "ls", "--cache-dir", root)[0]["pinned"] is True and "pinned" in run("cache", "gc", "--keep-last", 0, "--cache-dir", root).output
    run("cache", "unpin", fp[:8], "--cache-dir", root)
    summary = run_json("cache", "compact", fp, "--cache-dir", root)
    assert (summary["clips_kept"], summary["damaged"]) == (CLIPS, []) and summary["segments_before"] >= 2
    keys = s3.objects(f"cache/{fp}")
    assert len({k.split("/")[2] for k in keys if k.startswith(f"{ZARR_DIR}/{SEGMENTS}/") and k.count("/") > 3}) == 1
    assert summary["bytes_after"] == sum(keys.values())
    assert run_json("cache", "verify", fp, "--cache-dir", root) == {"fingerprint": fp, "clips": CLIPS, "bad": [], "ok": True}


def test_storage_option_gives_the_endpoint_instead_of_the_environment(s3, extracted, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    option = ("--storage-option", f"endpoint_url={s3.endpoint}")
    assert run("cache", "ls", "-q", "--cache-dir", extracted.root, *option).output.split() == [extracted.fingerprint]
    assert run_json("cache", "info", extracted.fingerprint[:8], "--cache-dir", extracted.root, *option)["clips"] == CLIPS
    assert "use_ssl is true or false" in run("cache", "ls", "--cache-dir", extracted.root, *option, "--storage-option", "use_ssl=maybe", code=1).output
    # what a dask worker receives: the root rebuilt from its URL and options, no environment needed
    storage = pickle.loads(pickle.dumps(open_storage(extracted.root, {"endpoint_url": s3.endpoint})))
    assert storage.read(f"{extracted.fingerprint}/meta.json") is not None
    missing = run("cache", "ls", "--cache-dir", "s3://no-such-bucket/cache", *option, code=1).output
    assert "bucket 'no-such-bucket' does not exist" in missing


def test_verify_names_a_damaged_chunk_object_and_a_rerun_repairs_it(s3, extracted):
    fp = extracted.fingerprint
    root = s3.copy_store(fp, "damaged")
    chunk = sorted(k for k in s3.objects(f"damaged/{fp}") if "/geometry/c/" in k)[0]
    path = f"{BUCKET}/damaged/{fp}/{chunk}"
    data = bytearray(s3.fs.cat_file(path))
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    s3.fs.pipe_file(path, bytes(data))
    report = run_json("cache", "verify", fp, "--cache-dir", root, code=1)
    assert not report["ok"] and report["bad"] and all("geometry" in b["problem"] for b in report["bad"])
    assert all(b["what"].startswith("data:") for b in report["bad"])  # the clips are named by dataset and key
    repaired = run_json("extract", extracted.data, "--cache-dir", root, "--num-workers", 0)
    assert repaired["repaired"] == len(report["bad"]) and repaired["cached"] + repaired["written"] == CLIPS
    assert run_json("cache", "verify", fp, "--cache-dir", root)["ok"] is True


def test_a_lease_keeps_gc_off_an_s3_store_until_it_is_released(s3, extracted):
    fp = extracted.fingerprint
    root = s3.copy_store(fp, "gc")
    store = FeatureStore.open(f"{root}/{fp}")
    with store.lease():
        assert run_json("cache", "ls", "--cache-dir", root)[0]["leased"] is True
        out = run("cache", "gc", "--keep-last", 0, "--cache-dir", root).output
        assert f"keep   {fp[:12]}" in out and "under lease" in out and "nothing to remove" in out
        assert run("cache", "ls", "-q", "--cache-dir", root).output.split() == [fp]
    out = run("cache", "gc", "--keep-last", 0, "--cache-dir", root).output
    assert f"remove {fp[:12]}" in out and "(1 stores)" in out
    assert run_json("cache", "ls", "--cache-dir", root) == []
    assert "0 stores" in run("cache", "ls", "--cache-dir", root).output
    assert s3.objects("gc") == {}  # the store and every lease object are gone


def heartbeat(storage, key: str, age: float) -> None:
    storage.write(key, json.dumps({"heartbeat": time.time() - age, "pid": 0}).encode())


def test_stale_heartbeats_block_nothing_and_a_holder_waits_out_a_gc(s3):
    storage = open_storage(s3.url("leases"))
    fp = "ab" * 16
    heartbeat(storage, f"{LEASES}/{fp}/dead.json", age=3600)  # a holder killed an hour ago
    assert not store_in_use(storage, fp)
    with exclusive_store_lease(storage, fp) as free:
        assert free
        assert store_in_use(storage, fp)  # a gc holding it is a use too
        with exclusive_store_lease(storage, fp) as second:
            assert not second  # two gcs (or a gc and a compaction) never share a store
    assert storage.list(f"{LEASES}/") == []  # the dead holder's heartbeat went with that gc

    marker = f"{LEASES}/{fp}/deleting-0.json"
    heartbeat(storage, marker, age=0)  # a gc at work on the store
    entered = threading.Event()

    def hold() -> None:
        with store_lease(storage, fp):
            entered.set()

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    try:
        assert not entered.wait(1.5), "took a lease while a gc had the store"
        with exclusive_store_lease(storage, fp) as free:
            assert not free  # the waiting holder's heartbeat already keeps other gcs away
    finally:
        storage.delete(marker)  # the gc is done
    assert entered.wait(5)
    holder.join(5)
    heartbeat(storage, marker, age=3600)  # a gc killed mid-way: its marker goes stale and blocks no one
    with store_lease(storage, fp):
        pass
    storage.delete(marker)
    assert storage.list(f"{LEASES}/") == []


def test_a_held_lease_stays_fresh_by_its_heartbeat(s3, monkeypatch):
    monkeypatch.setattr(locks, "HEARTBEAT_SECONDS", 0.05)
    monkeypatch.setattr(locks, "STALE_SECONDS", 0.5)
    storage = open_storage(s3.url("heartbeat"))
    fp = "cd" * 16
    with store_lease(storage, fp):
        time.sleep(1.0)  # twice the staleness limit: only the heartbeat thread keeps the lease alive
        assert store_in_use(storage, fp)
        with exclusive_store_lease(storage, fp) as free:
            assert not free
    assert not store_in_use(storage, fp) and storage.list(f"{LEASES}/") == []


class StallableProxy:
    """A TCP proxy on 127.0.0.1 in front of the S3 server whose traffic can be stalled (held,
    connections kept open, nothing forwarded): a network partition, not a refused connection."""

    def __init__(self, endpoint: str):
        host, port = endpoint.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.flowing = threading.Event()
        self.flowing.set()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self.flowing.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.close()

    def close(self) -> None:
        self.listener.close()


def test_a_writer_cut_off_longer_than_its_lease_fails_instead_of_committing(s3, extracted, monkeypatch):
    monkeypatch.setattr(locks, "HEARTBEAT_SECONDS", 0.2)
    monkeypatch.setattr(locks, "STALE_SECONDS", 2.0)
    fp = extracted.fingerprint
    root = s3.copy_store(fp, "partition")
    proxy = StallableProxy(s3.endpoint)
    try:
        cut_off = open_storage(root, {"endpoint_url": proxy.endpoint, "read_timeout": "1", "connect_timeout": "1"})
        store = FeatureStore.open_in(cut_off, fp)
        before = {h: r.segment for h, r in store.clips.items()}
        with store.lease():
            writer = store.writer()
            features = store.read_clip(next(iter(store.clips)))
            writer.add("f" * 32, features)  # a clip of a new content, buffered: its commit comes after the partition
            proxy.flowing.clear()  # the partition: the writer's heartbeats stop landing
            time.sleep(3.0)
            summary = compact_store(open_storage(root), fp)  # another client: the writer looks dead to it
            assert summary.clips_kept == len(before)
            proxy.flowing.set()
            with pytest.raises(locks.LeaseLost, match="lease on the store is lost"):
                writer.flush()
    finally:
        proxy.flowing.set()
        proxy.close()
    healthy = FeatureStore.open(f"{root}/{fp}")
    assert healthy.verify() == [] and set(healthy.clips) == set(before)  # every clip intact, nothing half-committed


@pytest.mark.parametrize("command", [["cache", "ls"], ["cache", "pin", "PREFIX"]])
def test_a_stalled_connection_times_out_with_one_line(s3, extracted, command):
    proxy = StallableProxy(s3.endpoint)
    try:
        option = ["--storage-option", f"endpoint_url={proxy.endpoint}", "--storage-option", "read_timeout=1", "--storage-option", "connect_timeout=1"]
        run("cache", "ls", "--cache-dir", extracted.root, *option)  # through the proxy, flowing
        proxy.flowing.clear()
        start = time.monotonic()
        argv = [extracted.fingerprint[:12] if a == "PREFIX" else a for a in command]
        result = run(*argv, "--cache-dir", extracted.root, *option, code=1)
        assert time.monotonic() - start < 60 and "ReadTimeoutError" in result.output and len(result.output.strip().splitlines()) == 1
    finally:
        proxy.flowing.set()
        proxy.close()
