"""Hyper-parameter sweeps: an Optuna study whose trials are ordinary run directories.

``msgvip sweep --store FP --space SPACE.toml --trials N [--seeds K] [--jobs J]`` samples
TrainConfig and model-preset options from a search space, trains each trial with
:func:`msgvip.ranker.trainer.train` into ``<out>/trial-<number>-seed-<seed>`` and maximises the
best val Rank@1 (the mean over the K seeds of each seed's best epoch). ``msgvip runs ls OUT``
then lists the trials, with mean ± std over the seeds of each.

The search space is a TOML file::

    [train]
    epochs = 10                                  # fixed
    lr = {low = 1e-5, high = 1e-2, log = true}   # float range (log scale)
    batch_size = [8, 16]                         # categorical choice

    [model]
    hidden = [64, 128]
    gat_layers = {low = 1, high = 3}             # int range (``step`` optional)

    [sweep]                                      # optional; these are the defaults
    sampler_seed = 0
    prune_startup_trials = 5                     # completed trials before any trial is pruned
    prune_warmup_epochs = 0                      # a trial's first epochs that are never pruned

Keys are TrainConfig fields ([train]) and fields of the model preset's config ([model], which
may also name ``preset``); ``seed``, ``device``, ``in_memory`` and the split names take one value.
A space of lists only is a grid: each combination runs once, in the order of the lists, and
``trials`` defaults to the points not run yet. Each trial claims its point under a lock beside a
SQLite storage (:class:`_GridClaims`), so two sweeps sharing a study never run a point twice; a
point already complete, pruned, failed by its values or running is skipped. Any range makes it a TPE
search (TPESampler). Trials are pruned by Optuna's MedianPruner on the first seed's val Rank@1
per epoch. Ties of val Rank@1 between trials are broken by val MRR when the best trial is
reported (Optuna itself optimises Rank@1 alone, so its dashboard shows no tie-break).

The study lives in an Optuna RDB storage (default ``sqlite:///<out>/study.db``, study name = the
out folder's name); a rerun adds trials to it, and ``optuna-dashboard <URL>`` shows it. With
``jobs`` > 1, that many worker processes join the study through the storage and run a trial
each at a time; each worker reads the train and val splits from the store once and shares them
between all its trials (with ``in_memory = "no"`` they stream from the store each epoch, as in
``train``). With ``jobs`` = 1 the trials run in the calling process. Machines that run the same
sweep (same out folder name) against one PostgreSQL storage join the same study, each writing its
trials' run directories locally.

An interrupted trial is marked failed. A trial whose process was killed (SIGKILL, a lost
machine) stays RUNNING in the storage: each trial records its host and process, and a sweep
that starts fails the RUNNING trials of this host whose process is gone at once (Optuna's
heartbeat fails those of other hosts after ``GRACE_S``), marked ``orphaned``: a grid runs their
points again.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import multiprocessing
import os
import signal
import socket
import time
import tomllib
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from ..config import ConfigError, check_device, parse_settings
from ..domains import check_value, ranged
from ..ranker.dataset import LabelError, StoreDataset
from ..ranker.presets import DEFAULT_PRESET, preset_named
from ..ranker.probe import FittedProbe, fit_probe
from ..ranker.trainer import TrainConfig, build_config, train
from ..store.feature_store import FeatureStore, StoreError
from ..store.storage import StorageError, open_storage
from .lifetime import exit_with_parent

__all__ = [
    "Param", "SweepSettings", "SweepSpace", "SweepSummary", "TrialResult", "WorkerReport", "format_summary", "read_space", "run_sweep",
    "trial_str",
]  # fmt: skip

SECTIONS = ("train", "model", "sweep")
RANGE_KEYS = ("low", "high", "log", "step")
#: TrainConfig keys one value of which holds for the whole sweep: the splits every worker reads
#: once and shares, where it runs, and the seed (the seeds are ``seed .. seed + K - 1``).
FIXED_TRAIN_KEYS = ("seed", "device", "in_memory", "train_split", "val_split", "keep")
STUDY_ATTR = "msgvip_sweep"  # what the study was made for: a rerun must match it
#: TrainConfig keys that do not change what a trial learns: a rerun may change them (continue a
#: CPU study on a GPU, say) and still add to the same study.
RUNTIME_TRAIN_KEYS = ("device", "in_memory", "eval_batch_size", "keep")
HEARTBEAT_S = 60  # a RUNNING trial whose worker died is marked failed ``GRACE_S`` after its last beat
GRACE_S = 180
STOP_TIMEOUT_S = 10  # a worker told to stop unwinds within this, else it is killed
# A trial keeps only its best checkpoint, without optimizer state: 50 trials of full runs filled a disk
TRIAL_TRAIN_DEFAULTS = {"keep": "best"}
MAX_GRID_POINTS = 100_000  # every claim lists the grid's points (_taken_points): a grid of 10^20 ran out of memory
SQLITE_TIMEOUT_S = 60  # several workers write one SQLite file: wait for its lock, never fail on it


# ---------------------------------------------------------------------------------------- space
@dataclass(frozen=True)
class Param:
    """One searched option: ``name`` is ``train.<key>`` or ``model.<key>`` (the Optuna parameter
    name, and the option name ``msgvip runs ls`` shows). ``kind`` is ``categorical`` (``choices``),
    ``int`` or ``float`` (``low`` to ``high`` inclusive, ``step`` or ``log``)."""

    name: str
    kind: str
    choices: tuple = ()
    low: float = 0.0
    high: float = 0.0
    step: float | None = None
    log: bool = False

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)


@dataclass(frozen=True)
class SweepSettings:
    """The ``[sweep]`` section: how trials are sampled and pruned."""

    sampler_seed: int = ranged(0, 0, 2**32 - 1)
    prune_startup_trials: int = ranged(5, 0)  # MedianPruner's n_startup_trials
    prune_warmup_epochs: int = ranged(0, 0)  # epochs 1..this of a trial are never pruned


@dataclass(frozen=True)
class SweepSpace:
    """A validated search space (see the module docstring); :func:`read_space` makes one."""

    source: str  # the file, for error messages
    preset: str
    fixed: dict[str, dict[str, Any]]  # {"train": {...}, "model": {...}}: one value for every trial
    params: tuple[Param, ...]
    settings: SweepSettings = SweepSettings()

    @property
    def is_grid(self) -> bool:
        return all(p.kind == "categorical" for p in self.params)

    @property
    def grid(self) -> dict[str, list]:
        return {p.name: list(p.choices) for p in self.params}

    @property
    def grid_size(self) -> int:
        return math.prod(len(p.choices) for p in self.params)

    @property
    def base_train(self) -> TrainConfig:
        """The TrainConfig of the fixed values (the preset's training defaults under them)."""
        return build_config(TrainConfig, {**preset_named(self.preset).train_defaults, **TRIAL_TRAIN_DEFAULTS, **self.fixed["train"]}, self.source)

    def configs(self, values: Mapping[str, Any]) -> tuple[TrainConfig, object]:
        """(train config, model config) of one trial's sampled ``values``; a combination the
        configs refuse (hidden not divisible by heads...) is a ConfigError naming the file."""
        preset = preset_named(self.preset)
        chosen = {section: {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith(f"{section}.")} for section in ("train", "model")}
        train_config = build_config(TrainConfig, {**preset.train_defaults, **TRIAL_TRAIN_DEFAULTS, **self.fixed["train"], **chosen["train"]}, self.source)
        return train_config, build_config(preset.config, {**self.fixed["model"], **chosen["model"]}, self.source)

    def grid_points(self) -> Iterator[tuple]:
        """Every combination of the choices, in the order of :attr:`grid`'s keys."""
        return itertools.product(*self.grid.values())

    def record(self) -> dict:
        """Plain JSON data identifying what the space searches, kept with the study (tuples
        become lists, as they come back from the storage)."""
        fixed = {**self.fixed, "train": {k: v for k, v in self.fixed["train"].items() if k not in RUNTIME_TRAIN_KEYS}}
        record = {"preset": self.preset, "fixed": fixed, "params": [asdict(p) for p in self.params], "settings": asdict(self.settings)}
        return json.loads(json.dumps(record))


def read_space(path: str | os.PathLike, preset: str | None = None, settings: Sequence[str] = ()) -> SweepSpace:
    """The search space of a TOML file (module docstring) for model preset ``preset`` (default:
    the file's ``model.preset``, else msgvip), with ``settings`` (``--set SECTION.KEY=VALUE``)
    fixing values over the file's. Any problem is a ConfigError of one line naming the file (or
    --set) and the key: unknown section or key, a value of the wrong type, an empty or repeated
    choice, a range with low > high, a log range reaching 0, a searched key that must be fixed, a
    --set of a searched key, no searched key at all."""
    path = Path(path)
    try:
        record = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:  # its message ends with "(at line L, column C)"
        raise ConfigError(f"{path}: invalid TOML: {err}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid TOML: arrays or tables nested too deeply for a search space") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    unknown = sorted(set(record) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{path}: unknown section [{unknown[0]}]; a space has [train], [model] and [sweep]")
    for name, section in record.items():
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: {name} must be a section ([{name}]) of settings, got {section!r}")
    model = dict(record.get("model", {}))
    chosen = model.pop("preset", None)
    if chosen is not None and not isinstance(chosen, str):
        raise ConfigError(f"{path}: model.preset: one preset per sweep (their options differ); give one name, got {chosen!r}")
    name = preset or chosen or DEFAULT_PRESET
    try:
        preset_obj = preset_named(name)
    except ValueError as err:
        raise ConfigError(f"{path}: model.preset: {err}") from None
    defaults = {"train": {**vars(TrainConfig()), **preset_obj.train_defaults}, "model": vars(preset_obj.config())}
    config_classes = {"train": TrainConfig, "model": preset_obj.config}
    classes = {section: cls.__name__ for section, cls in config_classes.items()}
    fixed: dict[str, dict[str, Any]] = {"train": {}, "model": {}}
    params: list[Param] = []
    for section, values in (("train", record.get("train", {})), ("model", model)):
        for key, value in values.items():
            where = f"{path}: {section}.{key}"
            if key not in defaults[section]:
                raise ConfigError(f"{where}: unknown {classes[section]} key; known: {sorted(defaults[section])}")
            default = defaults[section][key]
            if not isinstance(value, (list, dict)):
                fixed[section][key] = _typed(where, value, default)
                _check_domain(where, config_classes[section], key, fixed[section][key])
                continue
            if section == "train" and key in FIXED_TRAIN_KEYS:
                why = "the seeds are --seeds K: seed, seed + 1, ..." if key == "seed" else "every worker reads the splits once, for all its trials"
                raise ConfigError(f"{where}: give one value, not a list or range ({why})")
            params.append(_choices(where, f"{section}.{key}", value, default) if isinstance(value, list) else _range(where, f"{section}.{key}", value, default))
    for param in params:  # every choice and both ends of a range, before any trial runs
        section, key = param.name.split(".", 1)
        for value in param.choices or (param.low, param.high):
            _check_domain(f"{path}: {param.name}", config_classes[section], key, value)
    searched = {p.name for p in params}
    for section, values in parse_settings(settings).items():
        for key, value in values.items():
            where = f"--set {section}.{key}"
            if key not in defaults[section]:
                raise ConfigError(f"{where}: unknown {classes[section]} key; known: {sorted(defaults[section])}")
            if f"{section}.{key}" in searched:
                raise ConfigError(f"{where}: {path} searches it; a --set value would hide the search (edit the space instead)")
            fixed[section][key] = _typed(where, value, defaults[section][key])
            _check_domain(where, config_classes[section], key, fixed[section][key])
    if not params:
        raise ConfigError(f"{path}: searches nothing; give some [train] or [model] key a list of choices or a {{low = ..., high = ...}} range")
    grid = math.prod(len(p.choices) for p in params)
    if all(p.kind == "categorical" for p in params) and grid > MAX_GRID_POINTS:
        raise ConfigError(f"{path}: a grid of {grid:.3g} points (the product of its lists' lengths); at most {MAX_GRID_POINTS:,} can be run: "
                          "give fewer choices, or a range and --trials N")
    settings = _settings(path, record.get("sweep", {}))
    return SweepSpace(str(path), name, fixed, tuple(params), settings)


def _check_domain(where: str, cls: type, key: str, value: Any) -> None:
    try:
        check_value(cls, key, value)
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None


def _typed(where: str, value: Any, default: Any) -> Any:
    """``value`` as the type of ``default`` (an int is taken for a float), else a ConfigError."""
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        ok = isinstance(value, type(default))
    else:
        ok = isinstance(value, (int, float) if isinstance(default, float) else int) and not isinstance(value, bool)
        if ok and isinstance(default, float):
            try:
                value = float(value)
            except OverflowError:
                raise ConfigError(f"{where}: must be a finite number, got an integer of {value.bit_length()} bits") from None
            if not math.isfinite(value):
                raise ConfigError(f"{where}: must be a finite number, got {value!r}")
    if not ok:
        raise ConfigError(f"{where}: must be {type(default).__name__}, got {value!r}")
    return value


def _choices(where: str, name: str, values: list, default: Any) -> Param:
    if not values:
        raise ConfigError(f"{where}: an empty list offers no choice; give at least one value")
    choices = tuple(_typed(f"{where}[{i}]", v, default) for i, v in enumerate(values))
    if len(set(choices)) < len(choices):
        raise ConfigError(f"{where}: a choice is repeated in {list(choices)}; give each value once")
    return Param(name, "categorical", choices=choices)


def _range(where: str, name: str, table: dict, default: Any) -> Param:
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        raise ConfigError(f"{where}: is {type(default).__name__}; a {{low, high}} range needs a number setting: give a list of choices")
    unknown = sorted(set(table) - set(RANGE_KEYS))
    if unknown or not {"low", "high"} <= set(table):
        raise ConfigError(f"{where}: a range is {{low = ..., high = ...}} with optional log = true or step = ...; got keys {sorted(table)}")
    low, high = _typed(f"{where}.low", table["low"], default), _typed(f"{where}.high", table["high"], default)
    log = table.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}.log: must be true or false, got {log!r}")
    step = table.get("step")
    if step is not None:
        step = _typed(f"{where}.step", step, default)
        if step <= 0:
            raise ConfigError(f"{where}.step: must be positive, got {step!r}")
        if log:
            raise ConfigError(f"{where}: a range takes log = true or a step, not both")
        steps = (high - low) / step
        if abs(steps - round(steps)) > 1e-8:  # Optuna would move high to the last step below it, with a warning
            raise ConfigError(f"{where}: high - low ({high - low!r}) must be a whole number of steps of {step!r}")
    if low > high:
        raise ConfigError(f"{where}: low {low!r} is above high {high!r}")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0, got {low!r}")
    return Param(name, "float" if isinstance(default, float) else "int", low=low, high=high, step=step, log=log)


def _settings(path: Path, values: dict) -> SweepSettings:
    known = {f.name: f.default for f in fields(SweepSettings)}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{path}: sweep.{key}: unknown key; known: {sorted(known)}")
        _typed(f"{path}: sweep.{key}", value, known[key])
        _check_domain(f"{path}: sweep.{key}", SweepSettings, key, value)
    return SweepSettings(**values)


# ---------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class TrialResult:
    """One finished trial. ``value`` is the mean over seeds of each seed's best val Rank@1 and
    ``mrr`` the mean val MRR of those epochs (None unless ``state`` is ``complete``); a pruned
    trial has ``pruned_at`` (its last epoch) and ``pruned_rank1`` (its best val Rank@1 so far),
    a failed one ``message``."""

    number: int
    state: str  # complete | pruned | failed
    params: dict[str, Any]
    value: float | None = None
    mrr: float | None = None
    seed_values: tuple[float, ...] = ()
    run_dirs: tuple[str, ...] = ()
    pruned_at: int | None = None
    pruned_rank1: float | None = None
    message: str | None = None
    seconds: float = 0.0

    @property
    def params_str(self) -> str:
        return " ".join(f"{k}={_value_str(v)}" for k, v in sorted(self.params.items()))


@dataclass(frozen=True)
class WorkerReport:
    """What one worker (process, or the calling process with jobs = 1) did: ``split_loads`` counts
    how many times it read the train and val splits from the store (1: once for all its trials)."""

    worker: int
    pid: int
    trials: int
    split_loads: int


@dataclass(frozen=True)
class SweepSummary:
    study_name: str
    storage: str  # the storage URL, any password hidden
    out: str
    sampler: str  # grid | tpe
    trials: tuple[TrialResult, ...]  # run by this call, by number
    best: TrialResult | None  # the best complete trial of the whole study (earlier calls too)
    study_trials: int  # trials the study holds now
    workers: tuple[WorkerReport, ...] = ()
    seconds: float = 0.0

    @property
    def pruned(self) -> int:
        return sum(t.state == "pruned" for t in self.trials)

    @property
    def failed(self) -> int:
        return sum(t.state == "failed" for t in self.trials)

    @property
    def dashboard_str(self) -> str:
        return f"optuna-dashboard {self.storage}"


def _value_str(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trial_str(t: TrialResult) -> str:
    """One progress line, e.g. ``trial 3  train.lr=0.0012  val Rank@1 0.750  MRR 0.861  (2 seeds, 4.1 s)``."""
    head = f"trial {t.number}  {t.params_str}"
    if t.state == "complete":
        return f"{head}  val Rank@1 {t.value:.3f}  MRR {t.mrr:.3f}  ({len(t.seed_values)} seeds, {t.seconds:.1f} s)"
    if t.state == "pruned":
        return f"{head}  pruned at epoch {t.pruned_at} (best val Rank@1 {t.pruned_rank1:.3f})  ({t.seconds:.1f} s)"
    return f"{head}  failed: {t.message}"


def format_summary(s: SweepSummary) -> str:
    """The lines ``msgvip sweep`` ends with: counts, the best trial and its runs, the study."""
    lines = [f"{len(s.trials)} trials ({s.pruned} pruned, {s.failed} failed) in {s.seconds:.0f} s; the study holds {s.study_trials}"]
    if s.best is None:
        lines.append("no trial has completed yet")
    else:
        b = s.best
        lines += [f"best: trial {b.number}  val Rank@1 {b.value:.3f}  MRR {b.mrr:.3f}  {b.params_str}", f"  runs: {' '.join(b.run_dirs)}"]
    lines += [f"study '{s.study_name}' in {s.storage}; list the runs with `msgvip runs ls {s.out}`", f"look at it: {s.dashboard_str}"]
    return "\n".join(lines)


def _result(t: optuna.trial.FrozenTrial) -> TrialResult:
    attrs = t.user_attrs
    common = {"number": t.number, "params": dict(t.params), "run_dirs": tuple(attrs.get("run_dirs", ())), "seconds": _seconds(t)}
    if t.state == optuna.trial.TrialState.COMPLETE:
        return TrialResult(state="complete", value=t.value, mrr=attrs.get("val_mrr"), seed_values=tuple(attrs.get("seed_rank@1", ())), **common)
    if t.state == optuna.trial.TrialState.PRUNED:
        steps = t.intermediate_values
        return TrialResult(state="pruned", pruned_at=max(steps, default=None), pruned_rank1=max(steps.values(), default=None), **common)
    # without an "error" attribute (set on a ConfigError), Optuna failed the trial for its value
    return TrialResult(state="failed", message=attrs.get("error", "Optuna refused its value (not a number: no labeled val clip?)"), **common)


def _seconds(t: optuna.trial.FrozenTrial) -> float:
    return (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else 0.0


def _best(study: optuna.Study) -> TrialResult | None:
    done = [_result(t) for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    # the highest Rank@1, then the highest MRR, then the earliest trial
    return max(done, key=lambda r: (r.value, r.mrr if r.mrr is not None else -math.inf, -r.number), default=None)


# ---------------------------------------------------------------------------------------- storage
def _open_storage(url: str) -> optuna.storages.RDBStorage:
    engine = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite") else None
    try:
        # two sweeps opening a new SQLite study at once both made its tables (IntegrityError): one at a time
        with _study_lock(url), warnings.catch_warnings():
            _check_tables(url)
            # heartbeats are "experimental" in Optuna; they are what turns the RUNNING trials of a
            # killed worker into failed ones (at the next trial's start), so they stay
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
    except RuntimeError as err:  # Optuna's own: a schema another Optuna version wrote
        raise ConfigError(f"--storage {_hide_password(url)}: {str(err).splitlines()[0]} (this is optuna {optuna.__version__}); "
                          "give a new --out or --storage, or run the sweep with the optuna version that made it") from None
    except (SQLAlchemyError, ImportError) as err:  # a malformed URL, a missing database driver, a server or file out of reach
        raise ConfigError(
            f"--storage {_hide_password(url)}: cannot open it ({type(err).__name__}: {str(err).splitlines()[0]}); "
            "give an Optuna RDB URL such as sqlite:///path/study.db or postgresql://user@host/db (with its driver installed)"
        ) from None


def _check_tables(url: str) -> None:
    """Refuse a database that holds tables Optuna does not make: another application's, which
    creating a study would add Optuna's twelve tables to."""
    from optuna.storages._rdb.models import BaseModel
    from sqlalchemy import create_engine, inspect

    engine = create_engine(url)
    try:
        foreign = sorted(set(inspect(engine).get_table_names()) - set(BaseModel.metadata.tables) - {"alembic_version"})
    finally:
        engine.dispose()
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ConfigError(f"--storage {_hide_password(url)}: holds tables Optuna did not make ({shown}): another application's database; give a database of its own")


def _hide_password(url: str) -> str:
    """``url`` fit to print: a password in it is shown as ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna logs a line per trial and per study created; the sweep prints its own lines instead."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


# ---------------------------------------------------------------------------------------- trials
@dataclass(frozen=True)
class _Job:
    """What a worker needs to join the study and train its trials (sent to worker processes)."""

    space: SweepSpace
    out: str
    seeds: int
    dataset: str
    storage: str
    study_name: str
    sampler_seed: int  # of this call: each worker mixes in its index
    cache_root: str  # the store's cache root URL, its storage options and fingerprint: a worker opens it itself
    storage_options: dict
    fingerprint: str
    threads: int  # torch threads of a worker process (the calling process keeps its own)


_split_loads = 0  # times this process has read the train and val splits from the store (WorkerReport)


def _splits(store: FeatureStore, job: _Job) -> tuple[StoreDataset, StoreDataset]:
    """The train and val splits the trials of a worker share: what ``train`` would read itself
    (the preset's families, else every family; the space's fixed split names and in_memory)."""
    global _split_loads
    _split_loads += 1
    families = list(preset_named(job.space.preset).families) or None
    cfg = job.space.base_train
    with store.lease():
        train_data = StoreDataset(store, cfg.train_split, families, cfg.in_memory, dataset=job.dataset)
        return train_data, StoreDataset(store, cfg.val_split, train_data.families, cfg.in_memory, dataset=job.dataset)


def _sampler(job: _Job, worker: int) -> optuna.samplers.BaseSampler:
    if job.space.is_grid:
        return _GridClaims(job.space, job.storage)
    seed = int(np.random.SeedSequence([job.sampler_seed, worker]).generate_state(1)[0])  # workers must not propose the same points
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)  # constant liar: running trials steer parallel workers apart


# ---------------------------------------------------------------------------------------- grid claims and orphans
OWNER_ATTR = "msgvip_owner"  # the host and process running a trial
ORPHAN_ATTR = "msgvip_orphaned"  # a trial failed because its process was gone: its point is free again
POINT_ATTR = "msgvip_grid_point"  # the grid point a trial claimed (a system attribute), or None: none was left


class GridExhausted(ConfigError):
    """Every grid point was taken between a worker's check and its trial's claim (another sweep)."""


class _GridClaims(optuna.samplers.BaseSampler):
    """Each new trial claims the first grid point no trial holds, under a lock every process
    sharing the study takes (:func:`_study_lock`), and its parameters are that point's values.
    Optuna's GridSampler numbers points by trial number and, once every point has started, hands
    out running ones again: two sweeps sharing a study completed one point four times."""

    def __init__(self, space: SweepSpace, storage: str):
        self.space, self.storage = space, storage

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        with _study_lock(self.storage):
            point = _free_point(study, self.space)
            study._storage.set_trial_system_attr(trial._trial_id, POINT_ATTR, None if point is None else list(point))

    def infer_relative_search_space(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict:
        return {}

    def sample_relative(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, search_space: dict) -> dict:
        return {}

    def sample_independent(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, name: str, distribution: object) -> Any:
        point = trial.system_attrs.get(POINT_ATTR)
        if point is None:
            raise GridExhausted(f"{self.space.source}: every grid point was taken by another sweep of this study meanwhile")
        return dict(zip(self.space.grid, point))[name]


def _process_token(pid: int) -> str | None:
    """What tells process ``pid`` from a later one given the same pid (its start time, in clock
    ticks since boot), "" where the system does not say; None: no such process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, someone else's
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "token": _process_token(os.getpid())}


def _fail_orphans(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials of this host whose process is gone (marked orphaned), and those of
    any host whose heartbeat is older than the grace period; returns the numbers of the first."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        owner = trial.user_attrs.get(OWNER_ATTR)
        if not isinstance(owner, dict) or owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
            continue
        now, then = _process_token(owner["pid"]), owner.get("token")
        if now is None or (now and then and now != then):  # gone, or its pid now names a later process
            study._storage.set_trial_user_attr(trial._trial_id, ORPHAN_ATTR, True)
            study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
            failed.append(trial.number)
    return failed


def _taken_points(study: optuna.Study, space: SweepSpace) -> set[tuple]:
    """The grid points a trial holds: complete, pruned, failed by its values, or running (or
    claimed by one about to run); an orphaned trial's point is free again."""
    names = list(space.grid)
    taken = set()
    for trial in study.get_trials(deepcopy=False):
        if trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs.get(ORPHAN_ATTR):
            continue
        claimed = trial.system_attrs.get(POINT_ATTR)
        taken.add(tuple(claimed) if claimed is not None else tuple(trial.params.get(n) for n in names))
    return taken & set(space.grid_points())


def _free_point(study: optuna.Study, space: SweepSpace) -> tuple | None:
    taken = _taken_points(study, space)
    return next((p for p in space.grid_points() if p not in taken), None)


@contextlib.contextmanager
def _study_lock(storage: str) -> Iterator[None]:
    """An exclusive lock for making a study's tables and claiming grid points: a flock on a file
    beside a SQLite study, which every process sharing the study takes. Other storages
    (PostgreSQL across machines) have no such file; two machines claiming at the same instant
    could then run one point twice."""
    try:
        url = make_url(storage)
    except ArgumentError:
        yield  # not a URL: opening it says so
        return
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:" or not Path(url.database).parent.is_dir():
        yield
        return
    import fcntl

    with open(f"{url.database}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _pruner(settings: SweepSettings) -> optuna.pruners.BasePruner:
    # steps are epochs (1, 2, ...): Optuna prunes from step n_warmup_steps on
    return optuna.pruners.MedianPruner(n_startup_trials=settings.prune_startup_trials, n_warmup_steps=settings.prune_warmup_epochs + 1)


class _LocalChannel:
    """How a worker takes trials and reports them, when it is the calling process (jobs = 1):
    ``trials`` tickets, and ``on_trial`` sees each finished trial. :class:`_PipeChannel` is the
    same for a worker process."""

    def __init__(self, trials: int, on_trial: Callable[[TrialResult], None]):
        self.left, self.on_trial = trials, on_trial

    def take(self) -> bool:
        """Whether to run one more trial."""
        self.left -= 1
        return self.left >= 0

    def started(self, number: int) -> None:
        """Trial ``number`` has started (Optuna marks it failed itself if this process is interrupted)."""

    def finished(self, result: TrialResult) -> None:
        self.on_trial(result)


class _PipeChannel:
    """A worker process's side: the parent hands out the tickets, so a worker that finishes early
    takes the next trial, and it knows each worker's running trial, to fail it if it must end the
    worker."""

    def __init__(self, conn: Connection):
        self.conn = conn

    def take(self) -> bool:
        self.conn.send(("take", None))
        return self.conn.recv()

    def started(self, number: int) -> None:
        self.conn.send(("started", number))

    def finished(self, result: TrialResult) -> None:
        self.conn.send(("finished", result))


class _Objective:
    """Trains one trial's seeds; pruning follows the first seed's val Rank@1 per epoch."""

    def __init__(self, job: _Job, store: FeatureStore, splits: tuple[StoreDataset, StoreDataset], channel: _LocalChannel | _PipeChannel):
        self.job, self.store, self.splits, self.channel = job, store, splits, channel
        self.probe = _probe_of(splits) if job.space.base_train.probe else None  # once: every trial of this worker sets its model beside it

    def __call__(self, trial: optuna.Trial) -> float:
        self.channel.started(trial.number)
        trial.set_user_attr(OWNER_ATTR, _owner())  # a sweep that finds this trial RUNNING and its process gone fails it
        values = {p.name: p.suggest(trial) for p in self.job.space.params}
        try:
            train_config, model_config = self.job.space.configs(values)
        except ConfigError as err:
            trial.set_user_attr("error", str(err))
            raise
        run_dirs, rank1, mrr = [], [], []
        for k in range(self.job.seeds):
            seed = train_config.seed + k
            run_dirs.append(str(Path(self.job.out) / f"trial-{trial.number}-seed-{seed}"))
            trial.set_user_attr("run_dirs", run_dirs)  # before training, so a pruned trial names its run too
            on_epoch = self._reporter(trial) if k == 0 else None
            summary = train(self.store, Path(run_dirs[-1]), replace(train_config, seed=seed), model_config, dataset=self.job.dataset,
                            splits=self.splits, on_epoch=on_epoch, progress=False, probe=self.probe)  # fmt: skip
            rank1.append(summary.val["model"]["rank@1"])
            mrr.append(summary.val["model"]["mrr"])
        trial.set_user_attr("seed_rank@1", rank1)
        trial.set_user_attr("val_mrr", float(np.mean(mrr)))
        return float(np.mean(rank1))

    @staticmethod
    def _reporter(trial: optuna.Trial) -> Callable[[dict], None]:
        def on_epoch(row: dict) -> None:
            trial.report(row["val_rank@1"], row["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned()

        return on_epoch


def _probe_of(splits: tuple[StoreDataset, StoreDataset]) -> FittedProbe | None:
    """The probe baseline of the worker's splits; None where no probe fits them (each trial then says why)."""
    try:
        return fit_probe(*splits)
    except ConfigError:
        return None


def _work(job: _Job, worker: int, store: FeatureStore, channel: _LocalChannel | _PipeChannel) -> WorkerReport:
    """One worker: read the splits once, then run trials while the channel hands out tickets."""
    loads = _split_loads
    splits = _splits(store, job)
    with _quiet_optuna():
        study = optuna.load_study(study_name=job.study_name, storage=_open_storage(job.storage), sampler=_sampler(job, worker), pruner=_pruner(job.space.settings))
        objective, done = _Objective(job, store, splits, channel), 0
        while channel.take():
            if job.space.is_grid and _free_point(study, job.space) is None:
                break  # every point is taken: by this sweep, or by another one sharing the study
            # a ConfigError (a combination of values the configs refuse) fails this trial, not the sweep
            study.optimize(objective, n_trials=1, catch=(ConfigError,), callbacks=[lambda _, t: channel.finished(_result(t))])
            done += 1
    return WorkerReport(worker, os.getpid(), done, split_loads=_split_loads - loads)


def _worker_main(job: _Job, worker: int, conn: Connection) -> None:
    """A worker process: takes tickets from the parent and reports to it through ``conn``."""
    exit_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent alone handles it, and ends the workers
    signal.signal(signal.SIGTERM, _interrupt)
    torch.set_num_threads(job.threads)
    try:
        store = FeatureStore.open_in(open_storage(job.cache_root, job.storage_options), job.fingerprint)
        conn.send(("done", _work(job, worker, store, _PipeChannel(conn))))
    except BaseException as err:  # handed to the parent, which raises it
        conn.send(("error", (type(err).__name__, str(err))))
    finally:
        conn.close()


def _interrupt(signum: int, frame: object) -> None:
    # how the parent ends a worker: unwinding, not dying, releases its store lease and semaphores,
    # and Optuna marks the running trial failed on a KeyboardInterrupt
    raise KeyboardInterrupt


# Errors a worker hands back keep their class when a user can cause them (the CLI prints those as
# one line); any other is re-raised as a RuntimeError naming it. Only names and text cross the
# pipe: nothing from a worker is unpickled into an exception class of its choosing.
_USER_ERRORS: dict[str, type[BaseException]] = {e.__name__: e for e in (ConfigError, LabelError, StoreError, StorageError, KeyboardInterrupt)}


def _worker_error(name: str, message: str) -> BaseException:
    kind = _USER_ERRORS.get(name)
    return kind(message) if kind is not None else RuntimeError(f"{name}: {message}")


def _run_workers(job: _Job, jobs: int, trials: int, study: optuna.Study, on_trial: Callable[[TrialResult], None]) -> list[WorkerReport]:
    """``jobs`` worker processes run ``trials`` trials of ``study`` between them, one ticket per
    trial. Workers start from a forkserver that imports torch once (forking this process, which
    runs threads, is unsafe) and end with this process, however it ends. On any error or an
    interrupt here, the workers are ended and their running trials marked failed before it is
    raised."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])  # takes effect when the server starts
    procs, conns, running = [], {}, {}
    left = trials
    try:
        for worker in range(jobs):
            mine, theirs = context.Pipe()
            proc = context.Process(target=_worker_main, args=(job, worker, theirs), name=f"msgvip-sweep-{worker}", daemon=True)
            proc.start()
            theirs.close()  # the worker holds the only other end: its exit reads as end-of-file here
            procs.append(proc)
            conns[mine] = worker
        reports: dict[int, WorkerReport] = {}
        while conns:
            for conn in wait(list(conns)):
                worker = conns[conn]
                try:
                    kind, payload = conn.recv()
                except EOFError:
                    del conns[conn]
                    if worker not in reports:
                        procs[worker].join()
                        # killed from outside (the OOM killer, a signal): an error of the machine, not of msgvip
                        raise ChildProcessError(f"sweep worker {worker} (pid {procs[worker].pid}) ended with exit code {procs[worker].exitcode} before it finished its trials") from None
                    continue
                if kind == "take":
                    conn.send(left > 0)
                    left -= 1
                elif kind == "started":
                    running[worker] = payload
                elif kind == "finished":
                    running.pop(worker, None)
                    on_trial(payload)
                elif kind == "done":
                    reports[worker] = payload
                else:
                    raise _worker_error(*payload)
        for proc in procs:
            proc.join()
        return [reports[w] for w in range(jobs)]
    except BaseException:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join(STOP_TIMEOUT_S)
            if proc.is_alive():  # stuck in a long C call, say
                proc.kill()
                proc.join()
        with _quiet_optuna():  # a worker that unwound has failed its trial itself: Optuna would log that it skips it
            for number in running.values():  # else a killed worker's trial would show as RUNNING until the heartbeat grace period ends
                study.tell(number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        raise


# ---------------------------------------------------------------------------------------- sweep
def run_sweep(
    store: FeatureStore,
    space: str | os.PathLike,
    out: str | os.PathLike,
    trials: int | None = None,
    seeds: int = 1,
    jobs: int = 1,
    storage: str | None = None,
    dataset: str | None = None,
    preset: str | None = None,
    progress: bool = True,
    settings: Sequence[str] = (),
) -> SweepSummary:
    """Run ``trials`` trials of the study for the search space file ``space`` and return what
    they gave; see the module docstring.

    Args:
        store: the feature store to train from.
        space: the search space file (:func:`read_space`); ``preset`` (a model preset name)
            overrides its ``model.preset``.
        out: the sweep folder: one run directory per trial and seed, and the default storage.
        trials: trials to run now; for a grid, at most (and by default) its points not yet run.
        seeds: seeds per trial (``seed .. seed + seeds - 1``, ``seed`` from the space's [train]).
        jobs: trials at once, each in a worker process of its own (1: in this process).
        storage: an Optuna RDB URL [default: ``sqlite:///<out>/study.db``].
        dataset: the store's dataset snapshot [default: its only one].
        settings: ``SECTION.KEY=VALUE`` values fixed for every trial, over the space file's.
        progress: print where the study is, then one line per finished trial.

    Raises:
        ConfigError: a bad space, count or storage; a study in ``storage`` made for another
            space, preset, store, dataset or number of seeds; a dataset the preset cannot train on.
    """
    start = time.perf_counter()
    say = (lambda line: print(line, flush=True)) if progress else (lambda line: None)
    space = read_space(space, preset, settings)
    for name, value in (("--trials", trials), ("--seeds", seeds), ("--jobs", jobs)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if trials is None and not space.is_grid:
        raise ConfigError(f"{space.source}: has ranges, so it is no grid of known size: give the number of trials (--trials N)")
    if space.base_train.device != "auto":  # auto picks what exists
        check_device(space.base_train.device)
    snapshot = _check_dataset(store, space, dataset)
    out = Path(out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{out / 'study.db'}"
    shown = _hide_password(url)
    with _quiet_optuna():
        study = optuna.create_study(storage=_open_storage(url), study_name=out.name, direction="maximize", load_if_exists=True)
    made_for = {"space": space.record(), "fingerprint": store.fingerprint, "dataset": snapshot, "seeds": seeds}
    _check_study(study, made_for, out, shown)
    orphans = _fail_orphans(study)
    if orphans:
        say(f"marked {len(orphans)} trials failed whose process is gone (killed?): {', '.join(map(str, orphans))}")
    todo = trials or space.grid_size
    if space.is_grid:  # the grid points no trial has taken yet
        todo = min(todo, space.grid_size - len(_taken_points(study, space)))
    jobs = min(jobs, todo) or 1
    say(f"study '{out.name}' in {shown} ({len(study.trials)} trials so far); look at it with: optuna-dashboard {shown}")
    if todo == 0:
        say("every point of the grid has run already: nothing to do")
    else:
        say(f"{todo} trials x {seeds} seeds, {'grid' if space.is_grid else 'TPE'} sampler, {jobs} at once, runs in {out}")
    job = _Job(
        space=space, out=str(out), seeds=seeds, dataset=snapshot, storage=url, study_name=out.name,
        sampler_seed=int(np.random.SeedSequence([space.settings.sampler_seed, len(study.trials)]).generate_state(1)[0]),
        cache_root=store.storage.url, storage_options=store.storage.options, fingerprint=store.fingerprint,
        threads=max(1, _cpus() // jobs),
    )  # fmt: skip
    results: list[TrialResult] = []

    def on_trial(result: TrialResult) -> None:
        results.append(result)
        say(trial_str(result))

    if todo == 0:
        workers: list[WorkerReport] = []
    elif jobs == 1:
        workers = [_work(job, 0, store, _LocalChannel(todo, on_trial))]
    else:
        workers = _run_workers(job, jobs, todo, study, on_trial)
    study = optuna.load_study(study_name=out.name, storage=_open_storage(url))
    return SweepSummary(
        study_name=out.name, storage=shown, out=str(out), sampler="grid" if space.is_grid else "tpe",
        trials=tuple(sorted(results, key=lambda r: r.number)), best=_best(study), study_trials=len(study.trials),
        workers=tuple(workers), seconds=time.perf_counter() - start,
    )  # fmt: skip


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _check_dataset(store: FeatureStore, space: SweepSpace, dataset: str | None) -> str:
    """The dataset's name, once it is known to hold what every trial needs (else one ConfigError
    now, not the same failure in every trial)."""
    snapshot = store.resolve_dataset(dataset)
    preset = preset_named(space.preset)
    missing = sorted(set(preset.families) - set(store.families))
    if missing:
        raise ConfigError(f"{store.location}: model {preset.name!r} needs feature families {list(preset.families)}; the store lacks {missing} (extract with --features {','.join(preset.families)})")
    if snapshot.leaks():
        raise ConfigError(f"{store.location}: dataset {snapshot.name!r} holds the same clip content in two splits (see `msgvip cache info {store.fingerprint[:12]}`); fix the data before sweeping on it")
    cfg, counts = space.base_train, snapshot.splits()
    if not counts.get(cfg.train_split) or not counts.get(cfg.val_split):
        raise ConfigError(f"{store.location}: dataset {snapshot.name!r} needs clips in splits {cfg.train_split!r} and {cfg.val_split!r}; has {counts}")
    return snapshot.name


def _check_study(study: optuna.Study, made_for: dict, out: Path, shown: str) -> None:
    """Record what a new study is for; refuse to add trials of another kind to an existing one,
    and trials of a new study to a folder holding another study's runs."""
    recorded = study.user_attrs.get(STUDY_ATTR)
    made_for = json.loads(json.dumps(made_for))  # as the storage gives it back
    if recorded is None:
        if study.trials:
            raise ConfigError(f"study '{study.study_name}' in {shown} holds trials msgvip sweep did not run; give a new --out (or --storage)")
        if any(out.glob("trial-*-seed-*")):
            raise ConfigError(f"{out}: holds trial runs of another study than '{study.study_name}' in {shown}; give a new --out, or the --storage those runs came from")
        study.set_user_attr(STUDY_ATTR, made_for)
        return
    for key, value in made_for.items():
        if recorded.get(key) != value:
            raise ConfigError(f"study '{study.study_name}' in {shown} was made with another {key} ({recorded.get(key)!r}, now {value!r}); give a new --out for a new study")
