"""Finding the store and dataset a ranker command works on: by fingerprint, by path, or by
extracting data.

The ranker never extracts; these flows join the two stages for `msgvip train --data`,
`msgvip evaluate` and `msgvip predict RUN_DIR DATA`. A run remembers its store by location and
cache root, so it is found again from any working directory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ..config import CONFIG_SECTIONS, ConfigError, ExtractConfig, parse_settings, read_config_file
from ..data.sources import SourceError
from ..ranker.presets import DEFAULT_PRESET, preset_named
from ..ranker.trainer import TrainConfig, build_config, run_config
from ..store.cache import cache_root, resolve_store
from ..store.feature_store import FeatureStore, StoreError
from .extract import ExtractSummary, default_dataset_name, run_extract


def store_for_training(
    store: str | None, data: Path | None, config: ExtractConfig, cache_dir: str | None, progress: bool = True,
    dataset: str | None = None, storage_options: dict | None = None,
) -> tuple[FeatureStore, str | None, ExtractSummary | None]:  # fmt: skip
    """(store, dataset name, extraction summary): the store named by ``store``, or the one for
    ``config`` built (or found) from ``data``, whose own snapshot is then the dataset."""
    if (store is None) == (data is None):
        raise StoreError("give exactly one of --store FP (an extracted store) or --data DATA (clips to extract)")
    if store is not None:
        return resolve_store(cache_root(cache_dir, storage_options), store), dataset, None
    summary = run_extract(data, config, cache_dir=cache_dir, progress=progress, dataset=dataset, storage_options=storage_options)
    return FeatureStore.open(summary.store, storage_options), summary.dataset, summary


def store_of_run(run_dir: Path, cache_dir: str | None, storage_options: dict | None = None) -> FeatureStore:
    """The store a run was trained on: its fingerprint under ``cache_dir`` when one is given,
    else under the cache root the run recorded."""
    config = run_config(run_dir)
    root = cache_root(cache_dir if cache_dir is not None else config.get("cache_root"), storage_options)
    try:
        return resolve_store(root, config["fingerprint"])
    except StoreError as err:
        raise StoreError(f"{run_dir}: its store {config['fingerprint'][:12]} is not in {root.url} ({err}); pass --cache-dir where it lives") from None


def store_for_prediction(
    run_dir: Path, target: str, cache_dir: str | None, progress: bool = True, storage_options: dict | None = None,
    dataset: str | None = None,
) -> tuple[FeatureStore, str | None]:
    """(store, dataset): ``target`` as a store (fingerprint or location), else as clips extracted
    with the settings of the run's store into the run's cache root, read through their own
    snapshot: predicting never changes what the run trains or evaluates on."""
    run_store = store_of_run(run_dir, cache_dir, storage_options)
    if not Path(target).exists():
        return resolve_store(run_store.storage, target), dataset
    name = dataset or default_dataset_name(target)
    trained_on = run_config(run_dir).get("dataset")
    if name == trained_on and name in run_store.snapshot_names() and run_store.snapshot(name).data != str(Path(target).absolute()):
        raise StoreError(
            f"{target}: its dataset name {name!r} is the one {run_dir} was trained on (from {run_store.snapshot(name).data}); "
            "predicting would replace that snapshot: pass --dataset OTHER_NAME"
        )
    if not run_store.settings:
        raise SourceError(f"{run_dir}: its store records no extraction settings; extract {target} yourself and pass the store")
    config = ExtractConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in run_store.settings.items()})
    summary = run_extract(Path(target), config, cache_dir=run_store.storage.url, progress=progress, dataset=name, storage_options=storage_options)
    return FeatureStore.open(summary.store, storage_options), summary.dataset


def train_configs(config_file: Path | None = None, overrides: Mapping | None = None, preset_name: str | None = None, settings: Sequence[str] = ()) -> tuple:
    """(train config, model config): the model preset's training defaults, under the config
    file's [train] section, under ``--set`` and the flags; [model] holds ``preset`` and that
    preset's options. A key given both by a flag and by ``--set`` is refused. With no arguments:
    the configs ``msgvip train --store FP`` trains with (the demo and the benchmarks use them)."""
    sections = read_config_file(config_file) if config_file else {}
    given = parse_settings(settings)
    overrides = overrides or {}
    both = sorted(k for k, v in overrides.items() if v is not None and k in given.get("train", {}))
    if both:
        raise ConfigError(f"--set train.{both[0]} and its flag --{both[0].replace('_', '-')}: give one")
    sections = {name: {**sections.get(name, {}), **given.get(name, {})} for name in CONFIG_SECTIONS}
    source = (f"{config_file} with --set" if settings else str(config_file)) if config_file else ("--set" if settings else "command line")
    model_values = dict(sections.get("model", {}))
    preset_name = preset_name or model_values.pop("preset", DEFAULT_PRESET)
    model_values.pop("preset", None)
    try:
        preset = preset_named(preset_name)
    except ValueError as err:
        raise ConfigError(f"{source}: model.preset: {err}") from None
    train_values = {**preset.train_defaults, **sections.get("train", {}), **{k: v for k, v in overrides.items() if v is not None}}
    return build_config(TrainConfig, train_values, source), build_config(preset.config, model_values, source)
