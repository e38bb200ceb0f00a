"""Probes: how much of the task simple scorers on time-pooled per-person statistics solve.

Each person of a clip (a slot present in at least one frame) becomes one row of statistics of its
features over the frames it is present in. Simple scikit-learn scorers learn "target or not" from
the train split's persons; each scorer's hyper-parameter is chosen on the val split's clip-level
Rank@1, and the chosen one is reported on test, beside the two heuristics. A learned ranker that
does not clearly beat these probes has not yet earned its graph and its transformer.

The statistics, per feature family of D dims (every column is standardised before fitting):

- over time: mean, max, std, last minus first, mean absolute change between consecutive
  observations (5 D);
- relational: the mean minus the clip's average of its persons' means (D), which a per-person
  linear model could not form itself;
- geometry only: net displacement of the box centre, the person's rank within the clip on its
  mean area, the mean "inflow" (the others' velocity toward the person) and the mean distance to
  the others, each also minus the clip's average;
- for every family: presence fraction, first and last present frame as fractions of the clip.

Shapes: C clips, B clips of a batch, T frames, N person slots, D feature dims, V valid
person-frames, P persons (valid slots), F probe columns.

Example, on the geometry of the store `msgvip demo` builds::

    >>> report = probe_store(FeatureStore.open("demo-run/cache/df381a7c887f..."), families=["geometry"])
    >>> print(format_probe_table(report))
    probe of store df381a7c887f, dataset 'data': train 169 clips / 893 persons, val 36 clips / 177 persons, test 35 clips / 191 persons (1.0 s)
    test split metrics; hyper-parameters chosen on val Rank@1 (VAL@1)
    FEATURES  SCORER        PARAM  COLUMNS  VAL@1  CLIPS  RANK@1  RANK@2  RANK@3  MRR
    geometry  logreg        C=0.1  119      0.972  35     0.943   1.000   1.000   0.971
    geometry  linear_svm    C=0.1  119      0.944  35     0.943   1.000   1.000   0.971
    geometry  knn           k=5    119      0.861  35     0.829   0.943   0.971   0.901
    geometry  largest_box   -      -        0.278  35     0.314   0.514   0.829   0.552
    geometry  most_central  -      -        0.111  35     0.057   0.286   0.429   0.342

.. warning:: 35 test clips are few: one clip moves Rank@1 by 0.029. Compare probes and models on
   the same split, and read the val column too.
"""

from __future__ import annotations

import functools
import io
import json
import sys
import time
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

from ..config import ConfigError
from ..files import read_regular
from ..store.feature_store import FeatureStore
from .baselines import baseline_metrics
from .dataset import LabelOverrides, StoreDataset
from .metrics import ranking_metrics

__all__ = ["PROBE_SPLITS", "FittedProbe", "ProbeReport", "ProbeRow", "fit_probe", "format_probe_table", "probe_store"]

PROBE_SPLITS = ("train", "val", "test")
ALL_FAMILIES = "all"
# Hyper-parameter grids, weakest fit first: a tie on val keeps the simpler scorer.
LOGREG_C = (0.001, 0.01, 0.1, 1.0, 10.0)
SVM_C = (0.0001, 0.001, 0.01, 0.1)  # C = 1 took 3 s a fit on the demo's 771 appearance columns and never won
KNN_K = (5, 15, 45)
BATCH_BYTES = 64 << 20  # dense (B, T, N, D) batches of about this size at most are gathered at a time
# Geometry columns the geometry-only statistics need (GEOMETRY_FEATURES of the extractor).
CENTRE, VELOCITY, AREA = ("cx", "cy"), ("vx", "vy"), "area"
METRIC_KEYS = ("rank@1", "rank@2", "rank@3", "mrr")


@dataclass(frozen=True)
class ProbeRow:
    """One scorer on one feature set: its val-selected hyper-parameter and its test metrics.

    ``features`` is a family, ``"all"`` (every family together) or, for a heuristic, the family
    it reads. ``param``/``value`` name the chosen hyper-parameter (``None`` for heuristics);
    ``columns`` is the probe's input width (0 for heuristics). ``val`` and ``test`` hold
    ``n`` (labeled clips), ``rank@1``, ``rank@2``, ``rank@3`` and ``mrr``.
    """

    features: str
    scorer: str
    param: str | None
    value: float | None
    columns: int
    val: dict[str, float]
    test: dict[str, float]

    @property
    def param_str(self) -> str:
        return "-" if self.param is None else f"{self.param}={self.value:g}"


@dataclass(frozen=True)
class ProbeReport:
    """Every probe of one dataset of a store: :func:`format_probe_table` renders it, ``to_json`` gives its data."""

    fingerprint: str
    dataset: str
    clips: dict[str, int]  # split -> clips
    persons: dict[str, int]  # split -> persons (rows of the probes)
    families: tuple[str, ...]
    rows: tuple[ProbeRow, ...]
    seconds: float

    def to_json(self) -> dict:
        """Plain data (``NaN`` stays a float: render it with the CLI's json_ready)."""
        return {**asdict(self), "families": list(self.families), "rows": [asdict(r) for r in self.rows]}


# ------------------------------------------------------------------------------------ per person
@dataclass(frozen=True)
class _Persons:
    """The probe rows of one split: ``columns`` (P, F) and where each person sits."""

    columns: np.ndarray  # (P, F) float32
    clip: np.ndarray  # (P,) position of the person's clip in the split
    slot: np.ndarray  # (P,)
    blocks: dict[str, np.ndarray]  # family -> its column indices (presence columns included)


def _reduce(values: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, ...]:
    """Mean, max, std, last - first and mean |consecutive change| of runs of rows.

    values (V, D) rows grouped in runs (one per person, time-ordered) starting at ``starts``
    (P,), ``counts`` (P,) long -> five (P, D) arrays.
    """
    n = counts[:, None].astype(np.float64)  # (P, 1)
    mean = np.add.reduceat(values, starts, axis=0, dtype=np.float64) / n  # (P, D)
    deviation = values - np.repeat(mean.astype(np.float32), counts, axis=0)  # (V, D); two passes: no cancellation
    std = np.sqrt(np.add.reduceat(deviation**2, starts, axis=0, dtype=np.float64) / n)
    top = np.maximum.reduceat(values, starts, axis=0)
    ends = starts + counts - 1
    delta = values[ends] - values[starts]
    step = np.abs(np.diff(values, axis=0, prepend=values[:1]))  # (V, D): step[v] = |x_v - x_{v-1}|
    step[starts] = 0.0  # the step into a run's first row comes from the previous person
    change = np.add.reduceat(step, starts, axis=0, dtype=np.float64) / np.maximum(n - 1, 1)
    return mean, top, std, delta, change


def _minus_clip_mean(values: np.ndarray, clip_starts: np.ndarray, clip_sizes: np.ndarray) -> np.ndarray:
    """Each person's values minus the average over the persons of its clip.  (P, K) -> (P, K)."""
    average = np.add.reduceat(values, clip_starts, axis=0) / clip_sizes[:, None]  # (clips with persons, K)
    return values - np.repeat(average, clip_sizes, axis=0)


def _geometry_relations(geometry: np.ndarray, mask: np.ndarray, columns: Sequence[str]) -> np.ndarray:
    """Per slot: mean inflow (the others' centre velocity toward this person) and mean distance
    to the others, over the frames both are present.  (B, T, N, G), (B, T, N) -> (B, N, 2)."""
    centre = geometry[..., [columns.index(c) for c in CENTRE]]  # (B, T, N, 2)
    velocity = geometry[..., [columns.index(c) for c in VELOCITY]]  # (B, T, N, 2)
    towards = centre[:, :, :, None] - centre[:, :, None, :]  # (B, T, N, N, 2): from q (axis 3) to p (axis 2)
    distance = np.linalg.norm(towards, axis=-1)  # (B, T, N, N)
    inflow = (towards * velocity[:, :, None]).sum(-1) / np.maximum(distance, 1e-6)  # (B, T, N, N)
    n = mask.shape[2]
    pair = mask[:, :, :, None] & mask[:, :, None, :] & ~np.eye(n, dtype=bool)  # (B, T, N, N)
    count = np.maximum(pair.sum((1, 3)), 1)  # (B, N)
    return np.stack([np.where(pair, inflow, 0).sum((1, 3)) / count, np.where(pair, distance, 0).sum((1, 3)) / count], -1)


def _person_rows(data: StoreDataset, geometry_columns: Sequence[str] | None) -> _Persons:
    """Every person of the split's clips as one row of statistics (see the module docstring)."""
    families = data.families
    # bytes per person-frame of a dense batch: float32 features and mask, and geometry's (N, N) pairs
    frame_bytes = 4 * sum(data.feature_dims.values()) + 1 + (32 * data.persons if geometry_columns is not None else 0)
    batch_size = max(1, BATCH_BYTES // max(1, data.frames * data.persons * frame_bytes))
    parts: list[dict[str, np.ndarray]] = []
    for batch in data.batches(batch_size, prefetch=0):
        mask = batch.person_mask.numpy()  # (B, T, N)
        b, n, t = np.nonzero(mask.transpose(0, 2, 1))  # (V,) each: rows grouped by person, time-ordered
        if not len(b):
            continue  # clips without any person
        person = b * mask.shape[2] + n
        starts = np.flatnonzero(np.diff(person, prepend=-1))  # (P,)
        counts = np.diff(starts, append=len(person))  # (P,)
        pb, pn = b[starts], n[starts]  # (P,) clip in batch, slot
        length = np.array([data.records[i].frames for i in batch.index.tolist()], np.float64)[pb]  # (P,) the clip's T
        first, last = t[starts], t[starts + counts - 1]
        part = {"clip": batch.index.numpy()[pb], "slot": pn, "presence": np.stack([counts / length, first / length, (last + 1) / length], 1)}
        clip_starts = np.flatnonzero(np.diff(pb, prepend=-1))
        clip_sizes = np.diff(clip_starts, append=len(pb))
        for f in families:
            dense = batch.features[f].numpy()  # (B, T, N, D)
            rows = dense[b, t, n].astype(np.float32)  # (V, D)
            mean, top, std, delta, change = _reduce(rows, starts, counts)
            pooled = [mean]
            if f == "geometry" and geometry_columns is not None:
                centre = [geometry_columns.index(c) for c in CENTRE]
                area = np.full((mask.shape[0], mask.shape[2]), -np.inf)  # (B, N): mean area, -inf at absent slots
                area[pb, pn] = mean[:, geometry_columns.index(AREA)]
                smaller = (area[:, :, None] > area[:, None, :]).sum(2)  # (B, N): persons of the clip with a smaller box
                others = np.maximum(np.bincount(pb, minlength=len(mask)) - 1, 1)  # (B,)
                relations = _geometry_relations(dense.astype(np.float32, copy=False), mask, geometry_columns)[pb, pn]  # (P, 2)
                pooled += [np.hypot(*delta[:, centre].T)[:, None], (smaller / others[:, None])[pb, pn][:, None], relations]
            pooled = np.concatenate(pooled, 1)  # (P, D [+ 4])
            part[f] = np.concatenate([pooled, top, std, delta, change, _minus_clip_mean(pooled, clip_starts, clip_sizes)], 1)
        parts.append(part)
    if not parts:
        raise ConfigError(f"{data.store.location}: dataset {data.snapshot.name!r}: split {data.split!r} has no persons")
    stacked = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    blocks, width, presence = {}, 3, np.arange(3)
    for f in families:
        blocks[f] = np.concatenate([presence, width + np.arange(stacked[f].shape[1])])
        width += stacked[f].shape[1]
    columns = np.concatenate([stacked["presence"], *(stacked[f] for f in families)], 1).astype(np.float32)  # (P, F)
    return _Persons(columns, stacked["clip"], stacked["slot"], blocks)


# --------------------------------------------------------------------------------------- scorers
# name -> (hyper-parameter, grid, make(value) -> an unfitted classifier). All three fit
# deterministically (lbfgs; liblinear with a fixed order of its dual coordinates; exact neighbours).
SCORERS: dict[str, tuple[str, Sequence[float], Callable]] = {
    "logreg": ("C", LOGREG_C, lambda c: LogisticRegression(C=c, max_iter=2000)),
    # dual when there are more columns than persons: the primal solver took 9 s a fit on 4611 columns
    "linear_svm": ("C", SVM_C, lambda c: LinearSVC(C=c, dual="auto", max_iter=5000, random_state=0)),
    # distance-weighted, so neighbours' votes rarely tie (ranks count ties against the target)
    "knn": ("k", KNN_K, lambda k: KNeighborsClassifier(n_neighbors=int(k), weights="distance")),
}


def _score(model, x: np.ndarray) -> np.ndarray:
    """(P,) higher = more likely the target: the decision function where the scorer has one (it
    ranks like the probability), else the probability (k-NN)."""
    return model.decision_function(x) if hasattr(model, "decision_function") else model.predict_proba(x)[:, 1]


class _Split:
    """One split's persons with its clips' labels, ready to turn person scores into clip metrics."""

    def __init__(self, data: StoreDataset, persons: _Persons):
        self.persons = persons
        self.target = data.targets.numpy()  # (C,)
        self.valid = np.zeros((len(data), data.persons), bool)  # (C, N)
        self.valid[persons.clip, persons.slot] = True
        labeled = np.flatnonzero(self.target >= 0)
        slot = self.target[labeled]
        bad = labeled[(slot >= self.valid.shape[1]) | ~self.valid[labeled, np.minimum(slot, self.valid.shape[1] - 1)]]
        if bad.size:
            raise ConfigError(
                f"{data.store.location}: dataset {data.snapshot.name!r}: the target slot of clip {data.entries[bad[0]].key} "
                f"({int(self.target[bad[0]])}) holds no person in any frame (and {bad.size - 1} more clips); fix the labels"
            )
        self.is_target = self.target[persons.clip] == persons.slot  # (P,)
        self.labeled = self.target[persons.clip] >= 0  # (P,)

    def metrics(self, person_scores: np.ndarray) -> dict[str, float]:
        scores = np.full(self.valid.shape, -np.inf)
        scores[self.persons.clip, self.persons.slot] = person_scores
        return _headline(ranking_metrics(scores, self.target, self.valid))


def _headline(metrics: dict) -> dict[str, float]:
    return {"n": metrics["n"], **{k: metrics[k] for k in METRIC_KEYS}}


def _fit_and_select(name, param, grid, make, x: dict[str, np.ndarray], splits: dict[str, _Split]) -> tuple[float, dict[str, float], object]:
    """Fit one scorer per grid value on train persons; keep the best val Rank@1 (then MRR):
    (value, its val metrics, the fitted pipeline)."""
    train = splits["train"]
    fit_x, fit_y = x["train"][train.labeled], train.is_target[train.labeled]
    best = None
    if param == "k":
        grid = sorted({min(k, len(fit_x)) for k in grid})  # never more neighbours than training persons
    for value in grid:
        model = make_pipeline(StandardScaler(), make(value))
        with warnings.catch_warnings():
            # an unconverged fit is still a point of the grid: val decides whether it is any good
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(fit_x, fit_y)
        val = splits["val"].metrics(_score(model, x["val"]))
        if best is None or _beats(val, best[1]):
            best = (float(value), val, model)
    return best


def _beats(val: dict[str, float], best: dict[str, float]) -> bool:
    """Whether val metrics beat the best so far: a higher Rank@1, then MRR (a tie keeps the earlier, simpler one)."""
    return (val["rank@1"], val["mrr"]) > (best["rank@1"], best["mrr"])


def _check_train_split(train: _Split, data: StoreDataset) -> None:
    """Refuse a train split whose every labeled clip holds its target alone: nothing to tell apart."""
    if train.is_target[train.labeled].all():
        raise ConfigError(f"{data.store.location}: dataset {data.snapshot.name!r}: the train split needs a labeled clip with two or more persons for a probe")


def _feature_sets(families: Sequence[str], persons: _Persons) -> list[tuple[str, np.ndarray]]:
    """(name, column indices) of each family alone and, with several, of all of them together."""
    sets = [(f, persons.blocks[f]) for f in families]
    if len(families) > 1:
        sets.append((ALL_FAMILIES, np.arange(persons.columns.shape[1])))
    return sets


def _geometry_columns(store: FeatureStore) -> list[str] | None:
    """The stored geometry columns when they include those the geometry-only statistics need."""
    columns = store.config.get("features", {}).get("geometry", {}).get("features")
    return columns if columns is not None and {*CENTRE, *VELOCITY, AREA} <= set(columns) else None


def _sweep_suite(families: Sequence[str], persons: dict[str, _Persons], splits: dict[str, _Split], say: Callable = lambda *a: None):
    """Every scorer of :data:`SCORERS` on every feature set, each with its val-chosen value:
    (feature set, columns, scorer, param, value, val metrics, fitted pipeline) per fit.

    One BLAS thread: these are small dense problems, where extra threads cost more in sync than
    they gain, and on a busy machine spinning ones made a matrix-vector product 20x slower. (The
    limit reaches only libraries loaded already: scikit-learn is imported at the top for that.)
    """
    fits = []
    with threadpool_limits(1):
        for features, columns in _feature_sets(families, persons["train"]):
            x = {s: p.columns[:, columns] for s, p in persons.items()}
            for name, (param, grid, make) in SCORERS.items():
                value, val, model = _fit_and_select(name, param, grid, make, x, splits)
                fits.append((features, columns, name, param, value, val, model))
                say(f"probe: {features} {name} {param}={value:g}: val Rank@1 {val['rank@1']:.3f}")
    return fits


# ------------------------------------------------------------------------------------------ probe
@dataclass(frozen=True)
class FittedProbe:
    """The probe a run is measured against: the scorer and feature set of the suite with the best
    val Rank@1 (then MRR; a tie keeps the earlier, simpler one), fitted on the train split.

    It scores any split of any dataset holding ``families`` (:meth:`scores`) and is saved as plain
    arrays (:meth:`save`, loaded without pickle). A linear scorer keeps its standardisation and
    weights; k-NN keeps its standardised training persons (it has no other fit).
    """

    features: str  # a family or "all"
    scorer: str
    param: str
    value: float
    families: tuple[str, ...]  # the families its person rows are built from, in this order
    geometry_columns: tuple[str, ...] | None
    columns: np.ndarray  # (F',) indices into the person rows
    mean: np.ndarray  # (F',) standardisation
    scale: np.ndarray  # (F',)
    weights: np.ndarray  # (F',) and bias: linear scorers; empty for k-NN
    bias: float
    neighbours: np.ndarray  # (P, F') standardised training persons (k-NN); (0, F') otherwise
    is_target: np.ndarray  # (P,) bool, k-NN only
    val: dict  # its val metrics (n, rank@1, rank@2, rank@3, mrr)
    seconds: float = 0.0  # the whole suite's fit
    # A model that adds the probe's scores to its own (RankerConfig.probe_prior) reads them divided
    # by this, their spread over the training persons: one unit means the same for any scorer.
    prior_scale: float = 1.0

    @property
    def about(self) -> str:
        """E.g. ``logreg C=0.1 on geometry``."""
        return f"{self.scorer} {self.param}={self.value:g} on {self.features}"

    def record(self) -> dict:
        """What a run records of its probe (config.json)."""
        return {"features": self.features, "scorer": self.scorer, "param": self.param, "value": self.value, "families": list(self.families),
                "columns": int(len(self.columns)), "val": self.val, "seconds": self.seconds}  # fmt: skip

    def person_scores(self, x: np.ndarray) -> np.ndarray:
        """(P,) scores of person rows (P, F) built from ``families``."""
        z = (x[:, self.columns] - self.mean) / self.scale  # (P, F')
        if self.scorer != "knn":
            return z @ self.weights + self.bias
        with threadpool_limits(1):
            knn = KNeighborsClassifier(n_neighbors=int(self.value), weights="distance").fit(self.neighbours, self.is_target)
            return knn.predict_proba(z)[:, 1]  # classes_ is (False, True): training persons hold both

    def scores(self, data: StoreDataset) -> np.ndarray:
        """(C, N) scores of the clips of ``data``, -inf at slots no person fills."""
        if list(data.families) != list(self.families):
            data = data.with_families(self.families)
        persons = _person_rows(data, self.geometry_columns)
        scores = np.full((len(data), data.persons), -np.inf, dtype=np.float32)
        scores[persons.clip, persons.slot] = self.person_scores(persons.columns)
        return scores

    def prior(self, data: StoreDataset) -> np.ndarray:
        """(C, N) float32 scores of ``data`` in units of ``prior_scale``, 0 at empty slots: what a
        model with ``probe_prior`` adds to its logits."""
        return self.prior_from(self.scores(data))

    def prior_from(self, scores: np.ndarray) -> np.ndarray:
        """:meth:`prior` of scores (C, N) that :meth:`scores` gave already."""
        return np.where(np.isfinite(scores), scores / self.prior_scale, 0.0).astype(np.float32)

    def cross_fitted(self, data: StoreDataset, folds: int = 5) -> np.ndarray:
        """(C, N) scores of the clips of ``data`` (its train split) in the units of :meth:`prior`,
        each clip scored by this scorer refitted on the other ``folds - 1`` folds of clips: the
        probe's scores on clips it never saw, as on val and test. A model trained against the
        probe's own fit on these clips would learn to trust scores that are right because they
        were fitted there."""
        if list(data.families) != list(self.families):
            data = data.with_families(self.families)
        persons = _person_rows(data, self.geometry_columns)
        split = _Split(data, persons)
        fold = np.random.default_rng(0).permutation(len(data)) % folds  # (C,) each clip's fold
        person_fold = fold[persons.clip]  # (P,)
        x = persons.columns[:, self.columns]
        out = np.zeros(len(persons.columns))
        _, _, make = SCORERS[self.scorer]
        with threadpool_limits(1), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for k in range(folds):
                fit = (person_fold != k) & split.labeled
                if not (person_fold == k).any():
                    continue  # fewer clips than folds
                if not split.is_target[fit].any() or split.is_target[fit].all():
                    out[person_fold == k] = self.person_scores(persons.columns[person_fold == k])  # too few clips to refit
                    continue
                model = make_pipeline(StandardScaler(), make(min(self.value, fit.sum()) if self.scorer == "knn" else self.value))
                model.fit(x[fit], split.is_target[fit])
                out[person_fold == k] = _score(model, x[person_fold == k])
        prior = np.zeros((len(data), data.persons), np.float32)
        prior[persons.clip, persons.slot] = out / self.prior_scale
        return prior

    def save(self, path: Path) -> None:
        arrays = {k: getattr(self, k) for k in ("columns", "mean", "scale", "weights", "neighbours", "is_target")}
        meta = {**self.record(), "geometry_columns": self.geometry_columns, "bias": self.bias, "prior_scale": self.prior_scale}
        np.savez(path, meta=np.array(json.dumps(meta)), **arrays)

    @classmethod
    def load(cls, path: Path) -> FittedProbe:
        """A saved probe; a damaged file is a ConfigError naming it."""
        try:
            with np.load(io.BytesIO(read_regular(path)), allow_pickle=False) as saved:
                meta = json.loads(str(saved["meta"]))
                arrays = {k: saved[k] for k in ("columns", "mean", "scale", "weights", "neighbours", "is_target")}
            geometry = meta["geometry_columns"]
            return cls(meta["features"], meta["scorer"], meta["param"], float(meta["value"]), tuple(meta["families"]),
                       None if geometry is None else tuple(geometry), bias=float(meta["bias"]), val=meta["val"], seconds=float(meta["seconds"]),
                       prior_scale=float(meta.get("prior_scale", 1.0)), **arrays)  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as err:
            raise ConfigError(f"{path}: unreadable probe ({type(err).__name__}: {err}); retrain the run, or delete the file to go without it") from None


def _fitted(fit, families, geometry_columns, train_x: np.ndarray, train_y: np.ndarray, seconds: float) -> FittedProbe:
    """A FittedProbe from one fit of :func:`_sweep_suite`; ``train_x`` (P, F) and ``train_y`` (P,)
    are the labeled training persons it was fitted on (all columns)."""
    features, columns, name, param, value, val, model = fit
    scaler, scorer = model[0], model[-1]
    mean, scale = scaler.mean_.astype(np.float64), scaler.scale_.astype(np.float64)
    if name == "knn":  # its fit is its training persons
        weights, bias = np.zeros(0), 0.0
        neighbours, is_target = (train_x[:, columns] - mean) / scale, train_y.astype(bool)
    else:
        weights, bias = scorer.coef_[0].astype(np.float64), float(scorer.intercept_[0])
        neighbours, is_target = np.zeros((0, len(columns))), np.zeros(0, bool)
    geometry = None if geometry_columns is None else tuple(geometry_columns)
    return FittedProbe(features, name, param, value, tuple(families), geometry, np.asarray(columns, np.int64), mean, scale, weights, bias,
                       neighbours, is_target, val, seconds)  # fmt: skip


def fit_probe(train: StoreDataset, val: StoreDataset) -> FittedProbe:
    """The suite of ``msgvip probe`` on the families of ``train``, fitted on its persons and chosen
    on ``val``: the probe a model trained on the same splits must beat. Raises ConfigError when a
    split has no persons, a target slot holds no person, or no train clip has two persons."""
    start = time.perf_counter()
    geometry_columns = _geometry_columns(train.store)
    persons = {"train": _person_rows(train, geometry_columns), "val": _person_rows(val, geometry_columns)}
    splits = {"train": _Split(train, persons["train"]), "val": _Split(val, persons["val"])}
    _check_train_split(splits["train"], train)
    best = None
    for fit in _sweep_suite(train.families, persons, splits):
        if best is None or _beats(fit[5], best[5]):
            best = fit
    labeled = splits["train"].labeled
    probe = _fitted(best, train.families, geometry_columns, persons["train"].columns[labeled], splits["train"].is_target[labeled], 0.0)
    # its val metrics as it scores (not as the pipeline it came from did), so every later score of it agrees
    val_metrics = splits["val"].metrics(probe.person_scores(persons["val"].columns))
    spread = float(np.std(probe.person_scores(persons["train"].columns)))
    return replace(probe, val=val_metrics, seconds=time.perf_counter() - start, prior_scale=spread if spread > 0 else 1.0)


def probe_store(
    store: FeatureStore,
    dataset: str | None = None,
    families: Sequence[str] | None = None,
    progress: bool = False,
    labels: LabelOverrides | None = None,
) -> ProbeReport:
    """Probe the train/val/test splits of a dataset snapshot of ``store`` (``dataset``, default
    its only one) on ``families`` (default: every family it holds), each alone and all together.

    ``labels`` overrides targets and splits as for training (:func:`read_label_overrides`);
    ``progress`` prints a line per fitted scorer on stderr. Raises ConfigError when a split has no
    labeled clip, a target slot holds no person, or no train clip has two persons or more.
    """
    start = time.perf_counter()
    say = functools.partial(print, file=sys.stderr) if progress else (lambda *a, **k: None)
    snapshot = store.resolve_dataset(dataset)
    data = {s: StoreDataset(store, s, families, "yes", labels, snapshot.name) for s in PROBE_SPLITS}
    labeled = {s: int((d.targets >= 0).sum()) for s, d in data.items()}
    if not all(labeled.values()):
        raise ConfigError(
            f"{store.location}: dataset {snapshot.name!r} needs labeled clips in splits {', '.join(map(repr, PROBE_SPLITS))} for a probe; "
            f"has {snapshot.splits()} (labeled: {labeled})"
        )
    chosen = data["train"].families
    geometry_columns = _geometry_columns(store)
    persons = {s: _person_rows(d, geometry_columns) for s, d in data.items()}
    splits = {s: _Split(data[s], persons[s]) for s in PROBE_SPLITS}
    _check_train_split(splits["train"], data["train"])
    say(f"probe: {persons['train'].columns.shape[0]} train persons, {len(data['val'])} val and {len(data['test'])} test clips")

    rows = [
        ProbeRow(features, name, param, value, len(columns), val, splits["test"].metrics(_score(model, persons["test"].columns[:, columns])))
        for features, columns, name, param, value, val, model in _sweep_suite(chosen, persons, splits, say)
    ]
    baselines = {s: baseline_metrics(data[s]) for s in ("val", "test")} if "geometry" in chosen else {"test": {}}
    for name in baselines["test"]:
        rows.append(ProbeRow("geometry", name, None, None, 0, _headline(baselines["val"][name]), _headline(baselines["test"][name])))
    return ProbeReport(
        fingerprint=store.fingerprint,
        dataset=snapshot.name,
        clips={s: len(d) for s, d in data.items()},
        persons={s: int(p.columns.shape[0]) for s, p in persons.items()},
        families=tuple(chosen),
        rows=tuple(rows),
        seconds=time.perf_counter() - start,
    )


def format_probe_table(report: ProbeReport) -> str:
    """The report as a text table: one line per scorer and feature set, test metrics, val Rank@1."""
    head = (
        f"probe of store {report.fingerprint[:12]}, dataset '{report.dataset}': "
        + ", ".join(f"{s} {report.clips[s]} clips / {report.persons[s]} persons" for s in PROBE_SPLITS)
        + f" ({report.seconds:.1f} s)"
    )
    cells = [["FEATURES", "SCORER", "PARAM", "COLUMNS", "VAL@1", "CLIPS", "RANK@1", "RANK@2", "RANK@3", "MRR"]]
    for r in report.rows:
        cells.append([r.features, r.scorer, r.param_str, str(r.columns or "-"), f"{r.val['rank@1']:.3f}", str(r.test["n"]),
                      *(f"{r.test[k]:.3f}" for k in METRIC_KEYS)])  # fmt: skip
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join([head, "test split metrics; hyper-parameters chosen on val Rank@1 (VAL@1)", *lines])
