"""The cache root: finding stores, listing them, and planning + executing garbage collection.

Modelled on huggingface_hub's cache manager: a scan collects problems as warnings instead of
crashing, and deletion is a frozen plan (what, why, how many bytes) executed only on request.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import platformdirs

from .feature_store import COMMITS, DATASETS, META_FILE, PIN_FILE, SCHEMA_VERSION, ZARR_DIR, FeatureStore, StoreError
from .fingerprint import FINGERPRINT_LENGTH, is_fingerprint
from .locks import exclusive_store_lease, store_in_use
from .records import Snapshot
from .references import drop_references, references
from .storage import Storage, open_storage

CACHE_ENV = "MSGVIP_CACHE"


def cache_root(cache_dir: str | os.PathLike | None = None, options: Mapping[str, str] | None = None) -> Storage:
    """The cache root: ``cache_dir``, else ``$MSGVIP_CACHE``, else the platform's user cache dir.

    A local path, a ``file://`` URL, or ``s3://bucket/prefix`` (see :func:`open_storage`). An
    empty or blank value is an error, never a silent fallback to the default cache (a
    ``gc --keep-last 0`` with an unset variable must not empty the user's cache), and so are
    roots that would make gc a danger to other data: ``/`` and the home directory.
    """
    if cache_dir is not None:
        chosen, origin = os.fspath(cache_dir), "--cache-dir"
    elif CACHE_ENV in os.environ:
        chosen, origin = os.environ[CACHE_ENV], f"${CACHE_ENV}"
    else:
        chosen, origin = platformdirs.user_cache_dir("msgvip"), "default"
    if not chosen.strip():
        raise StoreError(f"{origin} is empty; give a cache directory (or unset {CACHE_ENV} to use the default)")
    storage = open_storage(local_absolute(chosen), options)
    if storage.local_path is not None:
        resolved = storage.local_path.resolve()
        if resolved == Path(resolved.anchor) or resolved == Path.home().resolve():
            raise StoreError(f"{origin} {chosen!r}: refusing {resolved} as a cache root (gc would act on everything in it); use a folder of its own")
    return storage


def local_absolute(location: str) -> str:
    """A local path made absolute (runs record where their store is, to be found from anywhere);
    URLs unchanged."""
    return location if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", location) else str(Path(location).expanduser().absolute())


def resolve_store(root: Storage, ref: str) -> FeatureStore:
    """The store named by a fingerprint, a unique fingerprint prefix, or a path/URL to a store.

    Fingerprints are hex; anything else is taken as a location, so ``../..`` can never name a
    directory outside the cache root by way of a fingerprint.
    """
    ref = ref.strip()
    if ref and len(ref) <= FINGERPRINT_LENGTH and re.fullmatch(r"[0-9a-f]+", ref):
        matches = sorted(fp for fp in store_fingerprints(root) if fp.startswith(ref))
        if len(matches) == 1:
            return FeatureStore.open_in(root, matches[0])
        if len(matches) > 1:
            raise StoreError(f"fingerprint prefix {ref!r} is ambiguous in {root.url}: {', '.join(matches)}")
        raise StoreError(f"no store with fingerprint {ref!r} in {root.url} (see `msgvip cache ls --cache-dir {root.url}`)")
    if ref and is_fingerprint(ref.rstrip("/").rsplit("/", 1)[-1]):
        return FeatureStore.open(local_absolute(ref), root.options)
    raise StoreError(f"{ref!r} is neither a fingerprint in {root.url} nor a path to a feature store")


def store_fingerprints(root: Storage) -> list[str]:
    """Fingerprints of the store directories under ``root`` (symlinks are never followed)."""
    if root.local_path is not None:
        if not root.local_path.is_dir():
            return []
        return sorted(p.name for p in root.local_path.iterdir() if is_fingerprint(p.name) and p.is_dir() and not p.is_symlink())
    return [name for name in root.list_dir("") if is_fingerprint(name)]


def human_size(size: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if size < 1000 or unit == "T":
            return f"{size:.0f}{unit}" if unit == "" else f"{size:.1f}{unit}"
        size /= 1000
    raise AssertionError("unreachable")


def human_age(timestamp: float, now: float | None = None) -> str:
    seconds = (now or time.time()) - timestamp
    if not math.isfinite(seconds):
        return "unknown"
    seconds = max(0.0, seconds)
    units = ((60, "second", 1), (3600, "minute", 60), (86400, "hour", 3600), (7 * 86400, "day", 86400))
    unit, size = next(((unit, size) for limit, unit, size in units if seconds < limit), ("week", 7 * 86400))
    value = int(seconds // size)
    return f"{value} {unit}{'s' if value != 1 else ''} ago"


def parse_size(text: str) -> int:
    """'20G' -> 20_000_000_000 (K, M, G, T are powers of 1000; a plain number is bytes)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)B?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"size {text!r} not understood; use e.g. 500M, 20G, 1.5T")
    scale = 1000 ** " KMGT".index(match[2].upper() or " ")
    size = float(match[1]) * scale
    if not math.isfinite(size) or size >= 2**63:
        raise ValueError(f"size {text!r} is too large to mean anything; use e.g. 20G, 1.5T")
    return int(size)


def parse_duration(text: str) -> float:
    """'30d' -> seconds (s, m, h, d, w)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smhdw])\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"duration {text!r} not understood; use e.g. 12h, 30d, 2w")
    return float(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match[2].lower()]


@dataclass(frozen=True)
class StoreInfo:
    """What `cache ls` shows of one store; raw values here, display forms in ``*_str``.
    A store that cannot be read has ``problem`` set and empty contents."""

    fingerprint: str
    location: str
    features: list[str]
    models: list[str]
    clips: int  # distinct contents committed
    datasets: dict[str, dict]  # name -> clips, splits, complete, leaks
    size_on_disk: int
    created: float
    last_used: float
    pinned: bool
    leased: bool
    problem: str | None = None
    schema_version: int | None = SCHEMA_VERSION
    runs: list[str] = field(default_factory=list)  # run directories that use the store (references.py)

    @property
    def complete(self) -> bool:
        """Every dataset's last extract run finished without failures (and there is one)."""
        return bool(self.datasets) and all(d["complete"] for d in self.datasets.values())

    @property
    def state_str(self) -> str:
        if self.problem:
            return "old schema" if self.schema_version != SCHEMA_VERSION else "damaged"
        return "complete" if self.complete else "incomplete"

    @property
    def size_on_disk_str(self) -> str:
        return human_size(self.size_on_disk)

    @property
    def last_used_str(self) -> str:
        return human_age(self.last_used)

    @property
    def created_str(self) -> str:
        return human_age(self.created)

    def to_json(self) -> dict:
        return {**asdict(self), "complete": self.complete, "state": self.state_str}


def _model_names(record: object) -> list[str]:
    """``<model_type>@<weights digest>`` of every model identity found in a features record."""
    if isinstance(record, dict):
        if "weights" in record and "model_type" in record:
            return [f"{record['model_type']}@{str(record['weights'])[:8]}"]
        return [name for value in record.values() for name in _model_names(value)]
    return []


def dataset_summary(snapshot: Snapshot) -> dict:
    return {"clips": len(snapshot.entries), "splits": snapshot.splits(), "complete": snapshot.complete,
            "failed": snapshot.failed, "data": snapshot.data, "leaks": snapshot.leaks()}  # fmt: skip


def store_info(root: Storage, fp: str) -> StoreInfo:
    """One store's listing; a store that cannot be read is described, not raised."""
    pinned = root.read(f"{fp}/{PIN_FILE}") is not None
    leased = store_in_use(root, fp)
    runs = [ref.path for ref in references(root, fp)]
    try:
        store = FeatureStore.open_in(root, fp)
        datasets = {}
        for name in store.snapshot_names():
            try:
                datasets[name] = dataset_summary(store.snapshot(name))
            except StoreError as err:
                raise StoreError(f"dataset {name!r}: {err}") from None
    except (StoreError, OSError, ValueError) as err:
        return StoreInfo(fp, root.child_url(fp), [], [], 0, {}, root.size(fp), 0.0, 0.0, pinned, leased, str(err), _schema_version(root, fp), runs)
    specs = store.config.get("features", {})
    return StoreInfo(
        fingerprint=fp, location=store.location, features=sorted(specs), models=sorted(set(_model_names(specs))),
        clips=len(store), datasets=datasets, size_on_disk=root.size(fp), created=store.created_at,
        last_used=store.last_used, pinned=pinned, leased=leased, runs=runs,
    )  # fmt: skip


def _schema_version(root: Storage, fp: str) -> int | None:
    """The schema a store says it has (its own meta.json, or schema 1's Zarr attributes)."""
    for key, path in ((META_FILE, ()), (f"{ZARR_DIR}/zarr.json", ("attributes", "msgvip"))):
        try:
            record = json.loads(root.read(f"{fp}/{key}") or b"null")
            for part in path:
                record = record[part]
            return int(record["schema_version"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


@dataclass
class CacheScan:
    root: Storage
    stores: list[StoreInfo]

    @property
    def size_on_disk(self) -> int:
        return sum(s.size_on_disk for s in self.stores)

    @property
    def warnings(self) -> list[str]:
        return [f"{s.location}: {s.problem}" for s in self.stores if s.problem]


def scan_cache(root: Storage) -> CacheScan:
    """Every store under ``root``, most recently used first; a damaged one is listed as such and
    never stops the scan."""
    stores = [store_info(root, fp) for fp in store_fingerprints(root)]
    stores.sort(key=lambda s: s.last_used, reverse=True)
    return CacheScan(root, stores)


@dataclass(frozen=True)
class GcPlan:
    """Stores to delete with the reason for each, and stores spared with the reason."""

    delete: tuple[tuple[StoreInfo, str], ...]
    spared: tuple[tuple[StoreInfo, str], ...]

    @property
    def expected_freed(self) -> int:
        return sum(s.size_on_disk for s, _ in self.delete)


class GcPolicyError(ValueError):
    pass


def plan_gc(
    scan: CacheScan,
    *,
    keep_last: int | None = None,
    older_than: float | None = None,
    max_size: int | None = None,
    incomplete: bool = False,
    old_schema: bool = False,
    include_referenced: bool = False,
    now: float | None = None,
) -> GcPlan:
    """Select stores by any of the policies (a store goes if one policy picks it); pinned stores,
    stores under a lease and damaged stores are always spared, and so are stores a run uses
    unless ``include_referenced``. ``max_size`` evicts least recently used first until what
    remains fits. Stores of an older schema go only with ``old_schema``."""
    if keep_last is None and older_than is None and max_size is None and not incomplete and not old_schema:
        raise GcPolicyError("no policy given: pass --keep-last N, --older-than 30d, --max-size 20G, --incomplete or --old-schema")
    now = time.time() if now is None else now
    readable = [s for s in scan.stores if not s.problem]
    by_recent = sorted(readable, key=lambda s: s.last_used, reverse=True)
    reasons: dict[str, str] = {}
    for rank, store in enumerate(by_recent):
        if keep_last is not None and rank >= keep_last:
            reasons.setdefault(store.fingerprint, f"beyond the {keep_last} most recently used")
        if older_than is not None and now - store.last_used > older_than:
            reasons.setdefault(store.fingerprint, f"last used {store.last_used_str}")
        if incomplete and not store.complete:
            reasons.setdefault(store.fingerprint, "incomplete")
    for store in scan.stores:
        if store.problem and old_schema and store.schema_version is not None and store.schema_version < SCHEMA_VERSION:
            reasons[store.fingerprint] = f"old schema version {store.schema_version}"
    protected = {s.fingerprint: ("pinned" if s.pinned else "under lease (in use)") for s in scan.stores if s.pinned or s.leased}
    if not include_referenced:
        protected.update({s.fingerprint: _used_by(s.runs) for s in scan.stores if s.runs and s.fingerprint not in protected})
    if max_size is not None:
        remaining = sum(s.size_on_disk for s in scan.stores if s.fingerprint not in reasons or s.fingerprint in protected)
        for store in reversed(by_recent):  # least recently used first
            if remaining <= max_size:
                break
            if store.fingerprint in reasons:
                continue
            reasons[store.fingerprint] = f"least recently used while over {human_size(max_size)}"
            if store.fingerprint not in protected:  # a protected one is listed as kept, and frees nothing
                remaining -= store.size_on_disk
    damaged = {s.fingerprint: f"damaged, left for you to inspect ({s.problem})" for s in scan.stores if s.problem and s.fingerprint not in reasons}
    order = [*by_recent, *(s for s in scan.stores if s.problem)]
    delete = tuple((s, reasons[s.fingerprint]) for s in order if s.fingerprint in reasons and s.fingerprint not in protected)
    spared = tuple((s, protected[s.fingerprint]) for s in order if s.fingerprint in reasons and s.fingerprint in protected)
    return GcPlan(delete, spared + tuple((s, damaged[s.fingerprint]) for s in order if s.fingerprint in damaged))


def _used_by(runs: list[str]) -> str:
    shown = ", ".join(runs[:3]) + (f" and {len(runs) - 3} more" if len(runs) > 3 else "")
    return f"used by {len(runs)} run{'s' if len(runs) > 1 else ''} ({shown}); --include-referenced removes it anyway"


def delete_store(root: Storage, fp: str) -> None:
    """Remove a store's files; the caller holds its exclusive lease."""
    if root.local_path is not None:
        path = root.local_path / fp
        # Rename first so the store disappears from every listing at once, then delete;
        # rmtree removes symlinks inside the store without following them.
        doomed = path.with_name(f".deleting-{fp}-{os.getpid()}")
        os.rename(path, doomed)
        shutil.rmtree(doomed)
    else:
        # Object storage cannot rename a prefix out of sight and deletes batches of keys at once:
        # records first, rows next, meta.json last, so a delete cut short leaves a store that still
        # opens (with fewer clips) and the next gc takes, never one gc spares as damaged for good.
        for part in (DATASETS, COMMITS, ZARR_DIR):
            root.delete_prefix(f"{fp}/{part}")
        meta = f"{fp}/{META_FILE}"
        for key in root.list(f"{fp}/"):
            if key != meta:
                root.delete(key)
        root.delete(meta)


def execute_gc(plan: GcPlan, root: Storage, include_referenced: bool = False) -> list[tuple[StoreInfo, str]]:
    """Delete the planned stores; returns (store, outcome) pairs. Each store is re-checked at the
    moment of deletion: a real store directory of ``root``, not pinned, used by no run (unless
    ``include_referenced``), its lease free."""
    outcomes = []
    for info, _ in plan.delete:
        fp = info.fingerprint
        if not is_fingerprint(fp) or fp not in store_fingerprints(root):
            outcomes.append((info, "skipped: not a store directory inside the cache root"))
            continue
        if root.read(f"{fp}/{PIN_FILE}") is not None:
            outcomes.append((info, "skipped: pinned since the plan was made"))
            continue
        with exclusive_store_lease(root, fp) as free:
            if not free:
                outcomes.append((info, "skipped: in use (lease held)"))
                continue
            runs = [ref.path for ref in references(root, fp)]  # a run registers under its lease: none can start now
            if runs and not include_referenced:
                outcomes.append((info, f"skipped: {_used_by(runs)}"))
                continue
            delete_store(root, fp)
            drop_references(root, fp)
            outcomes.append((info, "deleted"))
    return outcomes
