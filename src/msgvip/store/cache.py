"""The cache root: finding stores, listing them, and planning + executing garbage collection.

Modelled on huggingface_hub's cache manager: a scan collects problems as warnings instead of
crashing, and deletion is a frozen plan (what, why, how many bytes) executed only on request.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import platformdirs

from .feature_store import LEASE_FILE, ZARR_DIR, FeatureStore, StoreError
from .fingerprint import FINGERPRINT_LENGTH, is_fingerprint
from .locks import try_exclusive

CACHE_ENV = "MSGVIP_CACHE"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$MSGVIP_CACHE``, else the platform's user cache dir.

    A ``file://`` URL is a local path. Other URLs (``s3://``, ``gs://``, ...) are refused: the
    store's commit protocol needs ``flock`` and atomic rename, which object stores lack, and a
    store that silently lost commits would be worse than none. A shared POSIX file system
    (NFSv4, Lustre, GPFS, CephFS) mounted on every worker is the supported shared cache.
    """
    chosen = str(cache_dir or os.environ.get(CACHE_ENV) or platformdirs.user_cache_dir("msgvip"))
    scheme, sep, rest = chosen.partition("://")
    if sep and scheme == "file":
        chosen = rest
    elif sep:
        raise StoreError(
            f"cache root {chosen!r}: {scheme}:// storage is not supported (no file locks or atomic renames, "
            "so concurrent writers could lose commits); use a local disk or a shared POSIX file system"
        )
    return Path(chosen).expanduser()


def resolve_store(root: Path, ref: str) -> Path:
    """A store path from a fingerprint, a unique fingerprint prefix, or a path to a store.

    Fingerprints are hex; anything else is taken as a path, so ``../..`` can never name a
    directory outside the cache root by way of a fingerprint.
    """
    ref = ref.strip()
    if ref and len(ref) <= FINGERPRINT_LENGTH and re.fullmatch(r"[0-9a-f]+", ref):
        matches = sorted(p for p in _store_dirs(root) if p.name.startswith(ref))
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise StoreError(f"fingerprint prefix {ref!r} is ambiguous in {root}: {', '.join(p.name for p in matches)}")
        raise StoreError(f"no store with fingerprint {ref!r} in {root} (see `msgvip cache ls --cache-dir {root}`)")
    path = Path(ref).expanduser()
    if (path / ZARR_DIR / "zarr.json").is_file():
        return path
    raise StoreError(f"{ref!r} is neither a fingerprint in {root} nor a path to a feature store")


def _store_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if is_fingerprint(p.name) and p.is_dir() and not p.is_symlink()]


def human_size(size: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if size < 1000 or unit == "T":
            return f"{size:.0f}{unit}" if unit == "" else f"{size:.1f}{unit}"
        size /= 1000
    raise AssertionError("unreachable")


def human_age(timestamp: float, now: float | None = None) -> str:
    seconds = max(0.0, (now or time.time()) - timestamp)
    for limit, unit in ((60, "second"), (3600, "minute"), (86400, "hour"), (7 * 86400, "day"), (float("inf"), "week")):
        if seconds < limit:
            size = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 7 * 86400}[unit]
            value = int(seconds // size)
            return f"{value} {unit}{'s' if value != 1 else ''} ago"
    raise AssertionError("unreachable")


def parse_size(text: str) -> int:
    """'20G' -> 20_000_000_000 (K, M, G, T are powers of 1000; a plain number is bytes)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)B?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"size {text!r} not understood; use e.g. 500M, 20G, 1.5T")
    scale = 1000 ** " KMGT".index(match[2].upper() or " ")
    return int(float(match[1]) * scale)


def parse_duration(text: str) -> float:
    """'30d' -> seconds (s, m, h, d, w)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smhdw])\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"duration {text!r} not understood; use e.g. 12h, 30d, 2w")
    return float(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match[2].lower()]


def directory_size(path: Path) -> int:
    """Bytes of the regular files under ``path``, never following symlinks."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            total += st.st_size if not os.path.islink(os.path.join(dirpath, name)) else 0
    return total


@dataclass(frozen=True)
class StoreInfo:
    """What `cache ls` shows of one store; raw values here, display forms in ``*_str``."""

    fingerprint: str
    path: str
    features: list[str]
    models: list[str]
    clips: int
    clips_per_split: dict[str, int]
    size_on_disk: int
    created: float
    last_used: float
    pinned: bool
    complete: bool
    leased: bool

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
        return asdict(self)


def _model_names(record: object) -> list[str]:
    """``<model_type>@<weights digest>`` of every model identity found in a features record."""
    if isinstance(record, dict):
        if "weights" in record and "model_type" in record:
            return [f"{record['model_type']}@{str(record['weights'])[:8]}"]
        return [name for value in record.values() for name in _model_names(value)]
    return []


def store_info(path: Path) -> StoreInfo:
    store = FeatureStore.open(path)
    per_split: dict[str, int] = {}
    for entry in store.entries.values():
        per_split[entry.split] = per_split.get(entry.split, 0) + 1
    specs = store.config.get("features", {})
    lease_fd = try_exclusive(path / LEASE_FILE)
    if lease_fd is not None:
        os.close(lease_fd)
    return StoreInfo(
        fingerprint=store.fingerprint,
        path=str(path),
        features=sorted(specs),
        models=sorted(set(_model_names(specs))),
        clips=len(store),
        clips_per_split=dict(sorted(per_split.items())),
        size_on_disk=directory_size(path),
        created=store.created_at,
        last_used=store.last_used,
        pinned=store.pinned,
        complete=bool(store.state().get("complete")),
        leased=lease_fd is None,
    )


@dataclass
class CacheScan:
    root: Path
    stores: list[StoreInfo]
    warnings: list[str] = field(default_factory=list)

    @property
    def size_on_disk(self) -> int:
        return sum(s.size_on_disk for s in self.stores)


def scan_cache(root: Path) -> CacheScan:
    """Every store under ``root``, most recently used first; unreadable ones become warnings."""
    stores, warnings = [], []
    for path in _store_dirs(root):
        try:
            stores.append(store_info(path))
        except (StoreError, OSError, ValueError, KeyError) as err:
            warnings.append(f"skipped {path}: {err}")
    stores.sort(key=lambda s: s.last_used, reverse=True)
    return CacheScan(root, stores, warnings)


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
    now: float | None = None,
) -> GcPlan:
    """Select stores by any of the policies (a store goes if one policy picks it); pinned stores and
    stores under a lease are always spared. ``max_size`` evicts least recently used first until
    what remains fits."""
    if keep_last is None and older_than is None and max_size is None and not incomplete:
        raise GcPolicyError("no policy given: pass --keep-last N, --older-than 30d, --max-size 20G or --incomplete")
    now = time.time() if now is None else now
    by_recent = sorted(scan.stores, key=lambda s: s.last_used, reverse=True)
    reasons: dict[str, str] = {}
    for rank, store in enumerate(by_recent):
        if keep_last is not None and rank >= keep_last:
            reasons.setdefault(store.fingerprint, f"beyond the {keep_last} most recently used")
        if older_than is not None and now - store.last_used > older_than:
            reasons.setdefault(store.fingerprint, f"last used {store.last_used_str}")
        if incomplete and not store.complete:
            reasons.setdefault(store.fingerprint, "incomplete")
    protected = {s.fingerprint: ("pinned" if s.pinned else "under lease (in use)") for s in scan.stores if s.pinned or s.leased}
    if max_size is not None:
        remaining = sum(s.size_on_disk for s in scan.stores if s.fingerprint not in reasons or s.fingerprint in protected)
        for store in reversed(by_recent):  # least recently used first
            if remaining <= max_size:
                break
            if store.fingerprint in reasons or store.fingerprint in protected:
                continue
            reasons[store.fingerprint] = f"least recently used while over {human_size(max_size)}"
            remaining -= store.size_on_disk
    delete = tuple((s, reasons[s.fingerprint]) for s in by_recent if s.fingerprint in reasons and s.fingerprint not in protected)
    spared = tuple((s, protected[s.fingerprint]) for s in by_recent if s.fingerprint in reasons and s.fingerprint in protected)
    return GcPlan(delete, spared)


def execute_gc(plan: GcPlan, root: Path) -> list[tuple[StoreInfo, str]]:
    """Delete the planned stores; returns (store, outcome) pairs. Each store is re-checked at the
    moment of deletion: inside ``root``, not a symlink, not pinned, its lease free."""
    root = root.resolve()
    outcomes = []
    for info, _ in plan.delete:
        path = Path(info.path)
        if path.is_symlink() or path.resolve().parent != root or not is_fingerprint(path.name):
            outcomes.append((info, "skipped: not a store directory inside the cache root"))
            continue
        if (path / "pinned").exists():
            outcomes.append((info, "skipped: pinned since the plan was made"))
            continue
        fd = try_exclusive(path / LEASE_FILE)
        if fd is None:
            outcomes.append((info, "skipped: in use (lease held)"))
            continue
        try:
            # Rename first so the store disappears from every listing at once, then delete;
            # rmtree removes symlinks inside the store without following them.
            doomed = path.with_name(f".deleting-{path.name}-{os.getpid()}")
            os.rename(path, doomed)
            shutil.rmtree(doomed)
            outcomes.append((info, "deleted"))
        finally:
            os.close(fd)
    return outcomes
