"""Finding the store and dataset a ranker command works on: by fingerprint, by path, or by
extracting data.

The ranker never extracts; these flows join the two stages for `msgvip train --data`,
`msgvip evaluate` and `msgvip predict RUN_DIR DATA`. A run remembers its store by location and
cache root, so it is found again from any working directory.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path

from ..config import CONFIG_SECTIONS, ConfigError, ExtractConfig, parse_settings, read_config_file
from ..data.sources import SourceError
from ..ranker.presets import DEFAULT_PRESET, preset_named
from ..ranker.trainer import TrainConfig, build_config, run_config
from ..store.cache import cache_root, resolve_store, store_fingerprints
from ..store.feature_store import FeatureStore, StoreError
from .extract import run_extract
from .extract_run import ExtractSummary, default_dataset_name


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
    else under the cache root the run recorded. A store that is gone is a StoreError saying how
    to rebuild it; one that is there but cannot be opened (damaged, an older schema) says why."""
    config = run_config(run_dir)
    root = cache_root(cache_dir if cache_dir is not None else config.get("cache_root"), storage_options)
    try:
        return resolve_store(root, config["fingerprint"])
    except StoreError as err:
        if config["fingerprint"] in store_fingerprints(root):
            raise StoreError(f"{run_dir}: its store {str(config['fingerprint'])[:12]} in {root.url} cannot be opened: {err}") from None
        raise StoreError(f"{run_dir}: {store_gone(config, root.url)}") from None


def store_gone(config: Mapping, root: str) -> str:
    """What to say of a run (its config.json ``config``) whose store is not in cache root ``root``."""
    where = f"its store {str(config['fingerprint'])[:12]} is gone from {root} (removed by `cache gc`?)"
    source = config.get("extracted_from")
    if not isinstance(source, dict) or not source.get("data"):
        return f"{where}; extract its data again with the settings it was extracted with, or pass --cache-dir where the store lives"
    return f"{where}; rebuild it with: {rebuild_command(source, config.get('dataset'), root)} (or pass --cache-dir where it lives)"


def rebuild_command(source: Mapping, dataset: str | None, root: str) -> str:
    """The `msgvip extract` command that rebuilds a store from the ``extracted_from`` record a
    run keeps: its data and every setting that differs from extract's defaults."""
    defaults = ExtractConfig().settings()
    settings = source.get("settings") or {}
    flags = ["--features", ",".join(settings.get("features", defaults["features"]))]
    for key, value in settings.items():
        if key != "features" and key in defaults and value != defaults[key]:
            text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
            flags += [f"--{key.replace('_', '-')}", text]
    if dataset:
        flags += ["--dataset", dataset]
    return shlex.join(["msgvip", "extract", str(source["data"]), *flags, "--cache-dir", root])


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


def train_configs(config_file: Path | None = None, overrides: Mapping | None = None, preset_name: str | None = None, settings: Sequence[str] = (),
                  from_run: Path | None = None) -> tuple:  # fmt: skip
    """(train config, model config): the model preset's training defaults, under the settings of
    run ``from_run`` (its config.json), under the config file's (a TOML/JSON file or a run's
    config.json), under ``--set``, under the flags; [model] holds ``preset`` and that preset's
    options. A key given both by a flag and by ``--set`` is refused. With no arguments: the
    configs ``msgvip train --store FP`` trains with (the demo and the benchmarks use them)."""
    layers = [(str(path), read_config_file(path, run_sections)) for path in (from_run and Path(from_run) / "config.json", config_file) if path]
    given = parse_settings(settings)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    both = sorted(k for k in overrides if k in given.get("train", {}))
    if both:
        raise ConfigError(f"--set train.{both[0]} and its flag --{both[0].replace('_', '-')}: give one")
    layers.append(("--set", given))
    sections: dict[str, dict] = {name: {} for name in CONFIG_SECTIONS}
    for _, layer in layers:
        for name in CONFIG_SECTIONS:
            sections[name].update(layer.get(name, {}))
    source = " with ".join(name for name, layer in layers if any(layer.values())) or "command line"
    model_values = dict(sections["model"])
    preset_name = preset_name or model_values.pop("preset", DEFAULT_PRESET)
    model_values.pop("preset", None)
    try:
        preset = preset_named(preset_name)
    except ValueError as err:
        raise ConfigError(f"{source}: model.preset: {err}") from None
    train_values = {**preset.train_defaults, **sections["train"], **overrides}
    return build_config(TrainConfig, train_values, source), build_config(preset.config, model_values, source)


def run_sections(record: Mapping) -> dict[str, dict]:
    """The settings a run's config.json ``record`` trained with, as config sections: its model
    options (fields it lacks because they came later set to what it was trained as) and the train
    fields this version knows (one a later version dropped has no effect to reproduce)."""
    try:
        preset = preset_named(str(record.get("model_preset", DEFAULT_PRESET)))
    except ValueError as err:
        raise ConfigError(f"{record.get('store', 'run record')}: model_preset: {err}") from None
    known = {f.name for f in fields(TrainConfig)}
    return {"model": {"preset": preset.name, **preset.complete_record(record["model"])}, "train": {k: v for k, v in record["train"].items() if k in known}}


RESUMABLE = ("epochs", "patience", "device", "in_memory", "logger", "eval_batch_size", "threads")  # TrainConfig fields a resumed run may change


def resume_configs(run_dir: Path, config_file: Path | None, overrides: Mapping, preset_name: str | None, settings: Sequence[str]) -> tuple:
    """(train config, model config) to continue ``run_dir`` with: the run's own settings, which
    the given ones may only change where the model and its training stay the same (more epochs,
    another device, ...); any other change is a ConfigError naming the field."""
    recorded_train, recorded_model = train_configs(from_run=run_dir)
    train_config, model_config = train_configs(config_file, overrides, preset_name, settings, from_run=run_dir)
    if type(model_config) is not type(recorded_model):
        raise ConfigError(f"{run_dir}: was trained with model {run_config(run_dir).get('model_preset', DEFAULT_PRESET)!r}; a resumed run keeps its model (train a new run with --from-run)")
    changes = [(f"model.{f.name}", getattr(recorded_model, f.name), getattr(model_config, f.name)) for f in fields(model_config)]
    changes += [(f"train.{f.name}", getattr(recorded_train, f.name), getattr(train_config, f.name)) for f in fields(train_config) if f.name not in RESUMABLE]
    changes = [c for c in changes if c[1] != c[2]]
    if train_config.epochs < recorded_train.epochs:
        changes.insert(0, ("train.epochs", recorded_train.epochs, train_config.epochs))
    if changes:
        name, was, now = changes[0]
        raise ConfigError(f"{run_dir}: {name} was {was!r}, would be {now!r}: a resumed run keeps its settings (it may only train more epochs or change "
                          f"{', '.join(f for f in RESUMABLE if f != 'epochs')}); train a new run with --from-run {run_dir} --set {name}={now!r}")
    return train_config, model_config
