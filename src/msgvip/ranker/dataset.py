"""The clips of a dataset snapshot as training batches (DESIGN.md section 6).

A split is held in RAM when it fits (one bulk read of packed rows, then batches are gathered and
padded), else streamed: windows of clips that lie together in the store are read by a background
thread a window ahead. Training batches get a random permutation of person slots, so the model
cannot learn slot ids.
"""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from queue import Queue

import numpy as np
import pandas as pd
import torch

from ..config import ConfigError
from ..store.feature_store import FeatureStore, StoreError
from ..store.records import Snapshot, SnapshotEntry

# What the heuristic baselines (largest box, most central) read, from whichever box family the
# store holds: geometry has the centre's distance itself, svip_box its centre (in frame units).
BASELINE_COLUMNS = {"geometry": ("area", "center_dist"), "svip_box": ("area", "cx", "cy")}


class LabelError(ConfigError):
    pass


@dataclass
class ClipBatch:
    # name -> (B, T, N, D) padded, or (V, D) packed: the valid person-frames in the row-major
    # (b, t, n) order of person_mask.nonzero(), so a model needs no padded copy
    features: dict[str, torch.Tensor]
    person_mask: torch.Tensor  # (B, T, N) bool
    target: torch.Tensor  # (B,) long, -1 = unlabeled
    index: torch.Tensor  # (B,) position of each clip in its dataset's ``entries``
    slot_order: torch.Tensor  # (B, N): batch slot j holds the clip's original slot slot_order[b, j]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ClipBatch:
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return ClipBatch({k: move(v) for k, v in self.features.items()}, move(self.person_mask), move(self.target), self.index, self.slot_order)


LabelOverrides = Mapping[str, Mapping[str, object]]  # clip id, content hash or source path -> {"target", "split"}


def read_label_overrides(path: Path) -> dict[str, dict[str, object]]:
    """A CSV that overrides the store's labels and/or splits.

    It needs a key column, ``clip_id``, ``content_hash`` or ``path`` (the extraction manifest's
    format; relative to the CSV's folder), and ``target`` and/or ``split`` columns; an empty cell
    keeps the store's value."""
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    key = next((k for k in ("clip_id", "content_hash", "path") if k in table.columns), None)
    values = [c for c in ("target", "split") if c in table.columns]
    if key is None or not values:
        raise LabelError(f"{path}: needs a clip_id, content_hash or path column and a target and/or split column; has {list(table.columns)}")
    overrides: dict[str, dict[str, object]] = {}
    for number, row in enumerate(table.to_dict("records"), start=2):
        ident = row[key] if key != "path" else _source_key(Path(path).parent / row[key])
        change: dict[str, object] = {}
        if row.get("target", ""):
            try:
                change["target"] = int(row["target"])
            except ValueError:
                raise LabelError(f"{path}: column 'target' row {number}: {row['target']!r} is not an integer slot") from None
        if row.get("split", ""):
            change["split"] = row["split"]
        overrides[ident] = change
    return overrides


def _source_key(path: Path | str) -> str:
    return str(Path(path).resolve())


def _label_keys(entry: SnapshotEntry) -> tuple[str, str, str]:
    return entry.key, entry.content_hash, _source_key(entry.source)


def unmatched_labels(snapshot: Snapshot, labels: LabelOverrides | None) -> list[str]:
    """Keys of a label file that name no clip of the snapshot (a typo, or another dataset's clips)."""
    known = {key for entry in snapshot.entries for key in _label_keys(entry)}
    return sorted(set(labels or {}) - known)


def _in_background(items: Iterator, depth: int) -> Iterator:
    """Run an iterator in a daemon thread, ``depth`` items ahead; its errors re-raise here."""
    done = object()
    queue: Queue = Queue(maxsize=depth)

    def produce() -> None:
        try:
            for item in items:
                queue.put(item)
        except BaseException as err:  # handed to the consumer, which re-raises it
            queue.put(err)
        queue.put(done)

    threading.Thread(target=produce, daemon=True, name="msgvip-batches").start()
    while (item := queue.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


def _memory_budget() -> int:
    return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * 0.4)


# A batch pads its clips to their largest frames x persons: up to this many times the cells of
# batch_size typical clips (the median), before an outlier is put in a batch of its own. Clips of
# one shape (every synthetic world, Temporal-VIP's 120 frames) always fill whole batches.
PAD_BUDGET = 2.0


def _baseline_source(store: FeatureStore) -> tuple[str | None, list[int] | None]:
    """(family, its columns) the heuristic baselines read: geometry where the store has it, else svip_box."""
    for family, names in BASELINE_COLUMNS.items():
        columns = store.config.get("features", {}).get(family, {}).get("features", [])
        if family in store.families and set(names) <= set(columns):
            return family, [columns.index(n) for n in names]
    return None, None


class StoreDataset:
    """The clips of one split (``None`` = all) of a dataset snapshot of a store.

    ``dataset`` names the snapshot (default: the store's only one). ``families`` picks feature
    arrays (default: all the store holds); multi-dim families such as pose (K, 3) are flattened
    to one vector per person-frame. ``labels`` (see :func:`read_label_overrides`) overrides the
    snapshot's targets and splits.

    Rows stay packed (valid person-frames only) in RAM and in flight; a batch is padded only to
    its own clips' largest (T, N). Every clip read is checked against its checksums.
    """

    def __init__(
        self,
        store: FeatureStore,
        split: str | None,
        families: Sequence[str] | None = None,
        in_memory: str = "auto",
        labels: LabelOverrides | None = None,
        dataset: str | None = None,
    ):
        self.store = store
        self.split = split
        self.snapshot = store.resolve_dataset(dataset)
        available = store.families
        self.families = list(available if families is None else families)
        unknown = set(self.families) - set(available)
        if unknown:
            raise LabelError(f"{store.location}: no feature arrays {sorted(unknown)} (the store holds {available})")
        specs = {a.name: a for a in store.specs}
        self.feature_dims = {f: int(np.prod(specs[f].shape)) for f in self.families}
        labels = labels or {}

        def override(entry: SnapshotEntry) -> Mapping[str, object]:
            if not labels:
                return {}  # and no path is resolved: that cost a quarter of a split's load
            for key in _label_keys(entry):
                if key in labels:
                    return labels[key]
            return {}

        chosen = [(e, override(e)) for e in self.snapshot.entries]
        chosen = [(e, o) for e, o in chosen if split is None or o.get("split", e.split) == split]
        self.entries: list[SnapshotEntry] = [e for e, _ in chosen]
        self.targets = torch.tensor([int(o.get("target", e.target)) for e, o in chosen], dtype=torch.long)
        missing = [e.key for e in self.entries if e.content_hash not in store.clips]
        if missing:
            raise StoreError(
                f"{store.location}: dataset {self.snapshot.name!r}: clip {missing[0]} (and {len(missing) - 1} more) has no committed "
                f"rows; rerun `msgvip extract {self.snapshot.data}` to extract it"
            )
        self.records = [store.clips[e.content_hash] for e in self.entries]
        self.lengths = np.array([r.length for r in self.records], dtype=np.int64)
        # In RAM, clips sit in storage order (read back to back, without a copy): clip c's rows
        # are starts[c] : starts[c] + lengths[c].
        self.storage_order = np.array(sorted(range(len(self.records)), key=lambda i: (self.records[i].segment, self.records[i].offset)), dtype=np.int64)
        self.starts = np.empty(len(self.records), dtype=np.int64)
        self.starts[self.storage_order] = np.cumsum(self.lengths[self.storage_order]) - self.lengths[self.storage_order]
        self.frames = max((r.frames for r in self.records), default=0)
        self.persons = max((r.persons for r in self.records), default=0)
        self._clip_frames = np.array([r.frames for r in self.records], dtype=np.int64)
        self._clip_persons = np.array([r.persons for r in self.records], dtype=np.int64)
        self._typical_cells = float(np.median(self._clip_frames * self._clip_persons)) if self.records else 1.0
        self.baseline_family, self.baseline_columns = _baseline_source(store)
        row_bytes = sum(specs[f].row_bytes for f in self.families) + 8  # + frame, slot
        if in_memory not in ("auto", "yes", "no"):
            raise ValueError(f"in_memory must be auto, yes or no, got {in_memory!r}")
        self.in_memory = in_memory == "yes" or (in_memory == "auto" and row_bytes * int(self.lengths.sum()) < _memory_budget())
        self._valid_slots: torch.Tensor | None = None
        self._cache = self._read(self.storage_order) if self.in_memory and self.entries else None

    def __len__(self) -> int:
        return len(self.entries)

    def baseline_inputs(self, features: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(box area, distance of the box centre to the frame centre), each (B, T, N), from a
        batch's dense features of :attr:`baseline_family`."""
        values = features[self.baseline_family].float()
        if self.baseline_family == "geometry":
            area, dist = self.baseline_columns
            return values[..., area], values[..., dist]
        area, cx, cy = self.baseline_columns
        return values[..., area], torch.hypot(values[..., cx] - 0.5, values[..., cy] - 0.5)

    def with_families(self, families: Sequence[str]) -> StoreDataset:
        """The same clips, labels and order with other feature arrays (e.g. geometry for the
        heuristic baselines of a model that does not read it)."""
        other = copy.copy(self)
        specs = {a.name: a for a in self.store.specs}
        other.families = list(families)
        other.feature_dims = {f: int(np.prod(specs[f].shape)) for f in other.families}
        other._cache = other._read(other.storage_order) if self._cache is not None else None
        return other

    def _label(self, record) -> str:
        return next((e.key for e in self.entries if e.content_hash == record.content_hash), record.content_hash)

    def _read(self, positions: np.ndarray, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Packed rows of the clips at ``positions``, concatenated in that order: ``frame``,
        ``slot`` (V,) and each family (V, D); checked against their checksums."""
        names = self.families if names is None else names
        arrays = self.store.read_clips([self.records[p] for p in positions], names, label=self._label)
        return {n: torch.from_numpy(a.reshape(len(a), -1) if n in self.families else a) for n, a in arrays.items()}

    def _rows_of(self, positions: np.ndarray) -> np.ndarray:
        """Indices into the in-RAM rows of the clips at ``positions``, in order."""
        return np.concatenate([np.arange(self.starts[p], self.starts[p] + self.lengths[p]) for p in positions]) if len(positions) else np.arange(0)

    def _batch(self, positions: np.ndarray, rows: dict[str, torch.Tensor], permute: torch.Generator | None, packed: bool) -> ClipBatch:
        """The rows of the clips at ``positions``: packed in (b, t, n) order, or padded to
        (B, T, N, D) with T and N the largest of these clips."""
        index = torch.from_numpy(positions)
        records = [self.records[p] for p in positions]
        b, t, n = len(positions), max(r.frames for r in records), max(r.persons for r in records)
        clip = torch.repeat_interleave(torch.arange(b), torch.tensor([r.length for r in records]))  # (V,)
        frame, slot = rows["frame"].long(), rows["slot"].long()
        target = self.targets[index]
        slot_order = torch.arange(n).expand(b, n)
        if permute is not None:
            slot_order = torch.argsort(torch.rand(b, n, generator=permute), dim=1)  # (B, N)
            new_slot = torch.argsort(slot_order, dim=1)  # (B, N): where each original slot goes
            slot = new_slot[clip, slot]
            target = torch.where(target >= 0, new_slot.gather(1, target.clamp(min=0)[:, None])[:, 0], target)
        mask = torch.zeros(b, t, n, dtype=torch.bool)
        mask[clip, frame, slot] = True
        if packed:
            order = torch.argsort((clip * t + frame) * n + slot)  # stored (frame, slot) order, slots permuted -> (b, t, n)
            return ClipBatch({f: rows[f][order] for f in self.families}, mask, target, index, slot_order)
        features = {}
        for f in self.families:
            dense = rows[f].new_zeros(b, t, n, rows[f].shape[1])  # (B, T, N, D)
            dense[clip, frame, slot] = rows[f]
            features[f] = dense
        return ClipBatch(features, mask, target, index, slot_order)

    def batch_positions(self, order: np.ndarray, batch_size: int) -> list[np.ndarray]:
        """``order`` cut into batches of up to ``batch_size`` consecutive clips, each cut early
        where padding its clips to their largest frames x persons would take more than
        PAD_BUDGET x ``batch_size`` typical clips (the median frames x persons): a clip far longer
        or wider than the rest (400 frames x 400 slots among 8 x 5 ones) then costs only itself,
        in a batch of its own, instead of padding every clip beside it to its size."""
        budget = PAD_BUDGET * batch_size * self._typical_cells
        batches, start, frames, persons = [], 0, 0, 0
        for i, position in enumerate(order):
            frames, persons = max(frames, self._clip_frames[position]), max(persons, self._clip_persons[position])
            if i > start and (i - start == batch_size or (i - start + 1) * frames * persons > budget):
                batches.append(order[start:i])
                start, frames, persons = i, self._clip_frames[position], self._clip_persons[position]
        if len(order):
            batches.append(order[start:])
        return batches

    def steps(self, batch_size: int, world_size: int = 1) -> int:
        """Batches of an epoch per rank, in storage order (a shuffled epoch may cut an outlier's
        batch elsewhere: a step or two more or fewer)."""
        return -(-len(self.batch_positions(self.storage_order, batch_size)) // world_size)

    def epoch_order(self, shuffle: bool, generator: torch.Generator, window_clips: int) -> list[np.ndarray]:
        """Positions of one epoch, as windows of clips that lie close together in the store:
        blocks of clips in storage order are shuffled, then clips within each window, so a
        streamed window is read with few contiguous reads."""
        blocks = [self.storage_order[i : i + window_clips] for i in range(0, len(self), window_clips)]
        if shuffle:
            blocks = [blocks[i] for i in torch.randperm(len(blocks), generator=generator).tolist()]
            blocks = [w[torch.randperm(len(w), generator=generator).numpy()] for w in blocks]
        return blocks

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        permute_slots: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        window_clips: int = 256,
        prefetch: int = 3,
        packed: bool = False,
    ) -> Iterator[ClipBatch]:
        """Batches of whole clips (see :meth:`epoch_order`), assembled ``prefetch`` batches ahead by
        a background thread (and streamed windows read one window ahead), so the training loop
        only dequeues. With ``world_size`` > 1 each rank takes every world_size-th clip (padded by
        repetition so all ranks take the same number of steps). ``packed`` gives features as the
        valid rows only (see :class:`ClipBatch`), for models that take them."""
        batches = self._batches(batch_size, shuffle, permute_slots, seed, rank, world_size, window_clips, packed)
        return _in_background(batches, prefetch) if prefetch else batches

    def _batches(self, batch_size, shuffle, permute_slots, seed, rank, world_size, window_clips, packed) -> Iterator[ClipBatch]:
        g = torch.Generator().manual_seed(seed)
        windows = self.epoch_order(shuffle, g, window_clips)
        order = np.concatenate(windows) if windows else np.arange(0)
        permute = g if permute_slots else None
        batches = self.batch_positions(order, batch_size)
        if world_size > 1:  # every rank takes as many steps: the batch list padded by repetition
            per_rank = -(-len(batches) // world_size)
            batches = [batches[i % len(batches)] for i in range(per_rank * world_size)][rank::world_size]
        if self._cache is not None:
            for positions in batches:
                rows = torch.from_numpy(self._rows_of(positions))
                yield self._batch(positions, {k: v[rows] for k, v in self._cache.items()}, permute, packed)
            return
        # Streamed: read a window of batches at once, one window ahead of the loop.
        per_window = max(1, window_clips // batch_size)
        groups = [batches[i : i + per_window] for i in range(0, len(batches), per_window)]
        with ThreadPoolExecutor(1) as pool:
            ahead = pool.submit(self._read, np.concatenate(groups[0])) if groups else None
            for i, group in enumerate(groups):
                data = ahead.result()
                if i + 1 < len(groups):
                    ahead = pool.submit(self._read, np.concatenate(groups[i + 1]))
                start = 0
                for positions in group:
                    length = sum(self.records[p].length for p in positions)
                    yield self._batch(positions, {k: v[start : start + length] for k, v in data.items()}, permute, packed)
                    start += length

    def valid_slots(self) -> torch.Tensor:
        """(C, N) bool: slots holding a person in at least one frame of each clip (read once)."""
        if self._valid_slots is None:
            rows = self._cache if self._cache is not None else self._read(self.storage_order, [])
            order = torch.from_numpy(self.storage_order)
            clip = torch.repeat_interleave(order, torch.from_numpy(self.lengths)[order])  # position of each row's clip
            valid = torch.zeros(len(self), self.persons, dtype=torch.bool)
            valid[clip, rows["slot"].long()] = True
            self._valid_slots = valid
        return self._valid_slots
