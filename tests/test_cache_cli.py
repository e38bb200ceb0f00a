"""`msgvip extract` reruns and `msgvip cache ls/info/verify/gc/pin`, driven in-process with CliRunner."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from msgvip.cli import main
from msgvip.store import FeatureStore, open_storage, parse_duration, parse_size
from msgvip.store.cache import store_fingerprints
from msgvip.store.feature_store import SEGMENTS, ZARR_DIR


def run(*args: str, code: int = 0):
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == code, result.output
    return result


def extract(data, *extra) -> dict:
    return json.loads(run("extract", str(data), "--json", *extra).stdout)


def make_stores(tmp_path, tiny_data, count: int) -> list[str]:
    """One extracted store plus ``count - 1`` empty ones under other fingerprints (as other configs
    would make), each used a little later than the one before."""
    fps = []
    first = extract(tiny_data)
    fps.append(first["fingerprint"])
    for k in range(1, count):
        fp = f"{k:032x}"
        store = FeatureStore.create(open_storage(tmp_path / "cache"), fp, {"features": {"geometry": {"k": k}}}, [])
        store.touch()
        fps.append(fp)
        time.sleep(0.01)
    return fps


def test_help_everywhere():
    for command in ([], ["extract"], ["demo-data"], ["cache"], ["cache", "ls"], ["cache", "info"], ["cache", "gc"], ["cache", "verify"], ["cache", "pin"], ["cache", "unpin"]):
        assert "Usage:" in run(*command, "--help").output


def test_rerun_recomputes_nothing_and_moves_clips_between_splits(tiny_data, cache_dir):
    first = extract(tiny_data)
    assert (first["written"], first["cached"], first["failed"], first["ok"]) == (8, 0, 0, True)
    assert first["changes"] == {"added": 8, "changed": 0, "removed": 0, "unchanged": 0}
    second = extract(tiny_data)
    assert (second["written"], second["cached"], second["fingerprint"]) == (0, 8, first["fingerprint"])
    assert second["changes"] == {"added": 0, "changed": 0, "removed": 0, "unchanged": 8}
    # a clip moved to another split: same content, so no re-extraction; the snapshot follows the folder
    (tiny_data / "test").mkdir()
    os.rename(tiny_data / "train" / "clip_0.npz", tiny_data / "test" / "clip_0.npz")
    third = extract(tiny_data)
    assert third["written"] == 0 and third["changes"] == {"added": 1, "changed": 0, "removed": 1, "unchanged": 7}
    snapshot = FeatureStore.open(third["store"]).snapshot("data")
    assert snapshot.splits() == {"test": 1, "train": 5, "val": 2}


def test_ls_info_verify_pin(tiny_data, cache_dir):
    fp = extract(tiny_data)["fingerprint"]
    listing = json.loads(run("cache", "ls", "--json").stdout)
    assert [(s["fingerprint"], s["clips"], s["complete"], s["pinned"], s["features"], list(s["datasets"])) for s in listing] == [
        (fp, 8, True, False, ["geometry"], ["data"])
    ]
    assert listing[0]["size_on_disk"] > 0
    table = run("cache", "ls").output
    assert fp[:12] in table and "complete" in table and "1 stores" in table
    assert run("cache", "ls", "-q").output.strip() == fp
    info = json.loads(run("cache", "info", fp[:6], "--json").stdout)
    assert info["datasets"]["data"]["splits"] == {"train": 6, "val": 2} and info["config"]["features"]["geometry"]["feature_version"] == 1
    assert "data: 8 clips (train: 6, val: 2)" in run("cache", "info", fp[:6]).output
    assert json.loads(run("cache", "verify", fp, "--json").stdout)["ok"] is True
    run("cache", "pin", fp)
    assert json.loads(run("cache", "ls", "--json").stdout)[0]["pinned"] is True
    run("cache", "unpin", fp)
    assert "no store with fingerprint" in run("cache", "info", "ffff", code=1).output
    assert "neither a fingerprint" in run("cache", "info", "../..", code=1).output


def test_verify_names_the_bad_clips(tiny_data, cache_dir):
    summary = extract(tiny_data)
    store = FeatureStore.open(summary["store"])
    (segment,) = [p.name for p in (store.path / ZARR_DIR / SEGMENTS).iterdir() if p.is_dir()]
    chunk = store.path / ZARR_DIR / SEGMENTS / segment / "geometry" / "c" / "0" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    chunk.write_bytes(bytes(raw))
    result = run("cache", "verify", summary["fingerprint"], code=1)
    assert "8 problems" in result.output  # the 8 tiny clips share the one chunk
    assert all(f"BAD data:{split}/clip_{i}" in result.output for i, split in enumerate(["train"] * 6 + ["val"] * 2))


def test_gc_policies_pins_leases_and_dry_run(tmp_path, tiny_data, cache_dir):
    fps = make_stores(tmp_path, tiny_data, 4)  # most recent last
    refused = run("cache", "gc", code=1)
    assert all(flag in refused.output for flag in ("--keep-last", "--older-than", "--max-size", "--incomplete"))

    dry = run("cache", "gc", "--keep-last", "1", "--dry-run")
    assert "would free" in dry.output and len(store_fingerprints(open_storage(cache_dir))) == 4

    run("cache", "pin", fps[0])
    with FeatureStore.open(cache_dir / fps[1]).lease():  # as if a training run were reading it
        result = run("cache", "gc", "--keep-last", "1")
        assert "pinned" in result.output and "under lease" in result.output
    remaining = {s["fingerprint"] for s in json.loads(run("cache", "ls", "--json").stdout)}
    assert remaining == {fps[0], fps[1], fps[3]}
    assert run("cache", "gc", "--keep-last", "1").output.count("remove") == 1  # lease gone: fps[1] goes now
    assert {s["fingerprint"] for s in json.loads(run("cache", "ls", "--json").stdout)} == {fps[0], fps[3]}


def test_gc_incomplete_older_than_and_max_size(tmp_path, tiny_data, cache_dir):
    fps = make_stores(tmp_path, tiny_data, 3)
    # only the extracted store is complete; the two fakes never finished an extraction
    run("cache", "gc", "--incomplete")
    assert [s["fingerprint"] for s in json.loads(run("cache", "ls", "--json").stdout)] == [fps[0]]
    run("cache", "gc", "--older-than", "1h")
    assert len(json.loads(run("cache", "ls", "--json").stdout)) == 1
    old = time.time() - 3 * 86400
    (cache_dir / fps[0] / "last_used").write_text(f"{old}\n")
    run("cache", "gc", "--older-than", "2d", "--max-size", "1T")
    assert json.loads(run("cache", "ls", "--json").stdout) == []


def test_gc_max_size_evicts_least_recently_used_first(tmp_path, tiny_data, cache_dir):
    fps = make_stores(tmp_path, tiny_data, 3)
    sizes = {s["fingerprint"]: s["size_on_disk"] for s in json.loads(run("cache", "ls", "--json").stdout)}
    budget = sizes[fps[2]] + sizes[fps[1]]
    run("cache", "gc", "--max-size", str(budget))
    assert {s["fingerprint"] for s in json.loads(run("cache", "ls", "--json").stdout)} == {fps[1], fps[2]}


def test_gc_never_leaves_the_cache_root(tmp_path, cache_dir, tiny_data):
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("x")
    fp = extract(tiny_data)["fingerprint"]
    os.symlink(outside, cache_dir / fp / "link-out")  # a symlink inside a store
    os.symlink(outside, cache_dir / ("e" * 32))  # a symlink posing as a store
    run("cache", "gc", "--keep-last", "0")
    assert (outside / "keep.txt").read_text() == "x"
    assert not (cache_dir / fp).exists()


def test_parsers():
    assert parse_size("20G") == 20_000_000_000 and parse_size("1.5M") == 1_500_000 and parse_size("512") == 512
    assert parse_duration("30d") == 30 * 86400 and parse_duration("12h") == 43200
    for bad in ("20X", "", "G"):
        with pytest.raises(ValueError):
            parse_size(bad)
    assert "not understood" in run("cache", "gc", "--older-than", "soon", code=2).output
    assert "too large" in run("cache", "gc", "--max-size", "9" * 400 + "T", code=2).output


def test_a_damaged_store_is_listed_as_damaged_and_blocks_no_other(tmp_path, tiny_data, cache_dir):
    fps = make_stores(tmp_path, tiny_data, 3)
    meta = cache_dir / fps[1] / "meta.json"
    meta.write_bytes(meta.read_bytes()[:-5])  # a torn write
    (cache_dir / fps[2] / "last_used").write_text("not a time")
    listing = {s["fingerprint"]: s for s in json.loads(run("cache", "ls", "--json").stdout)}
    assert listing[fps[1]]["state"] == "damaged" and "meta.json is damaged" in listing[fps[1]]["problem"]
    assert listing[fps[0]]["state"] == "complete" and listing[fps[2]]["problem"] is None
    assert "damaged" in run("cache", "ls").output
    result = run("cache", "gc", "--keep-last", "0")
    assert "damaged, left for you to inspect" in result.output and "(2 stores)" in result.output
    assert [s["fingerprint"] for s in json.loads(run("cache", "ls", "--json").stdout)] == [fps[1]]


def test_cache_root_urls(tmp_path, tiny_data, monkeypatch):
    monkeypatch.delenv("MSGVIP_CACHE", raising=False)
    summary = json.loads(run("extract", str(tiny_data), "--cache-dir", f"file://{tmp_path / 'viaurl'}", "--json").stdout)
    assert summary["store"].startswith(str(tmp_path / "viaurl"))
    for root, why in [
        ("gs://bucket/msgvip", "gs:// is not supported"),
        ("s3:/bucket/msgvip", "one slash"),
        ("s3:///msgvip", "no bucket"),
        ("", "--cache-dir is empty"),
        ("  ", "--cache-dir is empty"),
        ("/", "refusing /"),
        (str(Path.home()), f"refusing {Path.home()}"),
    ]:
        assert why in run("cache", "gc", "--keep-last", "0", "--cache-dir", root, code=1).output
    monkeypatch.setenv("MSGVIP_CACHE", "")
    assert "$MSGVIP_CACHE is empty" in run("cache", "gc", "--keep-last", "0", code=1).output
