"""`msgvip extract`: clips in, committed feature rows out, nothing computed twice; then the
dataset snapshot (which clips DATA holds, with their labels) replaces the previous one of its name.

Three stages overlap: DataLoader worker processes decode and validate clips ahead of the models;
the main thread groups clips so model calls see many crops at once and runs the extractors; a
background thread compresses and writes finished clips a chunk of rows at a time and commits
them, so an interrupted run keeps everything committed and a rerun redoes only the rest.
"""

from __future__ import annotations

import csv
import io
import multiprocessing
import os
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import platformdirs

from ..config import ConfigError, ExtractConfig
from ..data.clip import DEFAULT_MAX_CLIP_BYTES, Clip, ClipError, read_clip
from ..data.sources import ClipSource, discover_clips
from ..extract.registry import Extractor, build_extractors, identity
from ..progress import progress_bar
from ..store.cache import cache_root
from ..store.feature_store import MASK_ARRAY, FeatureStore, StoreError
from ..store.hash_cache import FileStat, HashCache
from ..store.locks import store_lease
from ..store.records import Snapshot, SnapshotEntry
from .lifetime import exit_with_parent

UNKNOWN_TARGET = -2  # hash-cache marker: the target came from a manifest, not from the file


class ExtractAborted(Exception):
    """A clip failed under ``on_error='fail'``; everything committed before it stays."""


@dataclass
class ExtractSummary:
    fingerprint: str
    store: str
    dataset: str
    clips_total: int = 0
    written: int = 0
    cached: int = 0
    failed: int = 0
    repaired: int = 0  # clips whose stored rows were damaged, extracted again
    crops: int = 0  # valid person-frames extracted
    changes: dict[str, int] = field(default_factory=lambda: {"added": 0, "changed": 0, "removed": 0, "unchanged": 0})
    leaks: dict[str, list[list[str]]] = field(default_factory=dict)  # "train/test" -> [[key, key], ...]
    replaced_data: str | None = None  # the previous snapshot of this name came from other data
    repairs: dict[str, int] = field(default_factory=lambda: {"clipped_boxes": 0, "zero_area_boxes": 0})
    errors: list[dict[str, str]] = field(default_factory=list)
    errors_csv: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def to_json(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def default_dataset_name(data: Path | str) -> str:
    """A dataset is named after its folder, or its manifest without the extension."""
    path = Path(data).absolute()
    return path.stem if path.is_file() else path.name


def check_dataset_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", name):
        raise ConfigError(f"dataset name {name!r}: use letters, digits, '.', '_' and '-' (starting with a letter or digit); pass --dataset NAME")
    return name


class ExtractRun:
    """The bookkeeping of one extraction, shared by the local and the distributed runners: the
    plan (which clips are already stored), per-clip outcomes, the dataset snapshot it writes and
    the closing summary."""

    def __init__(self, data: Path | str, config: ExtractConfig, cache_dir: str | None, on_error: str, progress: bool,
                 dataset: str | None = None, storage_options: dict | None = None):  # fmt: skip
        if on_error not in ("skip", "fail"):
            raise ValueError(f"on_error must be 'skip' or 'fail', got {on_error!r}")
        self.start = time.perf_counter()
        self.config, self.on_error, self.data = config, on_error, Path(data).absolute()
        self.dataset = check_dataset_name(dataset or default_dataset_name(data))
        self.sources = discover_clips(data)
        self.extractors = build_extractors(config)
        self.fingerprint, self.record = identity(self.extractors)
        self.root = cache_root(cache_dir, storage_options)
        self.store: FeatureStore | None = None
        self.summary = ExtractSummary(fingerprint=self.fingerprint, store=self.root.child_url(self.fingerprint), dataset=self.dataset, clips_total=len(self.sources))
        local = self.root.local_path or Path(platformdirs.user_cache_dir("msgvip"))
        self.hashes = HashCache(local)
        self.entries: dict[str, SnapshotEntry] = {}  # clip key -> entry, for the snapshot
        self.redo: set[str] = set()  # content hashes whose stored rows are damaged
        self.checked: set[str] = set()  # content hashes whose stored rows were checked this run
        self.progress = progress
        self.bar = None  # progress_bar, once the clips to extract are known

    def open_store(self) -> FeatureStore:
        """Create (or open) the store; call under its lease."""
        arrays = [a for e in self.extractors for a in e.arrays()]
        self.store = FeatureStore.create(self.root, self.fingerprint, self.record, arrays, self.config.settings())
        return self.store

    def is_stored(self, digest: str) -> bool:
        """Whether ``digest``'s rows are stored intact; rows the plan did not check (a file the
        hash cache did not know) are checked now, so damage is repaired whatever the hash cache says."""
        if digest in self.store and digest not in self.redo and digest not in self.checked:
            self.checked.add(digest)
            if self.store.check([self.store.clips[digest]]):
                self.redo.add(digest)
        return digest in self.store and digest not in self.redo

    def plan(self) -> list[ClipSource]:
        """Start the run; returns the clips that may need extracting. The rest are unchanged
        since their hash was recorded and their stored rows pass their checksums, so they are not
        even read; stored rows that fail are extracted again (a rerun repairs a damaged store)."""
        self.store.touch()
        known = {}
        for src in self.sources:
            hit = self.hashes.get(src.path)
            if hit is not None and hit[0] in self.store and (src.target is not None or hit[1] != UNKNOWN_TARGET):
                known[src] = hit
        self.checked = {d for d, _, _ in known.values()}
        damaged = self.store.check([self.store.clips[digest] for digest in self.checked])
        self.redo = {record.content_hash for record, _ in damaged}
        pending = []
        for src in self.sources:
            hit = known.get(src)
            if hit is None or hit[0] in self.redo:
                pending.append(src)
            else:
                self.cached(src, hit[0], hit[1] if src.target is None else src.target, hit[2])
        self.bar = progress_bar(total=len(self.sources), initial=self.summary.cached, unit="clip", desc="extract", enabled=self.progress)
        return pending

    def _member(self, src: ClipSource, digest: str, target: int, scene: str) -> None:
        self.entries[src.clip_id] = SnapshotEntry(src.clip_id, digest, src.split, int(target), scene, str(src.path))

    def cached(self, src: ClipSource, digest: str, target: int, scene: str) -> None:
        """A clip whose content is already stored: it joins the snapshot as it is."""
        self.summary.cached += 1
        self._member(src, digest, target, scene)
        if self.bar is not None:
            self.bar.update(1)

    def failed(self, error: ClipError) -> None:
        self.summary.failed += 1
        self.summary.errors.append({"path": error.path_str, "field": error.field, "message": error.message})
        self.bar.update(1)
        if self.on_error == "fail":
            raise ExtractAborted(str(error))

    def decoded(self, src: ClipSource, digest: str, target: int, scene: str, repairs: dict[str, int], stat) -> None:
        self.hashes.put(src.path, stat, digest, UNKNOWN_TARGET if src.target is not None else target, scene)
        for key, count in repairs.items():
            self.summary.repairs[key] = self.summary.repairs.get(key, 0) + count

    def committed(self, src: ClipSource | None, digest: str = "", target: int = -1, scene: str = "", crops: int = 0, shown: bool = False) -> None:
        """A clip whose rows this run wrote (``src`` None: only person-frames to count); ``shown``:
        the progress bar counted it already, when its features were extracted."""
        if src is not None:
            self.summary.written += 1
            self.summary.repaired += digest in self.redo
            self._member(src, digest, target, scene)
            if not shown:
                self.bar.update(1)
        self.summary.crops += crops
        if crops:  # every family's rows are person-frames; only appearance and face cut crops from them
            self.bar.set_postfix_str(f"{self.summary.crops / (time.perf_counter() - self.start):.0f} person-frames/s", refresh=False)

    def extracted(self, clips: int) -> None:
        """Clips whose features are computed (their commit follows): the bar moves now, not a commit of 64 later."""
        self.bar.update(clips)

    def _previous_snapshot(self) -> Snapshot | None:
        """The snapshot this run replaces; a damaged one is replaced too (that is its repair)."""
        if self.dataset not in self.store.snapshot_names():
            return None
        try:
            return self.store.snapshot(self.dataset)
        except StoreError:
            return None

    def finish(self, aborted: bool) -> ExtractSummary:
        """Close the run: the snapshot is written unless the run was aborted (then the previous
        snapshot of this name stays as it was)."""
        s = self.summary
        if self.bar is not None:
            self.bar.close()
        self.hashes.close()
        if self.store is not None:
            s.errors_csv = _write_errors(self.store, self.dataset, s.errors)
            if not aborted:
                snapshot = Snapshot(self.dataset, str(self.data), time.time(), tuple(self.entries[k] for k in sorted(self.entries)), s.failed)
                previous = self._previous_snapshot()
                s.changes = _changes(previous, snapshot)
                s.leaks = snapshot.leaks()
                if previous is not None and previous.data != snapshot.data:
                    s.replaced_data = previous.data
                self.store.write_snapshot(snapshot)
        s.seconds = time.perf_counter() - self.start
        return s


def _changes(previous: Snapshot | None, current: Snapshot) -> dict[str, int]:
    """Clips added, changed (content or labels), removed and unchanged since ``previous``."""
    before = {e.key: e for e in previous.entries} if previous else {}
    after = {e.key: e for e in current.entries}
    changed = sum(1 for k in after.keys() & before.keys() if after[k] != replace(before[k], source=after[k].source))
    return {"added": len(after.keys() - before.keys()), "changed": changed, "removed": len(before.keys() - after.keys()),
            "unchanged": len(after.keys() & before.keys()) - changed}  # fmt: skip


def run_extract(
    data: Path | str,
    config: ExtractConfig = ExtractConfig(),
    cache_dir: str | os.PathLike | None = None,
    on_error: str = "skip",
    progress: bool = True,
    workers: int | None = None,
    scheduler: str | None = None,
    dataset: str | None = None,
    storage_options: dict | None = None,
) -> ExtractSummary:
    """Extract every clip under ``data`` into the store for ``config`` and write the dataset
    snapshot ``dataset`` (default: the data folder's or manifest's name); see the module docstring.

    With ``workers`` (a local dask cluster) or ``scheduler`` (an existing one's address) the clips
    are spread over dask workers instead (see :mod:`msgvip.pipelines.distributed`)."""
    run = ExtractRun(data, config, cache_dir, on_error, progress, dataset, storage_options)
    with store_lease(run.root, run.fingerprint):  # before the store exists: gc cannot take it half-made
        aborted = True
        try:
            run.open_store()
            if workers or scheduler:
                from .distributed import extract_on_dask

                extract_on_dask(run, workers=workers, scheduler=scheduler)
            else:
                _extract_here(run)
            aborted = False
        finally:
            run.finish(aborted)
    return run.summary


def _extract_here(run: ExtractRun) -> None:
    """Decode in worker processes, extract here, write in a background thread."""
    writer = run.store.writer()
    background = ThreadPoolExecutor(1, thread_name_prefix="msgvip-writer")
    queued: list[Future] = []
    group: list[tuple[ClipSource, Clip]] = []
    waiting: dict[str, list[tuple[ClipSource, Clip]]] = {}  # content hash -> sources waiting for its commit
    waiting_lock = threading.Lock()  # the writer thread pops what the decode loop appends to

    def store_group(clips: list[Clip], features: list[dict[str, np.ndarray]], crops: int) -> None:
        for clip, arrays in zip(clips, features):
            report(writer.add(clip.content_hash, arrays))
        run.committed(None, crops=crops)

    def report(records) -> None:
        for record in records:
            with waiting_lock:
                done = waiting.pop(record.content_hash, [])
            for src, clip in done:
                run.committed(src, clip.content_hash, clip.target, clip.scene, shown=True)

    def write() -> None:
        """Extract the group here, then hand it to the writer thread (at most two groups queued)."""
        clips = [clip for _, clip in group]
        features = extract_features(run.extractors, clips)
        run.extracted(len(clips))
        while len(queued) >= 2:
            queued.pop(0).result()
        queued.append(background.submit(store_group, clips, features, sum(int(c.person_mask.sum()) for c in clips)))
        group.clear()

    try:
        for src, loaded in decode_clips(run.plan(), run.config.num_workers, run.config.max_clip_bytes):
            if isinstance(loaded, ClipError):
                run.failed(loaded)
                continue
            clip, stat = loaded
            run.decoded(src, clip.content_hash, clip.target, clip.scene, clip.repairs, stat)
            with waiting_lock:
                queued_already = clip.content_hash in waiting  # the same bytes under another name
                if queued_already:
                    waiting[clip.content_hash].append((src, clip))
            if queued_already:
                run.extracted(1)  # committed with the clip of the same bytes
                continue
            if run.is_stored(clip.content_hash):
                run.cached(src, clip.content_hash, clip.target, clip.scene)
            else:
                with waiting_lock:
                    waiting[clip.content_hash] = [(src, clip)]
                group.append((src, clip))
                if sum(int(c.person_mask.sum()) for _, c in group) >= run.config.batch_size:
                    write()
    finally:
        # Clips decoded before an error or an interrupt are still worth committing.
        if group:
            write()
        for future in queued:
            future.result()
        background.shutdown()
        report(writer.flush())


def _load(src: ClipSource, max_clip_bytes: int = DEFAULT_MAX_CLIP_BYTES) -> tuple[Clip, FileStat | None] | ClipError:
    stat = HashCache.stat(src.path)  # taken before reading: a file changed mid-read rehashes next time
    try:
        return read_clip(src.path, src.clip_id, src.target, max_clip_bytes=max_clip_bytes), stat
    except ClipError as err:
        return err


class _SourceDataset:  # a map-style dataset; DataLoader needs only __len__ and __getitem__
    def __init__(self, sources: list[ClipSource], max_clip_bytes: int):
        self.sources, self.max_clip_bytes = sources, max_clip_bytes

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int):
        return self.sources[i], _load(self.sources[i], self.max_clip_bytes)


def _as_is(item):
    return item


def decode_clips(
    sources: list[ClipSource], num_workers: int, max_clip_bytes: int = DEFAULT_MAX_CLIP_BYTES
) -> Iterator[tuple[ClipSource, tuple[Clip, FileStat | None] | ClipError]]:
    """``(source, clip or error)`` in order; with workers, decoded ahead in worker processes.

    Workers start from a forkserver, never by forking this process: it runs threads (Zarr's I/O
    loop, the background writer), and a fork taken while another thread held interpreter state
    crashed workers in numpy's header parsing ("AST constructor recursion depth mismatch")."""
    if num_workers == 0 or len(sources) < 2:
        yield from ((src, _load(src, max_clip_bytes)) for src in sources)
        return
    from torch.utils.data import DataLoader  # only here: the cache commands start without torch

    context = multiprocessing.get_context("forkserver")
    # The server imports these once; each worker then forks from it ready to run (~0.1 s, not the
    # seconds a fresh interpreter spends importing torch). Takes effect when the server starts.
    context.set_forkserver_preload(["torch.utils.data", __name__])
    loader = DataLoader(
        _SourceDataset(sources, max_clip_bytes), batch_size=None, num_workers=min(num_workers, len(sources)), collate_fn=_as_is,
        prefetch_factor=4, multiprocessing_context=context, worker_init_fn=exit_with_parent,
    )  # fmt: skip
    yield from loader


def _write_errors(store: FeatureStore, dataset: str, errors: list[dict[str, str]]) -> str | None:
    """The failed clips of the last run on ``dataset`` as CSV in the store (None when none failed)."""
    key = store.key(f"errors-{dataset}.csv")
    if not errors:
        store.storage.delete(key)
        return None
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["path", "field", "message"])
    writer.writeheader()
    writer.writerows(errors)
    store.storage.write(key, text.getvalue().encode("utf-8", "surrogateescape"))
    return store.storage.child_url(key)


def extract_features(extractors: list[Extractor], clips: list[Clip]) -> list[dict[str, np.ndarray]]:
    """Every array the store holds for each clip: the person mask plus each family's output."""
    outputs = [extractor.extract(clips) for extractor in extractors]
    merged = []
    for i, clip in enumerate(clips):
        features = {MASK_ARRAY: clip.person_mask}
        for per_clip in outputs:
            features.update(per_clip[i])
        merged.append(features)
    return merged
