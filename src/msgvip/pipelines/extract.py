"""`msgvip extract`: clips in, committed feature rows out, nothing computed twice.

Three stages overlap: DataLoader worker processes decode and validate clips ahead of the models;
the main thread groups clips so model calls see many crops at once and runs the extractors; a
background thread compresses and writes finished clips a chunk of rows at a time and commits
them, so an interrupted run keeps everything committed and a rerun redoes only the rest.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
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


def run_extract(
    data: Path | str,
    config: ExtractConfig = ExtractConfig(),
    cache_dir: Path | str | None = None,
    on_error: str = "skip",
    progress: bool = True,
) -> ExtractSummary:
    """Extract every clip under ``data`` into the store for ``config``; see the module docstring."""
    if on_error not in ("skip", "fail"):
        raise ValueError(f"on_error must be 'skip' or 'fail', got {on_error!r}")
    start = time.perf_counter()
    sources = discover_clips(data)
    extractors = build_extractors(config)
    fp, record = identity(extractors)
    root = cache_root(cache_dir)
    store = FeatureStore.create(root / fp, fp, record, [a for e in extractors for a in e.arrays()], config.settings())
    summary = ExtractSummary(fingerprint=fp, store=str(store.path), clips_total=len(sources))
    hashes = HashCache(root)
    relabels: list[IndexEntry] = []

    def relabel_if_changed(src: ClipSource, digest: str, target: int | None) -> None:
        entry = store.entries[digest]
        wanted = {"split": src.split, "clip_id": src.clip_id, "source": str(src.path)}
        if target is not None:
            wanted["target"] = target
        if any(getattr(entry, k) != v for k, v in wanted.items()):
            relabels.append(IndexEntry(**{**asdict(entry), **wanted}))

    def write(group: list[tuple[ClipSource, Clip]]) -> None:
        """Extract a group here, then hand it to the writer thread (at most two groups queued)."""
        clips = [clip for _, clip in group]
        features = extract_features(extractors, clips)
        entries = [
            IndexEntry(
                content_hash=clip.content_hash, clip_id=src.clip_id, source=str(src.path), split=src.split,
                target=clip.target, scene=clip.scene, frames=clip.num_frames, persons=clip.num_slots,
                row=-1, checksums={}, written_at=time.time(), repairs=clip.repairs,
            )
            for src, clip in group
        ]  # fmt: skip
        summary.crops += sum(int(c.person_mask.sum()) for c in clips)
        bar.set_postfix_str(f"{summary.crops / (time.perf_counter() - start):.0f} crops/s", refresh=False)
        while len(queued) >= 2:
            queued.pop(0).result()
        queued.append(background.submit(store_group, entries, features))
        group.clear()

    def store_group(entries: list[IndexEntry], features: list[dict[str, np.ndarray]]) -> None:
        for entry, arrays in zip(entries, features):
            bar.update(len(writer.add(entry, arrays)))

    with store.lease():
        store.touch()
        store.set_state(complete=False, clips_expected=len(sources))
        pending = []
        for src in sources:
            digest = hashes.get(src.path)
            if digest is not None and digest in store:
                summary.cached += 1
                relabel_if_changed(src, digest, src.target)
            else:
                pending.append(src)
        bar = tqdm(total=len(sources), initial=summary.cached, unit="clip", desc="extract", disable=not progress, dynamic_ncols=True)
        writer = store.writer()
        background = ThreadPoolExecutor(1, thread_name_prefix="msgvip-writer")
        queued: list[Future] = []
        group: list[tuple[ClipSource, Clip]] = []
        group_crops = 0
        added = 0
        try:
            for src, loaded in decode_clips(pending, config.num_workers):
                if isinstance(loaded, ClipError):
                    summary.failed += 1
                    summary.errors.append({"path": loaded.path, "field": loaded.field, "message": loaded.message})
                    bar.update(1)
                    if on_error == "fail":
                        raise ExtractAborted(str(loaded))
                    continue
                clip, stat = loaded
                hashes.put(src.path, stat, clip.content_hash)
                for key, count in clip.repairs.items():
                    summary.repairs[key] = summary.repairs.get(key, 0) + count
                if clip.content_hash in store or any(c.content_hash == clip.content_hash for _, c in group):
                    summary.cached += 1  # or a second file with the same content in this run
                    if clip.content_hash in store:
                        relabel_if_changed(src, clip.content_hash, clip.target)
                    bar.update(1)
                    continue
                group.append((src, clip))
                added += 1
                group_crops += int(clip.person_mask.sum())
                if group_crops >= config.batch_size:
                    write(group)
                    group_crops = 0
        finally:
            # Clips decoded before an error or an interrupt are still worth committing.
            write(group)
            for future in queued:
                future.result()
            background.shutdown()
            bar.update(len(writer.flush()))
            bar.close()
            hashes.close()
            summary.written = len(writer.committed)
            summary.cached += added - summary.written  # committed first by a concurrent writer
            store.update_labels(relabels)
            summary.relabeled = len(relabels)
            summary.errors_csv = _write_errors(store.path, summary.errors)
            store.set_state(complete=summary.failed == 0 and summary.written + summary.cached == len(sources), clips_expected=len(sources))
            summary.seconds = time.perf_counter() - start
    return summary


def _load(src: ClipSource) -> tuple[Clip, tuple[int, int] | None] | ClipError:
    stat = HashCache.stat(src.path)  # taken before reading: a file changed mid-read rehashes next time
    try:
        return read_clip(src.path, src.clip_id, src.target), stat
    except ClipError as err:
        return err


class _SourceDataset(torch.utils.data.Dataset):
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

    Workers are forked (cheap to start): they only read ``.npz`` files with numpy and never touch
    Zarr or CUDA, the parts of the parent that do not survive a fork."""
    if num_workers == 0 or len(sources) < 2:
        yield from ((src, _load(src)) for src in sources)
        return
    loader = torch.utils.data.DataLoader(
        _SourceDataset(sources), batch_size=None, num_workers=min(num_workers, len(sources)), collate_fn=_as_is,
        prefetch_factor=4, multiprocessing_context="fork",
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
