"""The bookkeeping of one extraction, shared by the local runner (:mod:`.extract`) and the
dask one (:mod:`.distributed`): which clips are new, the store they go to, their commit, the
dataset snapshot, the summary; and the steps both runners take per clip (load, extract)."""

from __future__ import annotations

import csv
import io
import re
import time
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
from ..store.records import Snapshot, SnapshotEntry

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


def load_clip(src: ClipSource, max_clip_bytes: int = DEFAULT_MAX_CLIP_BYTES) -> tuple[Clip, FileStat | None] | ClipError:
    stat = HashCache.stat(src.path)  # taken before reading: a file changed mid-read rehashes next time
    try:
        return read_clip(src.path, src.clip_id, src.target, max_clip_bytes=max_clip_bytes), stat
    except ClipError as err:
        return err


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
