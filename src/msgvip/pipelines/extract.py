"""`msgvip extract`: clips in, committed feature rows out, nothing computed twice; then the
dataset snapshot (which clips DATA holds, with their labels) replaces the previous one of its name.

Three stages overlap: DataLoader worker processes decode and validate clips ahead of the models;
the main thread groups clips so model calls see many crops at once and runs the extractors; a
background thread compresses and writes finished clips a chunk of rows at a time and commits
them, so an interrupted run keeps everything committed and a rerun redoes only the rest.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..config import ExtractConfig
from ..data.clip import DEFAULT_MAX_CLIP_BYTES, Clip, ClipError
from ..data.sources import ClipSource
from ..store.hash_cache import FileStat
from ..store.locks import store_lease
from .extract_run import ExtractRun, ExtractSummary, extract_features, load_clip
from .lifetime import exit_with_parent


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


class _SourceDataset:  # a map-style dataset; DataLoader needs only __len__ and __getitem__
    def __init__(self, sources: list[ClipSource], max_clip_bytes: int):
        self.sources, self.max_clip_bytes = sources, max_clip_bytes

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int):
        return self.sources[i], load_clip(self.sources[i], self.max_clip_bytes)


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
        yield from ((src, load_clip(src, max_clip_bytes)) for src in sources)
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
