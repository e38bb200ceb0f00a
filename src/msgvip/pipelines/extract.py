"""`msgvip extract`: clips in, committed feature rows out, nothing computed twice.

Three stages overlap: DataLoader worker processes decode and validate clips ahead of the models;
the main thread groups clips so model calls see many crops at once and runs the extractors; a
background thread compresses and writes finished clips a chunk of rows at a time and commits
them, so an interrupted run keeps everything committed and a rerun redoes only the rest.
"""

from __future__ import annotations

import csv
import multiprocessing
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..config import ExtractConfig
from ..data.clip import Clip, ClipError, read_clip
from ..data.sources import ClipSource, discover_clips
from ..extract.registry import Extractor, build_extractors, identity
from ..store.cache import cache_root
from ..store.feature_store import MASK_ARRAY, FeatureStore, IndexEntry
from ..store.hash_cache import HashCache

ERRORS_FILE = "errors.csv"


class ExtractAborted(Exception):
    """A clip failed under ``on_error='fail'``; everything committed before it stays."""


@dataclass
class ExtractSummary:
    fingerprint: str
    store: str
    clips_total: int = 0
    written: int = 0
    cached: int = 0
    failed: int = 0
    relabeled: int = 0
    crops: int = 0  # valid person-frames extracted
    repairs: dict[str, int] = field(default_factory=lambda: {"clipped_boxes": 0, "zero_area_boxes": 0})
    errors: list[dict[str, str]] = field(default_factory=list)
    errors_csv: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def to_json(self) -> dict:
        return {**asdict(self), "ok": self.ok}


class ExtractRun:
    """The bookkeeping of one extraction, shared by the local and the distributed runners: the
    plan (which clips are already stored), per-clip outcomes, and the closing summary."""

    def __init__(self, data: Path | str, config: ExtractConfig, cache_dir: Path | str | None, on_error: str, progress: bool):
        if on_error not in ("skip", "fail"):
            raise ValueError(f"on_error must be 'skip' or 'fail', got {on_error!r}")
        self.start = time.perf_counter()
        self.config, self.on_error = config, on_error
        self.sources = discover_clips(data)
        self.extractors = build_extractors(config)
        fp, record = identity(self.extractors)
        root = cache_root(cache_dir)
        arrays = [a for e in self.extractors for a in e.arrays()]
        self.store = FeatureStore.create(root / fp, fp, record, arrays, config.settings())
        self.summary = ExtractSummary(fingerprint=fp, store=str(self.store.path), clips_total=len(self.sources))
        self.hashes = HashCache(root)
        self.relabels: list[IndexEntry] = []
        self.progress = progress
        self.bar: tqdm | None = None

    def plan(self) -> list[ClipSource]:
        """Start the run; returns the clips that may need extracting (the rest are stored and
        unchanged since their hash was recorded, so they are not even read)."""
        self.store.touch()
        self.store.set_state(complete=False, clips_expected=len(self.sources))
        pending = []
        for src in self.sources:
            digest = self.hashes.get(src.path)
            if digest is not None and digest in self.store:
                self.cached(src, digest, src.target)
            else:
                pending.append(src)
        self.bar = tqdm(total=len(self.sources), initial=self.summary.cached, unit="clip", desc="extract", disable=not self.progress, dynamic_ncols=True)
        return pending

    def cached(self, src: ClipSource, digest: str, target: int | None) -> None:
        """A clip found in the store: count it and re-label it if its split or label changed."""
        self.summary.cached += 1
        if self.bar is not None:
            self.bar.update(1)
        entry = self.store.entries.get(digest)
        if entry is None:
            self.store.refresh()  # committed by another writer (a dask worker) since we last looked
            entry = self.store.entries.get(digest)
        if entry is None:
            return  # a second file with the same content, committed later in this run
        wanted = {"split": src.split, "clip_id": src.clip_id, "source": str(src.path)}
        if target is not None:
            wanted["target"] = target
        if any(getattr(entry, k) != v for k, v in wanted.items()):
            self.relabels.append(IndexEntry(**{**asdict(entry), **wanted}))

    def failed(self, error: ClipError) -> None:
        self.summary.failed += 1
        self.summary.errors.append({"path": error.path, "field": error.field, "message": error.message})
        self.bar.update(1)
        if self.on_error == "fail":
            raise ExtractAborted(str(error))

    def decoded(self, src: ClipSource, digest: str, repairs: dict[str, int], stat: tuple[int, int] | None) -> None:
        self.hashes.put(src.path, stat, digest)
        for key, count in repairs.items():
            self.summary.repairs[key] = self.summary.repairs.get(key, 0) + count

    def committed(self, count: int, crops: int = 0) -> None:
        self.summary.written += count
        self.summary.crops += crops
        self.bar.update(count)
        if crops:
            self.bar.set_postfix_str(f"{self.summary.crops / (time.perf_counter() - self.start):.0f} crops/s", refresh=False)

    def finish(self) -> ExtractSummary:
        s = self.summary
        if self.bar is not None:
            self.bar.close()
        self.hashes.close()
        self.store.update_labels(self.relabels)
        s.relabeled = len(self.relabels)
        s.errors_csv = _write_errors(self.store.path, s.errors)
        self.store.set_state(complete=s.failed == 0 and s.written + s.cached == len(self.sources), clips_expected=len(self.sources))
        s.seconds = time.perf_counter() - self.start
        return s


def index_entry(src: ClipSource, clip: Clip) -> IndexEntry:
    """The index record of a freshly extracted clip (row and checksums are filled in on write)."""
    return IndexEntry(
        content_hash=clip.content_hash, clip_id=src.clip_id, source=str(src.path), split=src.split,
        target=clip.target, scene=clip.scene, frames=clip.num_frames, persons=clip.num_slots,
        row=-1, checksums={}, written_at=time.time(), repairs=clip.repairs,
    )  # fmt: skip


def run_extract(
    data: Path | str,
    config: ExtractConfig = ExtractConfig(),
    cache_dir: Path | str | None = None,
    on_error: str = "skip",
    progress: bool = True,
    workers: int | None = None,
    scheduler: str | None = None,
) -> ExtractSummary:
    """Extract every clip under ``data`` into the store for ``config``; see the module docstring.

    With ``workers`` (a local dask cluster) or ``scheduler`` (an existing one's address) the clips
    are spread over dask workers instead (see :mod:`msgvip.pipelines.distributed`)."""
    run = ExtractRun(data, config, cache_dir, on_error, progress)
    with run.store.lease():
        try:
            if workers or scheduler:
                from .distributed import extract_on_dask

                extract_on_dask(run, workers=workers, scheduler=scheduler)
            else:
                _extract_here(run)
        finally:
            run.finish()
    return run.summary


def _extract_here(run: ExtractRun) -> None:
    """Decode in worker processes, extract here, write in a background thread."""
    writer = run.store.writer()
    background = ThreadPoolExecutor(1, thread_name_prefix="msgvip-writer")
    queued: list[Future] = []
    group: list[tuple[ClipSource, Clip]] = []
    added = 0

    def store_group(entries: list[IndexEntry], features: list[dict[str, np.ndarray]], crops: int) -> None:
        for entry, arrays in zip(entries, features):
            run.committed(len(writer.add(entry, arrays)))
        run.committed(0, crops)

    def write() -> None:
        """Extract the group here, then hand it to the writer thread (at most two groups queued)."""
        clips = [clip for _, clip in group]
        features = extract_features(run.extractors, clips)
        entries = [index_entry(src, clip) for src, clip in group]
        while len(queued) >= 2:
            queued.pop(0).result()
        queued.append(background.submit(store_group, entries, features, sum(int(c.person_mask.sum()) for c in clips)))
        group.clear()

    try:
        for src, loaded in decode_clips(run.plan(), run.config.num_workers):
            if isinstance(loaded, ClipError):
                run.failed(loaded)
                continue
            clip, stat = loaded
            run.decoded(src, clip.content_hash, clip.repairs, stat)
            if clip.content_hash in run.store or any(c.content_hash == clip.content_hash for _, c in group):
                run.cached(src, clip.content_hash, clip.target)
                continue
            group.append((src, clip))
            added += 1
            if sum(int(c.person_mask.sum()) for _, c in group) >= run.config.batch_size:
                write()
    finally:
        # Clips decoded before an error or an interrupt are still worth committing.
        write()
        for future in queued:
            future.result()
        background.shutdown()
        run.committed(len(writer.flush()))
        run.summary.cached += added - len(writer.committed)  # committed first by a concurrent writer


def _load(src: ClipSource) -> tuple[Clip, tuple[int, int] | None] | ClipError:
    stat = HashCache.stat(src.path)  # taken before reading: a file changed mid-read rehashes next time
    try:
        return read_clip(src.path, src.clip_id, src.target), stat
    except ClipError as err:
        return err


class _SourceDataset:  # a map-style dataset; DataLoader needs only __len__ and __getitem__
    def __init__(self, sources: list[ClipSource]):
        self.sources = sources

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int):
        return self.sources[i], _load(self.sources[i])


def _as_is(item):
    return item


def decode_clips(sources: list[ClipSource], num_workers: int) -> Iterator[tuple[ClipSource, tuple[Clip, tuple[int, int] | None] | ClipError]]:
    """``(source, clip or error)`` in order; with workers, decoded ahead in worker processes.

    Workers start from a forkserver, never by forking this process: it runs threads (Zarr's I/O
    loop, the background writer), and a fork taken while another thread held interpreter state
    crashed workers in numpy's header parsing ("AST constructor recursion depth mismatch")."""
    if num_workers == 0 or len(sources) < 2:
        yield from ((src, _load(src)) for src in sources)
        return
    from torch.utils.data import DataLoader  # only here: the cache commands start without torch

    context = multiprocessing.get_context("forkserver")
    # The server imports these once; each worker then forks from it ready to run (~0.1 s, not the
    # seconds a fresh interpreter spends importing torch). Takes effect when the server starts.
    context.set_forkserver_preload(["torch.utils.data", __name__])
    loader = DataLoader(
        _SourceDataset(sources), batch_size=None, num_workers=min(num_workers, len(sources)), collate_fn=_as_is,
        prefetch_factor=4, multiprocessing_context=context,
    )  # fmt: skip
    yield from loader


def _write_errors(store_path: Path, errors: list[dict[str, str]]) -> str | None:
    path = Path(store_path) / ERRORS_FILE
    if not errors:
        path.unlink(missing_ok=True)
        return None
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "field", "message"])
        writer.writeheader()
        writer.writerows(errors)
    return str(path)


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
