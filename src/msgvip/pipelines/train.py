"""Finding the store a ranker command works on: by fingerprint, by path, or by extracting data.

The ranker never extracts; these flows join the two stages for `msgvip train --data`,
`msgvip evaluate` and `msgvip predict RUN_DIR DATA`.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import ExtractConfig
from ..data.sources import SourceError
from ..store.cache import cache_root, resolve_store
from ..store.feature_store import FeatureStore, StoreError
from .extract import ExtractSummary, run_extract


def store_for_training(
    store: str | None, data: Path | None, config: ExtractConfig, cache_dir: Path | None, progress: bool = True
) -> tuple[FeatureStore, ExtractSummary | None]:
    """The store named by ``store``, or the one for ``config`` built (or found) from ``data``."""
    if (store is None) == (data is None):
        raise StoreError("give exactly one of --store FP (an extracted store) or --data DATA (clips to extract)")
    if store is not None:
        return FeatureStore.open(resolve_store(cache_root(cache_dir), store)), None
    summary = run_extract(data, config, cache_dir=cache_dir, progress=progress)
    return FeatureStore.open(Path(summary.store)), summary


def store_of_run(run_dir: Path, cache_dir: Path | None) -> FeatureStore:
    """The store a run was trained on: its fingerprint under the cache root, else its recorded path."""
    config = _run_config(run_dir)
    try:
        return FeatureStore.open(resolve_store(cache_root(cache_dir), config["fingerprint"]))
    except StoreError:
        return FeatureStore.open(Path(config["store"]))


def store_for_prediction(run_dir: Path, target: str, cache_dir: Path | None, progress: bool = True) -> FeatureStore:
    """``target`` as a store (fingerprint or path), else as clips extracted with the settings of
    the store the run was trained on, so the features match the model."""
    root = cache_root(cache_dir)
    try:
        return FeatureStore.open(resolve_store(root, target))
    except StoreError:
        if not Path(target).exists():
            raise
    settings = store_of_run(run_dir, cache_dir).settings
    if not settings:
        raise SourceError(f"{run_dir}: its store records no extraction settings; extract {target} yourself and pass the store")
    config = ExtractConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()})
    summary = run_extract(Path(target), config, cache_dir=cache_dir, progress=progress)
    return FeatureStore.open(Path(summary.store))


def _run_config(run_dir: Path) -> dict:
    path = Path(run_dir) / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise StoreError(f"{run_dir}: no config.json (is it an msgvip run directory?)") from None
