"""Committed clips of a store as training batches (DESIGN.md section 6).

A split is held in RAM when it fits (one bulk read, then batches are tensor slices), else streamed:
each batch's rows (whole Zarr chunks) are read by background threads a few batches ahead.
Training batches get a random permutation of person slots, so the model cannot learn slot ids.
"""

from __future__ import annotations

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
from ..store.feature_store import MASK_ARRAY, FeatureStore, IndexEntry

BASELINE_GEOMETRY = ("area", "center_dist")  # what the heuristic baselines need from geometry


class LabelError(ConfigError):
    pass


@dataclass
class ClipBatch:
    features: dict[str, torch.Tensor]  # name -> (B, T, N, D)
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


class StoreDataset:
    """The committed clips of one split (``None`` = all) of a store.

    ``families`` picks feature arrays (default: all the store holds); multi-dim families such as
    pose (K, 3) are flattened to one vector per person-frame. ``labels`` (see
    :func:`read_label_overrides`) overrides the store's targets and splits.
    """

    def __init__(
        self,
        store: FeatureStore,
        split: str | None,
        families: Sequence[str] | None = None,
        in_memory: str = "auto",
        labels: LabelOverrides | None = None,
    ):
        self.store = store
        self.split = split
        available = [a.name for a in store.arrays if a.name != MASK_ARRAY]
        self.families = list(available if families is None else families)
        unknown = set(self.families) - set(available)
        if unknown:
            raise LabelError(f"{store.path}: no feature arrays {sorted(unknown)} (the store holds {available})")
        specs = {a.name: a for a in store.arrays}
        self.feature_dims = {f: int(np.prod(specs[f].shape)) for f in self.families}
        labels = labels or {}

        def override(entry: IndexEntry) -> Mapping[str, object]:
            for key in (entry.clip_id, entry.content_hash, _source_key(entry.source)):
                if key in labels:
                    return labels[key]
            return {}

        chosen = [(e, override(e)) for e in store.entries_for()]
        chosen = [(e, o) for e, o in chosen if split is None or o.get("split", e.split) == split]
        self.entries: list[IndexEntry] = [e for e, _ in chosen]
        self.targets = torch.tensor([int(o.get("target", e.target)) for e, o in chosen], dtype=torch.long)
        self.rows = np.array([e.row for e in self.entries], dtype=np.int64)
        self.frames = max((e.frames for e in self.entries), default=0)
        self.persons = max((e.persons for e in self.entries), default=0)
        geometry = store.config.get("features", {}).get("geometry", {}).get("features", [])
        self.baseline_columns = [geometry.index(n) for n in BASELINE_GEOMETRY] if set(BASELINE_GEOMETRY) <= set(geometry) else None
        row_bytes = sum(np.prod(s.shape, dtype=np.int64) * np.dtype(s.dtype).itemsize for s in specs.values()) * self.frames * self.persons
        if in_memory not in ("auto", "yes", "no"):
            raise ValueError(f"in_memory must be auto, yes or no, got {in_memory!r}")
        self.in_memory = in_memory == "yes" or (in_memory == "auto" and row_bytes * len(self.entries) < _memory_budget())
        self._valid_slots: torch.Tensor | None = None
        self._cache = self._read(np.arange(len(self.entries))) if self.in_memory and self.entries else None

    def __len__(self) -> int:
        return len(self.entries)

    def _read(self, positions: np.ndarray, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Rows at ``positions`` of this dataset as tensors cropped to the split's (T, N)."""
        order = np.argsort(self.rows[positions], kind="stable")  # chunk order on disk
        names = [*self.families, MASK_ARRAY] if names is None else names
        arrays = self.store.read_rows(self.rows[positions][order], names)
        inverse = np.argsort(order)
        out = {}
        for name in names:
            a = arrays[name][inverse][:, : self.frames, : self.persons]
            out[name] = torch.from_numpy(np.ascontiguousarray(a.reshape(*a.shape[:3], -1) if name != MASK_ARRAY else a))
        return out

    def _batch(self, positions: np.ndarray, data: dict[str, torch.Tensor], permute: torch.Generator | None) -> ClipBatch:
        index = torch.from_numpy(positions)
        b, n = len(positions), self.persons
        target = self.targets[index]
        slot_order = torch.arange(n).expand(b, n)
        features = {f: data[f] for f in self.families}
        mask = data[MASK_ARRAY]
        if permute is not None:
            slot_order = torch.argsort(torch.rand(b, n, generator=permute), dim=1)  # (B, N)
            gather = lambda x: torch.gather(x, 2, slot_order[:, None, :, None].expand(-1, x.shape[1], -1, x.shape[3]))  # noqa: E731
            features = {f: gather(v) for f, v in features.items()}
            mask = gather(mask[..., None])[..., 0]
            labeled = target >= 0
            target = torch.where(labeled, torch.argsort(slot_order, dim=1).gather(1, target.clamp(min=0)[:, None])[:, 0], target)
        return ClipBatch(features, mask, target, index, slot_order)

    def epoch_order(self, shuffle: bool, generator: torch.Generator, window_chunks: int) -> list[np.ndarray]:
        """Positions of one epoch, as windows of whole store chunks: chunk order is shuffled, then
        clips within each window, so a streamed window is read with whole-chunk reads only."""
        rows_per_chunk = self.store.rows_per_chunk or 1
        chunk_of = self.rows // rows_per_chunk
        chunks = np.unique(chunk_of)
        if shuffle:
            chunks = chunks[torch.randperm(len(chunks), generator=generator).numpy()]
        windows = []
        for i in range(0, len(chunks), window_chunks):
            positions = np.flatnonzero(np.isin(chunk_of, chunks[i : i + window_chunks]))
            if shuffle:
                positions = positions[torch.randperm(len(positions), generator=generator).numpy()]
            windows.append(positions)
        return windows

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        permute_slots: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        window_chunks: int = 4,
        prefetch: int = 3,
    ) -> Iterator[ClipBatch]:
        """Batches of whole clips (see :meth:`epoch_order`), assembled ``prefetch`` batches ahead by
        a background thread (and streamed windows read one window ahead), so the training loop
        only dequeues. With ``world_size`` > 1 each rank takes every world_size-th clip (padded by
        repetition so all ranks take the same number of steps)."""
        batches = self._batches(batch_size, shuffle, permute_slots, seed, rank, world_size, window_chunks)
        return _in_background(batches, prefetch) if prefetch else batches

    def _batches(self, batch_size, shuffle, permute_slots, seed, rank, world_size, window_chunks) -> Iterator[ClipBatch]:
        g = torch.Generator().manual_seed(seed)
        windows = self.epoch_order(shuffle, g, window_chunks)
        if world_size > 1:
            order = np.concatenate(windows) if windows else np.arange(0)
            per_rank = -(-len(order) // world_size)
            windows = [np.resize(order, per_rank * world_size)[rank::world_size]]
        permute = g if permute_slots else None

        def loaded_windows() -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
            if self._cache is not None:
                for positions in windows:
                    yield positions, {k: v[torch.from_numpy(positions)] for k, v in self._cache.items()}
                return
            with ThreadPoolExecutor(1) as pool:
                ahead = pool.submit(self._read, windows[0]) if windows else None
                for i, positions in enumerate(windows):
                    data = ahead.result()
                    if i + 1 < len(windows):
                        ahead = pool.submit(self._read, windows[i + 1])
                    yield positions, data

        # Windows rarely hold a multiple of batch_size clips (chunks mix splits; the last one is
        # partial), so the remainder of each window is carried into the next: every batch but
        # the epoch's last is full.
        carry_positions, carry = np.arange(0), None
        for positions, data in loaded_windows():
            if carry is not None:
                positions = np.concatenate([carry_positions, positions])
                data = {k: torch.cat([carry[k], v]) for k, v in data.items()}
            full = len(positions) // batch_size * batch_size
            for i in range(0, full, batch_size):
                yield self._batch(positions[i : i + batch_size], {k: v[i : i + batch_size] for k, v in data.items()}, permute)
            carry_positions, carry = positions[full:], {k: v[full:] for k, v in data.items()}
        if len(carry_positions):
            yield self._batch(carry_positions, carry, permute)

    def valid_slots(self) -> torch.Tensor:
        """(C, N) bool: slots holding a person in at least one frame of each clip (read once)."""
        if self._valid_slots is None:
            mask = self._cache[MASK_ARRAY] if self._cache is not None else self._read(np.arange(len(self)), [MASK_ARRAY])[MASK_ARRAY]
            self._valid_slots = mask.any(1)
        return self._valid_slots

    def baseline_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(area, center_dist, person_mask), each (C, T, N), for the heuristic baselines; None when
        the store has no geometry."""
        if self.baseline_columns is None or not len(self):
            return None
        data = self._cache if self._cache is not None and "geometry" in self._cache else self._read(np.arange(len(self)), ["geometry", MASK_ARRAY])
        geometry = data["geometry"].float()
        return geometry[..., self.baseline_columns[0]], geometry[..., self.baseline_columns[1]], data[MASK_ARRAY]
