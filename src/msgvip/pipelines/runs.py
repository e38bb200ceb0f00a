"""Comparing runs: list the run directories under a folder with what sets them apart, and compare
two runs on the same clips with a paired bootstrap.

``list_runs`` reads only small files (``config.json``, ``metrics.csv``, ``evaluate-test.json``),
never a checkpoint, so listing a sweep of hundreds of trials is quick; a damaged run directory
is listed with its problem and never stops the listing. ``compare_runs`` scores both runs on one
split and says whether the difference is larger than the clips can tell apart.

Metric names are flat: ``val_<metric>`` is the run's best validation epoch (the ``val_`` columns
of ``metrics.csv``), ``test_<metric>`` is from ``evaluate-test.json`` (what ``msgvip evaluate``
writes into the run directory). Records keep raw numbers; display strings have ``_str`` names.

Example (a sweep folder of trials)::

    rows = list_runs(Path("runs/sweep"))         # one RunRow per run directory, by name
    rows = sort_runs(rows, "val_rank@1")          # best first
    rows[0].options_str                           # e.g. 'model.hidden=64 train.lr=0.001'
    [g.metric_str("val_rank@1") for g in group_by_seed(rows)]   # e.g. ['0.562 ± 0.088']
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ConfigError
from ..files import read_regular_text
from ..ranker.metrics import HEADLINE_METRICS, PAIRED_METRICS, paired_bootstrap, rank_of_target, ranking_metrics
from ..ranker.presets import DEFAULT_PRESET, preset_named
from ..ranker.trainer import PROBE_FILE, TrainConfig, best_epoch, read_metrics, run_config, scored_split
from ..store.cache import cache_root
from ..store.feature_store import META_FILE, FeatureStore, StoreError
from ..store.storage import StorageError
from .train import store_gone

__all__ = [
    "EVALUATE_FILE", "RunRow", "SeedGroup", "compare_runs", "compare_with_probe", "comparison_summary_str", "comparison_table",
    "group_by_seed", "groups_table", "interval_str", "list_runs", "metric_str", "problems", "runs_json", "runs_table", "shared_options",
    "shared_options_str", "sort_runs",
]  # fmt: skip

#: Written into the run directory by ``msgvip evaluate`` (the split's result record); listed as ``test_*``.
EVALUATE_FILE = "evaluate-test.json"

#: Files only a run directory holds: a folder with any of them is listed as a run.
RUN_MARKERS = ("config.json", "metrics.csv", "best.pt", "latest.pt")

#: How deep below the listed folder runs are looked for: 2 shows ``root/sweep/trial``.
MAX_DEPTH = 2

# Options that do not change what a run learns (or, for seed, are what a group averages over),
# so they never set runs apart. max_frames is raised by `train` to the longest clip of the data,
# not chosen by the user.
# what changes where a run runs or what it keeps, never what it learns: runs differing only by these are one setting
IGNORED_TRAIN = frozenset({"seed", "device", "in_memory", "eval_batch_size", "logger", "probe", "keep", "threads", "amp"})
IGNORED_MODEL = frozenset({"max_frames"})

#: Metric columns of the tables, in order; ``probe_*`` are the run's own probe baseline.
TABLE_METRICS = ("val_rank@1", "probe_val_rank@1", "val_mrr", "test_rank@1", "probe_test_rank@1", "test_mrr")
NARROW_METRICS = ("val_rank@1", "probe_val_rank@1", "test_rank@1", "probe_test_rank@1")  # what fits 120 columns


def metric_str(value: float | None) -> str:
    """A metric for a table: 3 decimals, ``-`` when there is none."""
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"


def interval_str(interval: Sequence[float] | None) -> str:
    return "-" if interval is None or not all(math.isfinite(v) for v in interval) else f"[{interval[0]:.3f}, {interval[1]:.3f}]"


@dataclass(frozen=True)
class RunRow:
    """One run directory of a listing.

    ``options`` are the settings that differ from the defaults of the run's model preset, keyed
    ``train.<name>`` and ``model.<name>``; ``metrics`` maps ``val_*`` (best epoch) and ``test_*``
    names to numbers, ``intervals`` the ``test_*`` ones to their 95% bootstrap ``[low, high]``
    when ``evaluate-test.json`` holds them; ``problem`` says what is damaged or missing (None
    for a healthy run).
    """

    name: str  # relative to the listed folder, "." for the folder itself
    path: str
    preset: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    fingerprint: str = ""
    dataset: str | None = None
    families: tuple[str, ...] = ()
    epochs_run: int = 0
    best_epoch: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, list[float]] = field(default_factory=dict)
    test_clips: int | None = None
    problem: str | None = None

    @property
    def options_str(self) -> str:
        return _options_str(self.options)

    @property
    def epochs_str(self) -> str:
        return f"{self.best_epoch or '-'}/{self.epochs_run}"

    def metric_str(self, name: str) -> str:
        """The metric, with its interval when there is one."""
        value = metric_str(self.metrics.get(name))
        return f"{value} {interval_str(self.intervals[name])}" if name in self.intervals and value != "-" else value

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SeedGroup:
    """Runs that differ only by seed: the mean and sample standard deviation (ddof 1) of each
    metric that every run of the group has."""

    preset: str
    options: dict[str, Any]
    fingerprint: str
    dataset: str | None
    runs: tuple[str, ...]  # names, as in the listing
    seeds: tuple[int | None, ...]
    mean: dict[str, float]
    std: dict[str, float]

    @property
    def options_str(self) -> str:
        return _options_str(self.options)

    def metric_str(self, name: str) -> str:
        return "-" if name not in self.mean else f"{metric_str(self.mean[name])} ± {metric_str(self.std[name])}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _options_str(options: dict[str, Any]) -> str:
    return " ".join(f"{k}={_value_str(v)}" for k, v in sorted(options.items()))


def _value_str(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(_value_str, value))
    if not isinstance(value, float):
        return str(value)
    text = f"{value:.3g}"  # lr=0.00271, not 0.0027082428815641815
    return text if any(c in text for c in ".en") else f"{text}.0"  # 0.0 stays a float (e, inf and nan too)


# ---------------------------------------------------------------------------------------- listing
def list_runs(root: Path) -> list[RunRow]:
    """Every run directory in ``root`` (``root`` itself, or up to :data:`MAX_DEPTH` folders
    below it), sorted by name; a folder holding any of :data:`RUN_MARKERS` is a run."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: no such folder of runs")
    rows: list[RunRow] = []
    _walk(root, root, 0, rows)
    return sorted(rows, key=lambda r: r.name)


def _walk(root: Path, folder: Path, depth: int, rows: list[RunRow]) -> None:
    name = folder.relative_to(root).as_posix()
    try:
        if any((folder / marker).is_file() for marker in RUN_MARKERS):
            rows.append(_read_run(name, folder))
            return  # a run directory holds no runs
        children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as err:  # an unreadable folder is reported, its siblings are still listed
        rows.append(RunRow(name=name, path=str(folder), problem=f"{folder}: unreadable ({err.strerror or err})"))
        return
    if depth < MAX_DEPTH:
        for child in children:
            _walk(root, child, depth + 1, rows)


def _read_run(name: str, folder: Path) -> RunRow:
    try:
        config = run_config(folder)
        train = config.get("train") if isinstance(config.get("train"), dict) else {}
        preset = str(config.get("model_preset", DEFAULT_PRESET))
        options, options_problem = _options(preset, train, config["model"])
        families = tuple(map(str, config["families"]))
        selection = (float(train.get("min_delta", TrainConfig().min_delta)), float(train.get("probe_p_value", TrainConfig().probe_p_value)), train.get("keep") == "latest")
    except ConfigError as err:
        return RunRow(name=name, path=str(folder), problem=str(err))
    except (TypeError, ValueError, AttributeError) as err:  # keys of the wrong type: written by hand or by something else
        return RunRow(name=name, path=str(folder), problem=f"{folder / 'config.json'}: not an msgvip run config ({type(err).__name__}: {err})")
    epochs, best_epoch, val, val_problem = _best_val(folder, *selection)
    probe = config.get("probe") if isinstance(config.get("probe"), dict) else {}
    if isinstance(probe.get("val"), dict) and isinstance(probe["val"].get("rank@1"), (int, float)):
        val["probe_val_rank@1"] = float(probe["val"]["rank@1"])
    test, intervals, test_clips, test_problem = _test_metrics(folder)
    return RunRow(
        name=name, path=str(folder), preset=preset, options=options, seed=train.get("seed"),
        fingerprint=str(config["fingerprint"]), dataset=config.get("dataset"), families=families,
        epochs_run=epochs, best_epoch=best_epoch, metrics={**val, **test}, intervals=intervals, test_clips=test_clips,
        problem="; ".join(p for p in (options_problem, val_problem, test_problem, _store_problem(config)) if p) or None,
    )  # fmt: skip


def _store_problem(config: dict) -> str | None:
    """Why the store a run trained on cannot be used, where that is known without a network
    call: its local cache root no longer holds it."""
    try:
        root = cache_root(config.get("cache_root"))
    except (StorageError, StoreError, ValueError, OSError):
        return None
    if root.local_path is None or (root.local_path / str(config["fingerprint"]) / META_FILE).is_file():
        return None
    return store_gone(config, root.url)


def _options(preset_name: str, train: dict, model: Any) -> tuple[dict[str, Any], str | None]:
    """(options differing from the preset's defaults, problem)."""
    train_defaults = asdict(TrainConfig())
    try:
        preset = preset_named(preset_name)
    except ValueError as err:
        return _differing("train", train, train_defaults, IGNORED_TRAIN), f"{err}: its model options are not shown"
    train_defaults.update(preset.train_defaults)
    model_defaults = preset.config().to_dict()
    model = preset.complete_record(model) if isinstance(model, dict) else {}  # an old run: what it trained with
    return {**_differing("train", train, train_defaults, IGNORED_TRAIN), **_differing("model", model, model_defaults, IGNORED_MODEL)}, None


def _differing(section: str, values: dict, defaults: dict, ignored: frozenset[str]) -> dict[str, Any]:
    # a key the defaults lack comes from another msgvip version: shown, since it may matter
    return {f"{section}.{k}": v for k, v in values.items() if k not in ignored and (k not in defaults or defaults[k] != v)}


def _best_val(folder: Path, min_delta: float, probe_p_value: float, latest: bool) -> tuple[int, int | None, dict[str, float], str | None]:
    """(epochs trained, kept epoch, its ``val_*`` metrics, problem) from metrics.csv, the kept epoch
    chosen by the trainer's own rule (``best_epoch``; 0: the probe, before training), or the last
    one in a run that kept only its ``latest`` checkpoint."""
    path = folder / "metrics.csv"
    if not path.exists():
        return 0, None, {}, f"{path}: missing (no epoch finished)"
    try:
        history = read_metrics(folder)
        best_row = (history[-1] if history else None) if latest else best_epoch(history, min_delta, probe_p_value)
        trained = sum(int(row["epoch"]) > 0 for row in history)
    except (OSError, UnicodeDecodeError, csv.Error, KeyError, TypeError, ValueError) as err:
        return 0, None, {}, f"{path}: unreadable ({type(err).__name__}: {err}); the run directory is damaged"
    if best_row is None:
        return trained, None, {}, None
    val = {k: float(v) for k, v in best_row.items() if k.startswith("val_")}
    return trained, int(best_row["epoch"]), val, None


def _test_metrics(folder: Path) -> tuple[dict[str, float], dict[str, list[float]], int | None, str | None]:
    """(``test_*`` metrics, their intervals, clips, problem) from evaluate-test.json, if any."""
    path = folder / EVALUATE_FILE
    if not path.exists():
        return {}, {}, None, None
    try:
        record = json.loads(read_regular_text(path, within=folder))
        model = record["model"]
        metrics, intervals = {}, {}
        for prefix, scored in (("test_", model), ("probe_test_", record.get("probe") or {})):
            metrics.update({f"{prefix}{k}": float(v) for k, v in scored.items() if k in HEADLINE_METRICS and v is not None})  # null: no labeled clip
            intervals.update({f"{prefix}{k}": [float(lo), float(hi)] for k, (lo, hi) in (scored.get("intervals") or {}).items() if lo is not None and hi is not None})
        return metrics, intervals, int(record.get("clips", model["n"])), None
    except (OSError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
        return {}, {}, None, f"{path}: unreadable ({type(err).__name__}: {err}); rerun `msgvip evaluate {folder}`"


def group_by_seed(rows: Sequence[RunRow]) -> list[SeedGroup]:
    """Groups of two or more runs that differ only by seed (same preset, options, store,
    dataset and families), in the order of their first run in ``rows``; runs whose config is
    damaged are in no group."""
    groups: dict[str, list[RunRow]] = {}
    for row in rows:
        if row.fingerprint and row.metrics:
            key = json.dumps([row.preset, row.options, row.fingerprint, row.dataset, row.families], sort_keys=True, default=str)
            groups.setdefault(key, []).append(row)
    out = []
    for members in groups.values():
        if len(members) < 2:
            continue
        shared = [name for name in members[0].metrics if all(name in m.metrics for m in members)]
        values = {name: np.array([m.metrics[name] for m in members]) for name in shared}  # (runs,) each
        first = members[0]
        out.append(SeedGroup(
            preset=first.preset, options=first.options, fingerprint=first.fingerprint, dataset=first.dataset,
            runs=tuple(m.name for m in members), seeds=tuple(m.seed for m in members),
            mean={k: float(v.mean()) for k, v in values.items()}, std={k: float(v.std(ddof=1)) for k, v in values.items()},
        ))  # fmt: skip
    return out


def sort_runs(rows: Sequence[RunRow], metric: str) -> list[RunRow]:
    """``rows`` best first by ``metric`` (a ``val_*`` or ``test_*`` name; lowest first for a
    ``*_loss``); runs without it come last, in their order."""
    if rows and not any(metric in r.metrics for r in rows):
        known = sorted({k for r in rows for k in r.metrics})
        raise ConfigError(f"--sort {metric}: no run has that metric; choose from {known}")
    sign = 1.0 if metric.endswith("_loss") else -1.0
    return sorted(rows, key=lambda r: (metric not in r.metrics, sign * r.metrics.get(metric, 0.0)))


def shared_options(rows: Sequence[RunRow]) -> dict[str, Any]:
    """The options all of two or more readable runs share (a sweep's base settings): stated once
    above the table, whose OPTIONS column then shows what sets each run apart."""
    readable = [r for r in rows if r.fingerprint]
    if len(readable) < 2:
        return {}
    return {k: v for k, v in readable[0].options.items() if all(k in r.options and r.options[k] == v for r in readable)}


def shared_options_str(rows: Sequence[RunRow]) -> str:
    return _options_str(shared_options(rows))


def _metric_headers(metrics: Sequence[str]) -> list[str]:
    """``probe_val_rank@1`` -> ``PROBE VAL``: a table's headers are as narrow as its values."""
    return [m.upper().replace("_RANK@1", " R@1").replace("_", " ").replace(" R@1", "") if m.startswith("probe_") else m.upper().replace("_RANK@", " R@").replace("_", " ")
            for m in metrics]  # fmt: skip


def runs_table(rows: Sequence[RunRow], wide: bool = False) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of ``msgvip runs ls``: OPTIONS without the :func:`shared_options`, the
    headline metrics (test Rank@1 with its 95% interval), every metric of :data:`TABLE_METRICS`
    with ``wide``. Problems are not a column: see :func:`problems`."""
    shared = shared_options(rows)
    metrics = TABLE_METRICS if wide else NARROW_METRICS
    headers = ["RUN", "PRESET", "OPTIONS", "SEED", "STORE", "EPOCHS", *_metric_headers(metrics), "OK"]
    cells = [
        [r.name, r.preset or "-", _options_str({k: v for k, v in r.options.items() if k not in shared}) or "-", "-" if r.seed is None else str(r.seed),
         r.fingerprint[:8] or "-", r.epochs_str, *(r.metric_str(m) for m in metrics), "no" if r.problem else "yes"]
        for r in rows
    ]  # fmt: skip
    return headers, cells


def problems(rows: Sequence[RunRow]) -> list[str]:
    """One line per run with a problem: its name and what is wrong."""
    return [f"{r.name}: {r.problem}" for r in rows if r.problem]


def groups_table(groups: Sequence[SeedGroup], shared: dict[str, Any] | None = None, wide: bool = False) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of the seed groups: mean ± std over seeds; OPTIONS without ``shared``
    (the :func:`shared_options` of the listing)."""
    shared = shared or {}
    metrics = TABLE_METRICS if wide else NARROW_METRICS
    headers = ["PRESET", "OPTIONS", "STORE", "RUNS", "SEEDS", *_metric_headers(metrics)]
    cells = [
        [g.preset, _options_str({k: v for k, v in g.options.items() if k not in shared}) or "-", g.fingerprint[:8], str(len(g.runs)),
         ",".join(map(str, g.seeds)), *(g.metric_str(m) for m in metrics)]
        for g in groups
    ]  # fmt: skip
    return headers, cells


def runs_json(rows: Sequence[RunRow], groups: Sequence[SeedGroup]) -> dict[str, list[dict]]:
    """``{"runs": [...], "groups": [...]}`` with raw values (``[]`` when there are none)."""
    return {"runs": [r.to_json() for r in rows], "groups": [g.to_json() for g in groups]}


# ---------------------------------------------------------------------------------------- compare
def compare_runs(
    run_a: Path, run_b: Path, store: FeatureStore, split: str = "test", dataset: str | None = None, device: str = "cpu",
    store_b: FeatureStore | None = None, resamples: int = 10000, seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Both runs' metrics on the same clips of one split, and a paired bootstrap of B against A.

    Args:
        run_a, run_b: run directories; ``diff`` is B - A (positive: B is better).
        store: the store run A is scored from (and run B, unless ``store_b``).
        split: split of the dataset (default ``"test"``).
        dataset: dataset snapshot for both runs (default: the one each run was trained on).
        device: where to score (default ``"cpu"``).
        store_b: run B's store when it was trained on other features of the same clips.
        resamples, seed: of the paired bootstrap (defaults 10000, 0).

    Returns:
        ``{"run_a", "run_b", "split", "dataset", "clips", "fingerprint_a", "fingerprint_b", "a",
        "b", "paired"}``: ``a`` / ``b`` are :func:`~msgvip.ranker.metrics.ranking_metrics` of each
        run, ``paired`` the :func:`~msgvip.ranker.metrics.paired_bootstrap` record.

    Raises:
        ConfigError: the runs are scored on different clips, or their labels differ.
    """
    store_b = store_b or store
    a = scored_split(Path(run_a), store, split, None, device, dataset or run_config(run_a).get("dataset"))
    b = scored_split(Path(run_b), store_b, split, None, device, dataset or run_config(run_b).get("dataset"))
    (data_a, scores_a), (data_b, scores_b) = (a.data, a.scores), (b.data, b.scores)
    order = _same_clips(run_a, run_b, split, data_a.entries, data_b.entries)  # b's index of each of a's clips
    targets_a, targets_b = data_a.targets.numpy(), data_b.targets.numpy()[order]
    relabeled = np.flatnonzero(targets_a != targets_b)
    if relabeled.size:
        key = data_a.entries[relabeled[0]].key
        raise ConfigError(f"{run_a} and {run_b}: the labels of {relabeled.size} clips of split {split!r} differ (e.g. {key}: target {targets_a[relabeled[0]]} vs {targets_b[relabeled[0]]}); compare on one labeled dataset")
    valid_a, valid_b = data_a.valid_slots().numpy(), data_b.valid_slots().numpy()[order]
    return {
        "run_a": str(run_a), "run_b": str(run_b), "split": split, "dataset": data_a.snapshot.name, "clips": len(data_a),
        "fingerprint_a": store.fingerprint, "fingerprint_b": store_b.fingerprint,
        **_paired(scores_a, scores_b[order], targets_a, valid_a, valid_b, resamples, seed),
    }  # fmt: skip


def compare_with_probe(run: Path, store: FeatureStore, split: str = "test", dataset: str | None = None, device: str = "cpu",
                       resamples: int = 10000, seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """A run's model (B) against its own probe baseline (A) on the same clips of one split: the
    record of :func:`compare_runs`, with ``run_a`` naming the probe. Raises ConfigError for a run
    without a probe (trained with --no-probe, or before runs fitted one)."""
    if not (Path(run) / PROBE_FILE).exists():
        raise ConfigError(f"{run}: has no probe baseline ({PROBE_FILE}); it was trained with --no-probe or by an older msgvip: retrain it to compare")
    scored = scored_split(Path(run), store, split, None, device, dataset or run_config(run).get("dataset"), with_probe=True)
    data, valid = scored.data, scored.data.valid_slots().numpy()
    return {
        "run_a": f"probe of {run} ({scored.probe.about})", "run_b": str(run), "split": split, "dataset": data.snapshot.name, "clips": len(data),
        "fingerprint_a": store.fingerprint, "fingerprint_b": store.fingerprint,
        **_paired(scored.probe_scores, scored.scores, data.targets.numpy(), valid, valid, resamples, seed),
    }  # fmt: skip


def _paired(scores_a, scores_b, targets, valid_a, valid_b, resamples: int, seed: int) -> dict[str, Any]:
    """``a`` and ``b`` metrics of two scorings of the same clips (C, N), and their paired bootstrap."""
    ranks_a, ranks_b = rank_of_target(scores_a, targets, valid_a), rank_of_target(scores_b, targets, valid_b)  # (C,) each
    return {"a": ranking_metrics(scores_a, targets, valid_a), "b": ranking_metrics(scores_b, targets, valid_b),
            "paired": paired_bootstrap(ranks_a, ranks_b, resamples, seed)}  # fmt: skip


def _same_clips(run_a: Path, run_b: Path, split: str, entries_a: Sequence, entries_b: Sequence) -> np.ndarray:
    """(C,) index into ``entries_b`` of each clip of ``entries_a``, matched by key and content;
    a one-line error naming both runs when the two sets of clips differ."""
    index_b = {(e.key, e.content_hash): i for i, e in enumerate(entries_b)}
    keys_a = [(e.key, e.content_hash) for e in entries_a]
    only_a = [k for k in keys_a if k not in index_b]
    only_b = sorted(set(index_b) - set(keys_a))
    if only_a or only_b:
        example = f"e.g. {only_a[0][0]} only in {run_a}" if only_a else f"e.g. {only_b[0][0]} only in {run_b}"
        raise ConfigError(
            f"{run_a} and {run_b} are not scored on the same clips of split {split!r}: {len(only_a)} only in {run_a}, "
            f"{len(only_b)} only in {run_b} ({example}); pass --dataset to compare both on one dataset"
        )
    return np.array([index_b[k] for k in keys_a], dtype=np.int64)


def comparison_table(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of ``msgvip compare``: each paired metric for A and B, B - A, its 95% interval."""
    headers = ["METRIC", "A", "B", "B - A", "95% INTERVAL", "DIFFERENT"]
    cells = [
        [name, metric_str(m["a"]), metric_str(m["b"]), f"{m['diff']:+.3f}" if math.isfinite(m["diff"]) else "-",
         interval_str(m["interval"]), "yes" if m["excludes_zero"] else "no"]
        for name, m in ((n, result["paired"]["metrics"][n]) for n in PAIRED_METRICS)
    ]  # fmt: skip
    return headers, cells


def comparison_summary_str(result: dict[str, Any]) -> str:
    """One line: on how many clips B ranks the target higher, lower, or the same as A."""
    p = result["paired"]
    return (
        f"{p['n']} labeled clips of split '{result['split']}' of dataset '{result['dataset']}': B ranks the target higher on "
        f"{p['b_better']}, lower on {p['a_better']}, the same on {p['same']}; A = {result['run_a']}, B = {result['run_b']}"
    )
