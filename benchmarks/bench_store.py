"""Store v2 against store v1, side by side in one run, like for like.

v1 is the schema-1 store of commit df34f65 (padded (C, T, N, ...) arrays, kept in
``benchmarks/_store_v1.py`` as the baseline only); v2 is ``msgvip.store`` (ragged rows of valid
person-frames in per-writer segments, verified reads). Both stores get the same clips, the same
arrays and the same dtypes; every ratio is v2 / v1 (or v2 share) from this one run. Timings on a
shared machine vary 2-3x between identical calls, so v1 and v2 are timed interleaved, best of
``--repeats``, and only same-run ratios are meant to be compared across machines.

1. Size: bytes per valid person-frame of a 768-d float16 ``appearance`` family (plus 18-d float32
   ``geometry``), T=120 frames x N=20 slots, 6 to 9 people per clip present in most frames
   (random-walk embeddings: a base vector per person plus a drift and small per-frame noise), on
   disk and in RAM (v2: StoreDataset's in-memory rows; v1: its whole-split read, padded).
2. A Temporal-VIP-size split (5,549 clips of that kind) in RAM: v2 written and read back (its
   packed rows summed), v1 computed as C*T*N*(768*2 + 18*4 + 1); does each fit 24 GiB?
3. Whole-split write and read throughput, clips/s and MB/s of valid rows: geometry-only demo clips
   (T=32, N=8, the README's store benchmark) and the 768-d clips. Where v2 is slower, the v2 side
   is profiled (cProfile) and its top functions printed.
4. Verified reads: the share of StoreDataset's whole-split load spent in xxh3 checksums
   (``array_checksum`` timed, and replaced by a stub), against the load and one training epoch.

Shapes: C clips, T frames, N person slots, V valid person-frames (rows), D feature dims.

    .venv/bin/python benchmarks/bench_store.py [--clips 200 --geometry-clips 300 --tv-clips 5549] [--sections 1,2,3,4] [--json]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import math
import os
import pstats
import shlex
import shutil
import sys
import tempfile
import time
import threading
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import msgvip.store.feature_store as feature_store_v2
from msgvip.data.clip import read_clip
from msgvip.data.synthetic import DemoDataConfig, write_demo_data
from msgvip.extract.geometry import geometry_features
from msgvip.ranker import ImportanceRanker, StoreDataset, ranking_loss
from msgvip.store import ArraySpec, FeatureStore, Snapshot, SnapshotEntry, open_storage
from msgvip.store.fingerprint import fingerprint

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _store_v1 as v1  # noqa: E402
from _small_config import SMALL_MODEL  # noqa: E402  (the settings its README figures were measured with)

SEED = 0x5702
DATASET = "bench"
SPLIT = "train"  # every clip is in it: the split is the whole data set
APPEARANCE = ArraySpec("appearance", (768,), "float16")
GEOMETRY = ArraySpec("geometry", (18,), "float32")
MASK = "person_mask"
TEMPORAL_VIP_CLIPS = 5549
GIB = 1 << 30
MACHINE_RAM = 24 * GIB
IN_MEMORY_SHARE = 0.4  # msgvip's --in-memory auto holds a split in RAM below 40% of physical RAM
READ_WINDOW = 256  # clips per read when summing the rows of the Temporal-VIP-size split


# ----------------------------------------------------------------------------------- clips
@dataclass
class BenchClip:
    key: str
    content_hash: str
    target: int
    features: dict[str, np.ndarray]  # person_mask (T, N) bool and each family (T, N, D)

    @property
    def valid(self) -> int:
        return int(self.features[MASK].sum())


def synthetic_clip(index: int, frames: int, slots: int, dim: int) -> BenchClip:
    """A clip of 6 to 9 people in ``slots`` slots, each present in one stretch of 70-100% of the
    frames; appearance is a base vector per person plus a random walk and per-frame noise, so
    consecutive frames of a person are close (as real embeddings are) but never equal."""
    rng = np.random.default_rng([SEED, index])
    people = int(rng.integers(6, 10))
    chosen = np.sort(rng.choice(slots, people, replace=False))
    mask = np.zeros((frames, slots), bool)  # (T, N)
    for s in chosen:
        stay = int(rng.integers(int(0.7 * frames), frames + 1))
        start = int(rng.integers(0, frames - stay + 1))
        mask[start : start + stay, s] = True
    base = rng.standard_normal((1, people, dim), dtype=np.float32)
    walk = np.cumsum(rng.standard_normal((frames, people, dim), dtype=np.float32) * 0.02, axis=0)  # (T, P, D)
    noise = rng.standard_normal((frames, people, dim), dtype=np.float32) * 0.1
    appearance = np.zeros((frames, slots, dim), np.float16)  # (T, N, D)
    appearance[:, chosen] = base + walk + noise
    box = rng.random((1, people, GEOMETRY.shape[0]), dtype=np.float32)
    drift = np.cumsum(rng.standard_normal((frames, people, GEOMETRY.shape[0]), dtype=np.float32) * 0.005, axis=0)
    geometry = np.zeros((frames, slots, GEOMETRY.shape[0]), np.float32)  # (T, N, 18)
    geometry[:, chosen] = box + drift
    appearance[~mask] = 0
    geometry[~mask] = 0
    return BenchClip(f"syn_{index:05d}", f"{SEED:08x}{index:024x}", int(chosen[0]), {MASK: mask, "appearance": appearance, "geometry": geometry})


def demo_geometry_clips(folder: Path, count: int, frames: int, persons: int) -> list[BenchClip]:
    """The README's store benchmark data: synthetic demo clips, geometry computed as extraction does."""
    write_demo_data(folder, DemoDataConfig(clips=count, frames=frames, persons=persons))
    clips = []
    for path in sorted(folder.rglob("*.npz")):
        clip = read_clip(path)
        geometry = geometry_features(clip.bboxes, clip.person_mask, clip.height, clip.width, clip.visible_fraction)
        clips.append(BenchClip(path.stem, clip.content_hash, max(clip.target, -1), {MASK: clip.person_mask, "geometry": geometry}))
    return clips


# ----------------------------------------------------------------------------------- stores
def config_of(specs: list[ArraySpec]) -> dict:
    return {"benchmark": "bench_store", "features": {s.name: {} for s in specs}}


def create_v2(root: Path, specs: list[ArraySpec]) -> FeatureStore:
    config = config_of(specs)
    return FeatureStore.create(open_storage(root), fingerprint(config), config, specs)


def fill_v2(store: FeatureStore, clips: Iterable[BenchClip], budget_s: float | None = None) -> tuple[float, int]:
    """Write ``clips`` into ``store`` and snapshot them as one split. Returns (seconds in the
    writer and the snapshot, clips written); stops early once past ``budget_s``."""
    entries, seconds = [], 0.0
    with store.writer() as writer:
        for clip in clips:
            start = time.perf_counter()
            writer.add(clip.content_hash, clip.features)
            seconds += time.perf_counter() - start
            entries.append(SnapshotEntry(clip.key, clip.content_hash, SPLIT, clip.target, "bench", f"/bench/{clip.key}.npz"))
            if budget_s is not None and seconds > budget_s:
                break
        start = time.perf_counter()
    store.write_snapshot(Snapshot(DATASET, "/bench", time.time(), tuple(entries)))
    seconds += time.perf_counter() - start  # the last flush and the snapshot
    return seconds, len(entries)


def create_v1(root: Path, specs: list[ArraySpec]) -> v1.FeatureStore:
    config = config_of(specs)
    return v1.FeatureStore.create(root / fingerprint(config), fingerprint(config), config, specs)


def fill_v1(store: v1.FeatureStore, clips: Iterable[BenchClip]) -> float:
    start = time.perf_counter()
    with store.writer() as writer:
        for clip in clips:
            t, n = clip.features[MASK].shape
            entry = v1.IndexEntry(clip.content_hash, clip.key, f"/bench/{clip.key}.npz", SPLIT, clip.target, "bench", t, n, -1, {}, time.time())
            writer.add(entry, clip.features)
    return time.perf_counter() - start


def open_v2(store: FeatureStore) -> FeatureStore:
    return FeatureStore.open_in(open_storage(store.storage.local_path), store.fingerprint)


def open_v1(store: v1.FeatureStore) -> v1.FeatureStore:
    return v1.FeatureStore.open(store.path)


def split_v2(store: FeatureStore) -> list:
    """The split's commit records, in snapshot order (what a reader looks up before reading)."""
    return [store.clips[e.content_hash] for e in store.snapshot(DATASET).entries]


def split_v1(store: v1.FeatureStore) -> np.ndarray:
    return np.array([e.row for e in store.entries_for(SPLIT)], dtype=np.int64)


def read_v2(store: FeatureStore, records: list) -> dict[str, np.ndarray]:
    """Every clip of the split as packed rows: frame, slot (V,), each family (V, D); verified."""
    return store.read_clips(records)


def read_v1(store: v1.FeatureStore, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Every clip of the split as padded rows: person_mask (C, T, N), each family (C, T, N, D)."""
    return store.read_rows(rows)


def load_v2(store: FeatureStore) -> StoreDataset:
    return StoreDataset(store, SPLIT, in_memory="yes", dataset=DATASET)


def load_v1(store: v1.FeatureStore) -> dict[str, torch.Tensor]:
    """What df34f65's ``StoreDataset(store, split, in_memory="yes")`` held: its ``_read`` of every
    position, padded rows cropped to the split's (T, N), families flattened to (C, T, N, D)."""
    entries = store.entries_for(SPLIT)
    rows = np.array([e.row for e in entries], dtype=np.int64)
    frames, persons = max(e.frames for e in entries), max(e.persons for e in entries)
    order = np.argsort(rows, kind="stable")  # chunk order on disk
    names = [*(a.name for a in store.arrays if a.name != MASK), MASK]
    arrays = store.read_rows(rows[order], names)
    inverse = np.argsort(order)
    out = {}
    for name in names:
        a = arrays[name][inverse][:, :frames, :persons]
        out[name] = torch.from_numpy(np.ascontiguousarray(a.reshape(*a.shape[:3], -1) if name != MASK else a))
    return out


def v2_cache(dataset: StoreDataset) -> dict[str, torch.Tensor]:
    cache = getattr(dataset, "_cache", None)
    if cache is None:
        raise RuntimeError("StoreDataset keeps no _cache attribute any more: update bench_store.py's RAM measurement")
    return cache


def nbytes(arrays: dict) -> dict[str, int]:
    return {k: int(v.nbytes) for k, v in arrays.items()}


def files_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def v2_family_bytes(store: FeatureStore, name: str) -> int:
    segments = store.path / feature_store_v2.ZARR_DIR / feature_store_v2.SEGMENTS
    return sum(files_size(s / name) for s in segments.iterdir() if (s / name).is_dir())


def v1_family_bytes(store: v1.FeatureStore, name: str) -> int:
    return files_size(store.path / v1.ZARR_DIR / name)


# ----------------------------------------------------------------------------------- timing
def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each fn, ``repeats`` rounds, fns alternating within a round (a fn returning a
    float gives its own seconds, e.g. excluding set-up; any other result is ignored)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            own = fn()
            times[name].append(own if isinstance(own, float) else time.perf_counter() - start)
    return times


PLUMBING = ("threading.py", "_base.py", "sync.py", "tasks.py", "base_events.py", "events.py", "thread.py", "futures.py")
IDLE_LEAVES = {"wait", "select", "_worker", "get", "put"}  # a thread parked there is waiting, not working


def profile_top(fn: Callable[[], object], limit: int = 16) -> str:
    """cProfile of ``fn`` in this thread: the store's own functions by cumulative time (zarr's
    I/O and codecs run in its own threads and show up here as time waiting in ``sync``)."""
    profiler = cProfile.Profile()
    profiler.enable()
    fn()
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = stats.total_tt
    rows = []
    for (path, line, func), (_, ncalls, tottime, cumtime, _) in stats.stats.items():
        if Path(path).name in PLUMBING or path.startswith("<") or func.startswith("<"):
            continue
        rows.append((cumtime, tottime, ncalls, f"{Path(path).name}:{line}({func})" if path != "~" else func))
    rows.sort(reverse=True)
    out = [f"    cProfile, this thread, {total:.3f} s:   cumulative    own   calls  function"]
    out += [f"      {cum:>36.3f} {own:>7.3f} {n:>7}  {name}" for cum, own, n, name in rows[:limit]]
    return "\n".join(out)


def sample_threads(fn: Callable[[], object], interval: float = 0.0005, limit: int = 14) -> str:
    """Where every thread (zarr's I/O loop and codec workers included) spends ``fn``'s time: stack
    samples every ``interval`` s, threads parked waiting left out. Shares are of wall time, so
    two busy threads can add up to more than 100%."""
    own: Counter = Counter()
    inclusive: Counter = Counter()
    ticks = 0
    stop = threading.Event()

    def label(code) -> str:
        return f"{Path(code.co_filename).name}:{code.co_firstlineno}({code.co_name})"

    def run() -> None:
        nonlocal ticks
        me = threading.get_ident()
        while not stop.is_set():
            ticks += 1
            for tid, frame in sys._current_frames().items():
                if tid == me or frame.f_code.co_name in IDLE_LEAVES:
                    continue
                stack = []
                while frame is not None:
                    stack.append(label(frame.f_code))
                    frame = frame.f_back
                own[stack[0]] += 1
                for name in set(stack):
                    inclusive[name] += 1
            time.sleep(interval)

    sampler = threading.Thread(target=run, daemon=True)
    start = time.perf_counter()
    sampler.start()
    try:
        fn()
    finally:
        stop.set()
        sampler.join()
    wall = time.perf_counter() - start
    out = [f"    thread samples, all threads, {wall:.3f} s wall, {ticks} ticks:  % of wall in the function itself (own) / with its callees (incl.)"]
    for name, count in own.most_common(limit):
        out.append(f"      own {100 * count / ticks:5.1f}%  incl. {100 * inclusive[name] / ticks:5.1f}%  {name}")
    interesting = [(n, c) for n, c in inclusive.most_common() if "feature_store" in n or "dataset" in n or "codec" in n or "blosc" in n or "crc32c" in n or "_local" in n]
    out.append("      store and codec functions, with callees:")
    out += [f"        incl. {100 * c / ticks:5.1f}%  {n}" for n, c in interesting[:limit]]
    return "\n".join(out)


class CodecTraffic:
    """Counts what zarr hands blosc while active: bytes encoded (compressed) and decoded."""

    def __init__(self):
        from zarr.codecs.blosc import BloscCodec

        self.cls = BloscCodec
        self.encoded = self.decoded = self.encodes = self.decodes = 0

    def __enter__(self) -> CodecTraffic:
        encode, decode = self.cls._encode_sync, self.cls._decode_sync
        self.saved = encode, decode

        def counting_encode(codec, chunk_bytes, chunk_spec):
            self.encodes += 1
            self.encoded += len(chunk_bytes)
            return encode(codec, chunk_bytes, chunk_spec)

        def counting_decode(codec, chunk_bytes, chunk_spec):
            out = decode(codec, chunk_bytes, chunk_spec)
            self.decodes += 1
            self.decoded += len(out)
            return out

        self.cls._encode_sync, self.cls._decode_sync = counting_encode, counting_decode
        return self

    def __exit__(self, *exc) -> None:
        self.cls._encode_sync, self.cls._decode_sync = self.saved


def codec_traffic(case: Case) -> str:
    """Bytes blosc compresses and decompresses for one whole write of the case, v2 and v1."""
    lines = [f"    blosc traffic of one whole write ({case.valid_bytes / 1e6:.2f} MB of valid rows):"]
    for kind in ("v2", "v1"):
        root = case.root / f"profile-traffic-{kind}"
        store = create_v2(root, case.specs) if kind == "v2" else create_v1(root, case.specs)
        with CodecTraffic() as traffic:
            fill_v2(store, case.clips) if kind == "v2" else fill_v1(store, case.clips)
        lines.append(f"      {kind}: compressed {traffic.encoded / 1e6:7.2f} MB in {traffic.encodes:4} chunk encodes "
                     f"({traffic.encoded / case.valid_bytes:.1f}x the valid bytes), decompressed {traffic.decoded / 1e6:6.2f} MB "
                     f"in {traffic.decodes} decodes (partial chunks read back to merge)")  # fmt: skip
    return "\n".join(lines)


def traced_peak(fn: Callable[[], object]) -> tuple[object, int]:
    """(fn's result, peak bytes allocated while it ran, numpy and torch buffers included)."""
    tracemalloc.start()
    try:
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


class ChecksumTimer:
    """Replaces array_checksum in the v2 store module: ``mode='time'`` times every call of the real
    one, ``mode='stub'`` returns a value equal to any recorded checksum (verification skipped)."""

    class _Equal(str):
        def __eq__(self, other) -> bool:
            return True

        def __ne__(self, other) -> bool:
            return False

        __hash__ = str.__hash__

    def __init__(self, mode: str):
        self.mode = mode
        self.seconds = 0.0
        self.calls = 0
        self.real = feature_store_v2.array_checksum

    def __call__(self, array: np.ndarray) -> str:
        self.calls += 1
        if self.mode == "stub":
            return self._Equal("stub")
        start = time.perf_counter()
        digest = self.real(array)
        self.seconds += time.perf_counter() - start
        return digest

    def __enter__(self) -> ChecksumTimer:
        feature_store_v2.array_checksum = self
        return self

    def __exit__(self, *exc) -> None:
        feature_store_v2.array_checksum = self.real


def train_epoch(data: StoreDataset, batch_size: int, seed: int, max_batches: int | None = None) -> float:
    """One epoch as bench_train_epoch.py times it: shuffled batches from the in-RAM split, the
    demo-size ranker (a bigger ranker makes the epoch longer, the checksum share smaller)."""
    torch.manual_seed(seed)
    model = ImportanceRanker(SMALL_MODEL, data.feature_dims)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for i, batch in enumerate(data.batches(batch_size, shuffle=True, seed=seed)):
        if max_batches is not None and i >= max_batches:
            break
        logits = model({k: v.float() for k, v in batch.features.items()}, batch.person_mask)
        loss = ranking_loss(logits, batch.target, batch.person_mask.any(1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


# ----------------------------------------------------------------------------------- cases
@dataclass
class Case:
    """One kind of clip written to both stores (the last repeat's stores are kept for reads)."""

    name: str
    specs: list[ArraySpec]
    clips: list[BenchClip]
    root: Path
    write_seconds: dict[str, list[float]] = field(default_factory=lambda: {"v2": [], "v1": []})
    v2: FeatureStore | None = None
    v1: v1.FeatureStore | None = None

    @property
    def valid(self) -> int:
        return sum(c.valid for c in self.clips)

    @property
    def valid_bytes(self) -> int:
        """Bytes of the families' valid rows: the payload both stores carry."""
        return self.valid * sum(s.row_bytes for s in self.specs)

    def write(self, repeats: int) -> None:
        for i in range(repeats):
            for kind in ("v2", "v1"):
                old = getattr(self, kind)
                if old is not None:
                    shutil.rmtree(old.path)
                root = self.root / f"{kind}-{i}"
                if kind == "v2":
                    store = create_v2(root, self.specs)
                    seconds, _ = fill_v2(store, self.clips)
                else:
                    store = create_v1(root, self.specs)
                    seconds = fill_v1(store, self.clips)
                setattr(self, kind, store)
                self.write_seconds[kind].append(seconds)


def ratio_line(label: str, unit: str, v2_value: float, v1_value: float, fmt: str = ",.0f") -> str:
    return f"  {label:<34} v2 {v2_value:>12{fmt}} {unit:<10} v1 {v1_value:>12{fmt}} {unit:<10} v2/v1 {v2_value / v1_value:6.2f}x"


# ----------------------------------------------------------------------------------- sections
def section_size(case: Case, say) -> dict:
    """Section 1: bytes per valid person-frame on disk and in RAM."""
    valid = case.valid
    disk_v2 = {s.name: v2_family_bytes(case.v2, s.name) for s in case.specs}
    disk_v1 = {s.name: v1_family_bytes(case.v1, s.name) for s in case.specs}
    total_v2, total_v1 = files_size(case.v2.path), files_size(case.v1.path)
    dataset, peak_v2 = traced_peak(lambda: load_v2(open_v2(case.v2)))
    ram_v2 = {k: int(v.numel() * v.element_size()) for k, v in v2_cache(dataset).items()}
    del dataset
    loaded, peak_v1 = traced_peak(lambda: load_v1(open_v1(case.v1)))
    ram_v1 = {k: int(v.numel() * v.element_size()) for k, v in loaded.items()}
    del loaded
    target = 1.1 * APPEARANCE.row_bytes
    fig = {
        "clips": len(case.clips), "valid_person_frames": valid, "slots": int(np.prod(case.clips[0].features[MASK].shape)) * len(case.clips),
        "disk_bytes_v2": disk_v2, "disk_bytes_v1": disk_v1, "disk_total_v2": total_v2, "disk_total_v1": total_v1,
        "ram_bytes_v2": ram_v2, "ram_bytes_v1": ram_v1, "ram_peak_during_load_v2": peak_v2, "ram_peak_during_load_v1": peak_v1,
        "appearance_disk_per_pf_v2": disk_v2["appearance"] / valid, "appearance_disk_per_pf_v1": disk_v1["appearance"] / valid,
        "appearance_ram_per_pf_v2": ram_v2["appearance"] / valid, "appearance_ram_per_pf_v1": ram_v1["appearance"] / valid,
        "target_bytes_per_pf": target,
    }  # fmt: skip
    fig["target_met"] = fig["appearance_disk_per_pf_v2"] <= target and fig["appearance_ram_per_pf_v2"] <= target
    t, n = case.clips[0].features[MASK].shape
    say(f"{len(case.clips)} clips, T={t}, N={n}, {valid:,} valid person-frames = {valid / fig['slots']:.1%} of the T x N slots")
    say("bytes per valid person-frame (raw: appearance 1,536 = 768 x 2, geometry 72 = 18 x 4)")
    for name in ("appearance", "geometry"):
        say(ratio_line(f"{name}, on disk", "B/pf", disk_v2[name] / valid, disk_v1[name] / valid))
    for name in ("appearance", "geometry"):
        say(ratio_line(f"{name}, in RAM", "B/pf", ram_v2[name] / valid, ram_v1[name] / valid))
    say(ratio_line("whole store on disk", "B/pf", total_v2 / valid, total_v1 / valid))
    say(ratio_line("whole split in RAM", "B/pf", sum(ram_v2.values()) / valid, sum(ram_v1.values()) / valid))
    say(ratio_line("peak allocated while loading", "B/pf", peak_v2 / valid, peak_v1 / valid))
    say(f"  (in RAM, v2 = StoreDataset(in_memory='yes') rows: {', '.join(f'{k} {v:,}' for k, v in ram_v2.items())} bytes;")
    say(f"   v1 = df34f65 StoreDataset's padded (C, T, N, D) read: {', '.join(f'{k} {v:,}' for k, v in ram_v1.items())} bytes)")
    ok = "MET" if fig["target_met"] else "MISSED"
    say(f"  target: v2 appearance <= 1.1 x 1,536 = {target:,.1f} B/pf on disk ({fig['appearance_disk_per_pf_v2']:,.1f}) "
        f"and in RAM ({fig['appearance_ram_per_pf_v2']:,.1f}): {ok}")  # fmt: skip
    return fig


def section_temporal_vip(root: Path, clips: int, frames: int, slots: int, budget_s: float, peak_ratio: tuple[float, float] | None, say) -> dict:
    """Section 2: a Temporal-VIP-size split, v2 written and read back, v1 computed."""
    specs = [APPEARANCE, GEOMETRY]
    clip_iter: Iterator[BenchClip] = (synthetic_clip(100_000 + i, frames, slots, APPEARANCE.shape[0]) for i in range(clips))
    start = time.perf_counter()
    store = create_v2(root, specs)
    write_s, written = fill_v2(store, clip_iter, budget_s=budget_s)
    wall_s = time.perf_counter() - start
    store = open_v2(store)
    records = [store.clips[e.content_hash] for e in store.snapshot(DATASET).entries]
    ram, read_s, checksum = {}, 0.0, ChecksumTimer("time")
    with checksum:
        for i in range(0, len(records), READ_WINDOW):  # a window at a time: the same rows StoreDataset holds, never all at once here
            start = time.perf_counter()
            rows = store.read_clips(records[i : i + READ_WINDOW])
            read_s += time.perf_counter() - start
            for k, v in rows.items():
                ram[k] = ram.get(k, 0) + int(v.nbytes)
            del rows
    valid = sum(r.length for r in records)
    disk = files_size(store.path)
    scale = clips / written
    measured = written == clips
    ram_v2 = sum(ram.values()) * scale
    ram_v1 = clips * frames * slots * (APPEARANCE.row_bytes + GEOMETRY.row_bytes + 1)
    budget = IN_MEMORY_SHARE * MACHINE_RAM
    fig = {
        "clips": clips, "clips_written": written, "measured": measured, "valid_person_frames_written": valid,
        "write_seconds": write_s, "write_wall_seconds_with_generation": wall_s, "read_seconds": read_s, "checksum_seconds": checksum.seconds,
        "disk_bytes": disk * scale, "ram_bytes_v2": ram_v2, "ram_bytes_v2_by_array": {k: v * scale for k, v in ram.items()},
        "ram_bytes_v1_computed": ram_v1, "fits_24gib_v2": ram_v2 < MACHINE_RAM, "fits_24gib_v1": ram_v1 < MACHINE_RAM,
        "in_memory_auto_v2": ram_v2 < budget, "in_memory_auto_v1": ram_v1 < budget,
    }  # fmt: skip
    how = f"measured: all {clips:,} clips written and read" if measured else f"EXTRAPOLATED x{scale:.2f} from {written:,} clips written in the {budget_s:.0f} s budget"
    say(f"{clips:,} clips, T={frames}, N={slots}, 768-d fp16 appearance + 18-d fp32 geometry ({how})")
    say(f"  v2 write: {write_s:,.1f} s in the writer ({written / write_s:.1f} clips/s; {wall_s:,.1f} s with generating the clips), "
        f"{written:,} clips, {valid:,} valid person-frames, {disk / 1e9:.2f} GB on disk")  # fmt: skip
    say(f"  v2 read back in windows of {READ_WINDOW} clips: {read_s:.1f} s ({written / read_s:.0f} clips/s, verified; {checksum.seconds:.2f} s of it in checksums)")
    say(f"  v2 in RAM (packed rows, as StoreDataset holds them): {ram_v2 / GIB:6.2f} GiB "
        f"({', '.join(f'{k} {v * scale / GIB:.2f}' for k, v in ram.items())} GiB)")  # fmt: skip
    say(f"  v1 in RAM (C*T*N*(768*2 + 18*4 + 1), computed): {ram_v1 / GIB:6.2f} GiB   v2/v1 {ram_v2 / ram_v1:.3f}x")
    for kind, value in (("v2", ram_v2), ("v1", ram_v1)):
        say(f"  {kind}: {'fits' if value < MACHINE_RAM else 'does NOT fit'} in 24 GiB; "
            f"{'within' if value < budget else 'OVER'} msgvip's in-RAM budget on a 24 GiB machine "
            f"(--in-memory auto: 40% = {budget / GIB:.1f} GiB, else it streams)")  # fmt: skip
    if peak_ratio is not None:
        peak_v2, peak_v1 = ram_v2 * peak_ratio[0], ram_v1 * peak_ratio[1]
        fig["ram_peak_during_load_v2_estimated"], fig["ram_peak_during_load_v1_estimated"] = peak_v2, peak_v1
        say(f"  peak allocated while loading (estimated: held bytes x section 1's measured peak/held ratio, "
            f"{peak_ratio[0]:.2f} for v2, {peak_ratio[1]:.2f} for v1): v2 {peak_v2 / GIB:.1f} GiB "
            f"({'fits' if peak_v2 < MACHINE_RAM else 'does NOT fit'} in 24 GiB), v1 {peak_v1 / GIB:.1f} GiB "
            f"({'fits' if peak_v1 < MACHINE_RAM else 'does NOT fit'} in 24 GiB)")  # fmt: skip
    shutil.rmtree(root)
    return fig


def section_throughput(case: Case, repeats: int, read_repeats: int, profile: bool, say) -> dict:
    """Section 3: whole-split write (already timed by Case.write) and read throughput."""
    mb = case.valid_bytes / 1e6

    def store_read(kind: str) -> Callable[[], float]:
        def run() -> float:  # a fresh handle and the split's clips looked up first, not timed
            if kind == "v2":
                store = open_v2(case.v2)
                records = split_v2(store)
                start = time.perf_counter()
                read_v2(store, records)
            else:
                store = open_v1(case.v1)
                rows = split_v1(store)
                start = time.perf_counter()
                read_v1(store, rows)
            return time.perf_counter() - start

        return run

    def split_load(kind: str) -> Callable[[], object]:  # from opening the store to the split in RAM
        return (lambda: load_v2(open_v2(case.v2))) if kind == "v2" else (lambda: load_v1(open_v1(case.v1)))

    reads = interleaved({"v2": store_read("v2"), "v1": store_read("v1")}, read_repeats)
    loads = interleaved({"v2": split_load("v2"), "v1": split_load("v1")}, read_repeats)
    rows = {"write": case.write_seconds, "store read (read_clips / read_rows)": reads, "split load (open + StoreDataset)": loads}
    t, n = case.clips[0].features[MASK].shape
    say(f"{case.name}: {len(case.clips)} clips, T={t}, N={n}, {case.valid:,} valid person-frames, {mb:,.1f} MB of valid rows; "
        f"best of {repeats} writes, {read_repeats} reads, v1 and v2 interleaved")  # fmt: skip
    fig: dict = {"clips": len(case.clips), "valid_mb": mb}
    slower = []
    for label, times in rows.items():
        best = {k: min(v) for k, v in times.items()}
        fig[label] = {"seconds_v2": times["v2"], "seconds_v1": times["v1"], "clips_per_s_v2": len(case.clips) / best["v2"],
                      "clips_per_s_v1": len(case.clips) / best["v1"], "v2_over_v1": best["v1"] / best["v2"]}  # fmt: skip
        say(f"  {label:<38} v2 {len(case.clips) / best['v2']:>9,.0f} clips/s {mb / best['v2']:>8,.1f} MB/s   "
            f"v1 {len(case.clips) / best['v1']:>9,.0f} clips/s {mb / best['v1']:>8,.1f} MB/s   v2/v1 {best['v1'] / best['v2']:5.2f}x")  # fmt: skip
        if best["v2"] > best["v1"]:
            slower.append(label)
    fig["v2_slower"] = slower
    if slower and profile:
        for label in slower:
            best_v2 = min(rows[label]["v2"])
            runs = max(1, min(50, math.ceil(1.0 / best_v2)))  # enough runs for about a second of samples
            say(f"  v2 is slower at {label!r} ({fig[label]['v2_over_v1']:.2f}x): profile of {runs} v2 run(s), prepared untimed")
            if label == "write":
                counter = iter(range(1_000_000))

                def prepare() -> Callable:  # a fresh store for each run; creating it is not profiled
                    store = create_v2(case.root / f"profile-{next(counter)}", case.specs)
                    return lambda: fill_v2(store, case.clips)
            elif label.startswith("store"):
                def prepare() -> Callable:
                    store = open_v2(case.v2)
                    records = split_v2(store)
                    return lambda: read_v2(store, records)
            else:
                def prepare() -> Callable:
                    return split_load("v2")
            ops = [prepare() for _ in range(runs)]
            text = profile_top(lambda: [op() for op in ops])
            ops = [prepare() for _ in range(runs)]
            text += "\n" + sample_threads(lambda: [op() for op in ops])
            if label == "write":
                text += "\n" + codec_traffic(case)
            for path in case.root.glob("profile-*"):
                shutil.rmtree(path)
            fig.setdefault("profiles", {})[label] = text
            say(text)
    return fig


def section_verification(case: Case, repeats: int, batch_size: int, epochs: int, say) -> dict:
    """Section 4: share of the verified whole-split load spent in checksums, and against an epoch."""

    def load(mode: str | None) -> Callable[[], float]:
        def run() -> float:
            store = open_v2(case.v2)
            if mode is None:
                start = time.perf_counter()
                load_v2(store)
                return time.perf_counter() - start
            with ChecksumTimer(mode) as timer:
                start = time.perf_counter()
                load_v2(store)
                seconds = time.perf_counter() - start
            if mode == "time":
                shares.append(timer.seconds / seconds)
                checksum_s.append(timer.seconds)
            return seconds

        return run

    shares: list[float] = []
    checksum_s: list[float] = []
    times = interleaved({"verified": load(None), "timed": load("time"), "stub": load("stub")}, repeats)
    best = {k: min(v) for k, v in times.items()}
    median = {k: float(np.median(v)) for k, v in times.items()}
    data = load_v2(open_v2(case.v2))
    train_epoch(data, batch_size, 0, max_batches=2)  # torch's one-off warm-up, not timed
    epoch_s = [train_epoch(data, batch_size, seed) for seed in range(epochs)]
    epoch = min(epoch_s)
    checksum = float(np.median(checksum_s))
    fig = {
        "load_seconds_verified": times["verified"], "load_seconds_stub": times["stub"], "load_seconds_timed": times["timed"],
        "checksum_seconds": checksum_s, "checksum_share_timed": shares, "stub_saving_share_best": 1 - best["stub"] / best["verified"],
        "stub_saving_share_median": 1 - median["stub"] / median["verified"],
        "epoch_seconds": epoch_s, "checksum_over_epoch": checksum / epoch, "target_met": checksum / epoch < 0.05,
    }  # fmt: skip
    t, n = case.clips[0].features[MASK].shape
    say(f"{case.name}: {len(case.clips)} clips, T={t}, N={n}; StoreDataset(in_memory='yes') whole-split load, {repeats} rounds interleaved")
    say(f"  load, verified                 {best['verified']:8.3f} s best, {median['verified']:.3f} s median")
    say(f"  load, array_checksum stubbed   {best['stub']:8.3f} s best, {median['stub']:.3f} s median   -> verification = "
        f"{100 * fig['stub_saving_share_best']:.1f}% (bests), {100 * fig['stub_saving_share_median']:.1f}% (medians) of the load; "
        "a difference of two noisy timings")  # fmt: skip
    say(f"  array_checksum timed in-call   {checksum * 1e3:8.1f} ms (median) = {100 * float(np.median(shares)):.1f}% of its load "
        f"(median; {min(shares) * 100:.1f}% to {max(shares) * 100:.1f}% over {len(shares)} runs)")  # fmt: skip
    say(f"  one training epoch (demo ranker, batch {batch_size}, CPU): {epoch:.2f} s "
        f"({', '.join(f'{s:.2f}' for s in epoch_s)} s)  -> median checksum time = {100 * fig['checksum_over_epoch']:.2f}% of an epoch "
        f"(target < 5%: {'MET' if fig['target_met'] else 'MISSED'})")  # fmt: skip
    return fig


# ----------------------------------------------------------------------------------- main
def command_line(args: argparse.Namespace, sections: str | None = None) -> str:
    python = os.path.relpath(sys.executable) if not os.path.relpath(sys.executable).startswith("..") else sys.executable
    parts = [python, "benchmarks/bench_store.py", "--sections", sections or args.sections, "--clips", str(args.clips),
             "--geometry-clips", str(args.geometry_clips), "--tv-clips", str(args.tv_clips), "--tv-budget-s", str(args.tv_budget_s),
             "--repeats", str(args.repeats), "--read-repeats", str(args.read_repeats), "--epochs", str(args.epochs)]  # fmt: skip
    return " ".join(shlex.quote(p) for p in parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="1,2,3,4", help="which measurements to run (default all: 1,2,3,4)")
    parser.add_argument("--clips", type=int, default=200, help="768-d clips at T x N for sections 1, 3 and 4 (default 200)")
    parser.add_argument("--frames", type=int, default=120, help="T of the 768-d clips (default 120)")
    parser.add_argument("--slots", type=int, default=20, help="N of the 768-d clips (default 20)")
    parser.add_argument("--geometry-clips", type=int, default=300, help="geometry-only demo clips for section 3 (default 300)")
    parser.add_argument("--geometry-frames", type=int, default=32)
    parser.add_argument("--geometry-persons", type=int, default=8)
    parser.add_argument("--tv-clips", type=int, default=TEMPORAL_VIP_CLIPS, help=f"section 2's split size (default {TEMPORAL_VIP_CLIPS:,}, Temporal-VIP)")
    parser.add_argument("--tv-budget-s", type=float, default=480.0, help="section 2 writes for at most this long, then extrapolates (default 480)")
    parser.add_argument("--repeats", type=int, default=3, help="timed write rounds, v1 and v2 interleaved; the best is reported (default 3)")
    parser.add_argument("--read-repeats", type=int, default=7, help="timed read and load rounds, interleaved; the best is reported (default 7)")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs timed in section 4, after a 2-batch warm-up (default 1)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile of a slower v2 side")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON only")
    args = parser.parse_args()
    sections = {int(s) for s in args.sections.split(",") if s.strip()}
    unknown = sections - {1, 2, 3, 4}
    if unknown:
        parser.error(f"--sections: no section {sorted(unknown)}; choose from 1,2,3,4")

    lines: list[str] = []

    def say(text: str = "") -> None:
        lines.append(text)
        if not args.json:
            print(text, flush=True)

    started = time.perf_counter()
    say(f"$ {command_line(args)}")
    say(f"machine: {os.cpu_count()} cores, {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / GIB:.1f} GiB RAM; "
        f"v1 = schema-1 store of df34f65 (benchmarks/_store_v1.py), v2 = msgvip.store (schema {feature_store_v2.SCHEMA_VERSION})")  # fmt: skip
    figures: dict = {"command": command_line(args)}
    with tempfile.TemporaryDirectory(prefix="msgvip-bench-store-", dir="/tmp") as tmp:
        tmp = Path(tmp)
        wide = None
        if sections & {1, 3, 4}:
            clips = [synthetic_clip(i, args.frames, args.slots, APPEARANCE.shape[0]) for i in range(args.clips)]
            wide = Case("768-d appearance + geometry", [APPEARANCE, GEOMETRY], clips, tmp / "wide")
            wide.write(args.repeats if 3 in sections else 1)
        geometry = None
        if sections & {3, 4}:
            geo = demo_geometry_clips(tmp / "demo", args.geometry_clips, args.geometry_frames, args.geometry_persons)
            geometry = Case("geometry-only demo clips", [GEOMETRY], geo, tmp / "geometry")
            geometry.write(args.repeats if 3 in sections else 1)
        if 1 in sections:
            say(f"\n== 1. bytes per valid person-frame   [reproduce: {command_line(args, '1')}]")
            figures["size"] = section_size(wide, say)
        if 2 in sections:
            say(f"\n== 2. a Temporal-VIP-size split in RAM   [reproduce: {command_line(args, '2')}]")
            peaks = figures.get("size")
            peak_ratio = (peaks["ram_peak_during_load_v2"] / sum(peaks["ram_bytes_v2"].values()), peaks["ram_peak_during_load_v1"] / sum(peaks["ram_bytes_v1"].values())) if peaks else None
            figures["temporal_vip"] = section_temporal_vip(tmp / "tv", args.tv_clips, args.frames, args.slots, args.tv_budget_s, peak_ratio, say)
        if 3 in sections:
            say(f"\n== 3. whole-split write and read throughput   [reproduce: {command_line(args, '3')}]")
            figures["throughput_geometry"] = section_throughput(geometry, args.repeats, args.read_repeats, not args.no_profile, say)
            figures["throughput_768d"] = section_throughput(wide, args.repeats, args.read_repeats, not args.no_profile, say)
        if 4 in sections:
            say(f"\n== 4. cost of verified reads   [reproduce: {command_line(args, '4')}]")
            figures["verification_768d"] = section_verification(wide, args.read_repeats, args.batch_size, args.epochs, say)
            figures["verification_geometry"] = section_verification(geometry, args.read_repeats, args.batch_size, args.epochs, say)
            say("  (in RAM a split is read and verified once per training run, so per epoch the share is divided by the epochs;")
            say("   streamed, --in-memory no, every epoch re-reads and re-verifies it: the share above is then per epoch)")
    figures["seconds"] = time.perf_counter() - started
    say(f"\ntotal {figures['seconds']:.0f} s; temporary stores under {tmp} deleted")
    if args.json:
        print(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
