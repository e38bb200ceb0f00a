"""Ranking metrics over the valid persons of each clip, their bootstrap intervals, and the two
classic baselines.

Everything is vectorised numpy over clips; inputs may be numpy arrays or torch tensors (moved to
CPU). Shape letters: C clips, T frames, N person slots, M metrics, B bootstrap resamples.

Rules shared by every function here:

- only valid slots compete: an invalid slot never outranks anyone, whatever its score;
- ties are broken pessimistically: a valid person with the *same* score as the target counts as
  ranked above it (a constant scorer gets rank = number of valid persons, never a lucky rank 1);
- a NaN score of a valid person counts as ``-inf`` (so a NaN target is ranked last);
- clips with ``target < 0`` (unlabeled) are excluded from every metric and counted apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "HEADLINE_METRICS",
    "INTERVAL_LEVEL",
    "PAIRED_METRICS",
    "PERSON_COUNT_BUCKETS",
    "largest_box_scores",
    "most_central_scores",
    "paired_bootstrap",
    "rank_of_target",
    "ranking_metrics",
]

#: Buckets of the breakdown by number of valid persons in the clip: (name, min, max inclusive).
PERSON_COUNT_BUCKETS: tuple[tuple[str, int, float], ...] = (
    ("1", 1, 1),
    ("2", 2, 2),
    ("3-4", 3, 4),
    ("5-8", 5, 8),
    ("9+", 9, float("inf")),
)

#: The metrics every summary holds, in display order; each is a mean over clips of a per-clip value.
HEADLINE_METRICS: tuple[str, ...] = ("rank@1", "rank@2", "rank@3", "mrr", "map_trapezoid", "map_standard")

#: The metrics :func:`paired_bootstrap` compares: top-1 accuracy and the whole-ranking summary.
PAIRED_METRICS: tuple[str, ...] = ("rank@1", "mrr")

#: Coverage of every bootstrap interval here (percentiles 2.5 and 97.5).
INTERVAL_LEVEL = 0.95
_PERCENTILES = (50 * (1 - INTERVAL_LEVEL), 50 * (1 + INTERVAL_LEVEL))


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().cpu()
        if str(x.dtype) in ("torch.float16", "torch.bfloat16"):
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def _check(scores: np.ndarray, target: np.ndarray, valid: np.ndarray) -> None:
    if scores.ndim != 2 or valid.shape != scores.shape or target.shape != scores.shape[:1]:
        raise ValueError(
            f"expected scores (C, N), target (C,), valid (C, N); got {scores.shape}, "
            f"{target.shape}, {valid.shape}"
        )
    labeled = target >= 0
    if np.any(target[labeled] >= scores.shape[1]):
        raise ValueError(f"target slot out of range [0, {scores.shape[1]}): {target[labeled].max()}")
    rows = np.flatnonzero(labeled)
    bad = rows[~valid[rows, target[rows]]]
    if bad.size:
        raise ValueError(
            f"target slot is not a valid person in clips {bad.tolist()} "
            f"(targets {target[bad].tolist()}): fix the labels or the person mask"
        )


def rank_of_target(scores: Any, target: Any, valid: Any) -> np.ndarray:
    """1-based rank of the target among the valid persons of each clip (higher score = better).

    ``rank = 1 + #{valid j != t : s_j >= s_t}`` (ties pessimistic, NaN as ``-inf``).

    Args:
        scores: (C, N) float; values at invalid slots are ignored.
        target: (C,) int, the target slot, < 0 for an unlabeled clip.
        valid: (C, N) bool.

    Returns:
        (C,) int64 ranks, 0 for unlabeled clips.

    Example::

        >>> rank_of_target([[0.1, 0.9, 5.0], [2.0, 2.0, 0.0]], [1, 0], [[1, 1, 0], [1, 1, 1]])
        array([1, 2])
    """
    scores = _numpy(scores).astype(np.float64)
    target = _numpy(target).astype(np.int64)
    valid = _numpy(valid).astype(bool)
    _check(scores, target, valid)
    scores = np.where(np.isnan(scores), -np.inf, scores)
    labeled = target >= 0
    safe = np.where(labeled, target, 0)
    target_score = np.take_along_axis(scores, safe[:, None], 1)  # (C, 1)
    others = valid.copy()
    others[np.arange(len(safe)), safe] = False
    ranks = 1 + np.sum(others & (scores >= target_score), axis=1)
    return np.where(labeled, ranks, 0).astype(np.int64)


def _per_clip(ranks: np.ndarray) -> np.ndarray:
    """(n, M) value of each metric of :data:`HEADLINE_METRICS` in each clip, from (n,) ranks >= 1;
    a metric is the mean of its column over clips."""
    r = ranks.astype(np.float64)
    reciprocal = 1.0 / r
    trapezoid = np.where(r == 1, 1.0, 1.0 / (2.0 * r))
    return np.stack([r <= 1, r <= 2, r <= 3, reciprocal, trapezoid, reciprocal], axis=1).astype(np.float64)  # (n, M)


def _bootstrap_intervals(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """(M, 2) percentile interval of the mean of each column of ``values`` (n, M) over ``resamples``
    draws of n clips with replacement.

    The mean of a resample depends only on how often each *distinct* row is drawn, and those
    counts are multinomial(n, share of each distinct row): drawing the counts is the same
    distribution as drawing clip indices, at a cost of B x (distinct rows) instead of B x n. Per-clip
    values come from ranks, which take few values, so this stays small and fast for any n.
    """
    distinct, counts = np.unique(values, axis=0, return_counts=True)  # (K, M), (K,)
    n = len(values)
    drawn = np.random.default_rng(seed).multinomial(n, counts / n, size=resamples)  # (B, K)
    means = drawn @ distinct / n  # (B, M)
    return np.percentile(means, _PERCENTILES, axis=0).T  # (M, 2)


def _check_resamples(resamples: int, least: int) -> None:
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)) or resamples < least:
        raise ValueError(f"bootstrap resamples must be an int >= {least}, got {resamples!r}")


def _summary(ranks: np.ndarray, bootstrap: int, seed: int) -> dict[str, Any]:
    n = int(ranks.size)
    out: dict[str, Any] = {"n": n}
    if n == 0:
        nan = float("nan")
        out.update(dict.fromkeys(HEADLINE_METRICS, nan))
        if bootstrap:
            out["intervals"] = {name: [nan, nan] for name in HEADLINE_METRICS}
        return out
    values = _per_clip(ranks)  # (n, M)
    out.update(zip(HEADLINE_METRICS, values.mean(0).tolist()))
    if bootstrap:
        intervals = _bootstrap_intervals(values, bootstrap, seed)  # (M, 2)
        out["intervals"] = dict(zip(HEADLINE_METRICS, intervals.tolist()))
    return out


def ranking_metrics(
    scores: Any, target: Any, valid: Any, scenes: Sequence[str] | None = None, bootstrap: int = 1000, seed: int = 0
) -> dict[str, Any]:
    r"""Rank@k, MRR and two mAPs over the labeled clips, their 95% bootstrap intervals, and
    breakdowns by number of valid persons and by scene.

    With ``r`` the target's rank (:func:`rank_of_target`) in a clip:

    - ``rank@k`` = share of clips with ``r <= k`` (``rank@1`` is top-1 accuracy);
    - ``mrr`` = mean of ``1 / r``;
    - ``map_trapezoid`` = mean over clips of the trapezoidal average precision of the
      important-people literature. A clip's ranked list gives precision/recall points
      :math:`(R_k, P_k)` for :math:`k = 1..n`; the curve starts at :math:`(0, P_1)` and the
      area under it is taken with the trapezoid rule. With one relevant person at rank ``r``
      the points are :math:`(0, 0)` for :math:`k < r` and :math:`(1, 1/r)` at :math:`k = r`, so

      .. math:: AP = 1 \text{ if } r = 1, \qquad AP = \frac{1}{2r} \text{ if } r > 1.

      (Note the jump: rank 2 scores 0.25, not 0.5.)
    - ``map_standard`` = mean over clips of the standard non-interpolated AP (mean of the
      precision at each relevant item's rank). With one relevant person it is ``1 / r``, so it
      always **equals** ``mrr`` here; it is reported under its own name so tables that quote
      either definition of mAP can be matched.

    Intervals are percentile bootstrap intervals over clips (``bootstrap`` resamples of the
    labeled clips with replacement, numpy generator seeded with ``seed``, so the same inputs
    give the same intervals). They show how much a metric would move on another draw of clips
    of the same kind; a 0.03 gap between two runs inside intervals 0.2 wide means little (use
    :func:`paired_bootstrap` to compare two rankings of the same clips).

    Args:
        scores: (C, N) float; values at invalid slots are ignored.
        target: (C,) int, the target slot, < 0 for an unlabeled clip (excluded).
        valid: (C, N) bool, slots holding a person in at least one frame.
        scenes: (C,) str, the scene category of each clip (e.g. svip's ``"01"`` .. ``"11"``;
            ``""`` = unknown), or None (default) for no ``by_scene`` breakdown.
        bootstrap: resamples per interval (default 1000); 0 computes no intervals.
        seed: seed of the resampling (default 0).

    Returns:
        ``{"n", "n_unlabeled", "rank@1", "rank@2", "rank@3", "mrr", "map_trapezoid",
        "map_standard", "intervals", "bootstrap", "by_persons"}`` plus ``"by_scene"`` when
        ``scenes`` is given. ``intervals`` maps each metric of :data:`HEADLINE_METRICS` to
        ``[low, high]``; ``bootstrap`` is ``{"resamples", "seed", "level"}`` (both absent when
        ``bootstrap`` is 0). ``by_persons`` maps each bucket of :data:`PERSON_COUNT_BUCKETS`
        (``"1"``, ``"2"``, ``"3-4"``, ``"5-8"``, ``"9+"``) and ``by_scene`` each scene holding a
        labeled clip (sorted) to ``{"n", <each headline metric>, "intervals"}``. Metrics and
        intervals of an empty set are NaN.

    Example::

        >>> m = ranking_metrics([[3.0, 1.0], [0.0, 1.0]], [0, 0], [[True, True], [True, True]])
        >>> m["rank@1"], m["mrr"], m["map_trapezoid"], m["map_standard"]
        (0.5, 0.75, 0.625, 0.75)
        >>> m["intervals"]["rank@1"]
        [0.0, 1.0]
    """
    _check_resamples(bootstrap, 0)
    scores = _numpy(scores)
    target = _numpy(target).astype(np.int64)
    valid = _numpy(valid).astype(bool)
    ranks = rank_of_target(scores, target, valid)
    labeled = target >= 0
    num_valid = valid.sum(1)
    out: dict[str, Any] = _summary(ranks[labeled], bootstrap, seed)
    out["n_unlabeled"] = int((~labeled).sum())
    if bootstrap:
        out["bootstrap"] = {"resamples": int(bootstrap), "seed": seed, "level": INTERVAL_LEVEL}
    out["by_persons"] = {
        name: _summary(ranks[labeled & (num_valid >= lo) & (num_valid <= hi)], bootstrap, seed)
        for name, lo, hi in PERSON_COUNT_BUCKETS
    }
    if scenes is not None:
        scenes = np.asarray([str(s) for s in scenes], dtype=object)
        if scenes.shape != target.shape:
            raise ValueError(f"expected scenes (C,) = {target.shape}; got {scenes.shape}")
        out["by_scene"] = {
            scene: _summary(ranks[labeled & (scenes == scene)], bootstrap, seed)
            for scene in sorted(set(scenes[labeled].tolist()))
        }
    return out


def paired_bootstrap(ranks_a: Any, ranks_b: Any, resamples: int = 10000, seed: int = 0) -> dict[str, Any]:
    """Paired bootstrap of two rankings of the same clips: how much better B is than A.

    Each resample draws clips with replacement and takes *both* rankings on the drawn clips, so
    the clip-to-clip variation both share (easy and hard clips) cancels out; the interval is that
    of the difference, far narrower than comparing two unpaired intervals.

    Args:
        ranks_a: (C,) int, the target's rank per clip under ranking A (:func:`rank_of_target`),
            0 for an unlabeled clip (excluded).
        ranks_b: (C,) int, the same clips, in the same order, under ranking B.
        resamples: bootstrap resamples, >= 1 (default 10000).
        seed: seed of the resampling (default 0).

    Returns:
        ``{"n", "resamples", "seed", "level", "b_better", "a_better", "same", "metrics"}``:
        ``b_better`` / ``a_better`` / ``same`` count the clips where B ranks the target higher,
        lower, or the same as A; ``metrics`` maps each metric of :data:`PAIRED_METRICS` to
        ``{"a", "b", "diff", "interval", "excludes_zero"}`` with ``diff = b - a`` (positive: B is
        better, every metric here being higher-is-better), ``interval`` its ``[low, high]`` 95%
        percentile interval, and ``excludes_zero`` True when the interval lies entirely on one
        side of 0. Values of an empty set are NaN (``excludes_zero`` False).

    Example::

        >>> r = paired_bootstrap([2, 2, 1, 3], [2, 2, 1, 3])
        >>> r["metrics"]["rank@1"]["interval"], r["metrics"]["rank@1"]["excludes_zero"]
        ([0.0, 0.0], False)
    """
    _check_resamples(resamples, 1)
    ranks_a, ranks_b = _numpy(ranks_a).astype(np.int64), _numpy(ranks_b).astype(np.int64)
    if ranks_a.ndim != 1 or ranks_a.shape != ranks_b.shape:
        raise ValueError(f"expected ranks_a and ranks_b of one shape (C,); got {ranks_a.shape}, {ranks_b.shape}")
    if np.any(ranks_a < 0) or np.any(ranks_b < 0):
        raise ValueError("ranks must be >= 1, or 0 for an unlabeled clip")
    mismatch = np.flatnonzero((ranks_a > 0) != (ranks_b > 0))
    if mismatch.size:
        raise ValueError(f"clips {mismatch[:10].tolist()} are labeled in one ranking and not in the other: rank the same labeled clips")
    labeled = ranks_a > 0
    a, b = ranks_a[labeled], ranks_b[labeled]
    columns = [HEADLINE_METRICS.index(name) for name in PAIRED_METRICS]
    n = int(a.size)
    out: dict[str, Any] = {
        "n": n, "resamples": int(resamples), "seed": seed, "level": INTERVAL_LEVEL,
        "b_better": int(np.sum(b < a)), "a_better": int(np.sum(b > a)), "same": int(np.sum(b == a)),
    }  # fmt: skip
    if n == 0:
        nan = float("nan")
        out["metrics"] = {name: {"a": nan, "b": nan, "diff": nan, "interval": [nan, nan], "excludes_zero": False} for name in PAIRED_METRICS}
        return out
    values_a, values_b = _per_clip(a)[:, columns], _per_clip(b)[:, columns]  # (n, M)
    point_a, point_b = values_a.mean(0), values_b.mean(0)  # (M,)
    intervals = _bootstrap_intervals(values_b - values_a, resamples, seed)  # (M, 2)
    out["metrics"] = {
        name: {
            "a": float(point_a[i]), "b": float(point_b[i]), "diff": float(point_b[i] - point_a[i]),
            "interval": intervals[i].tolist(), "excludes_zero": bool(intervals[i, 0] > 0 or intervals[i, 1] < 0),
        }  # fmt: skip
        for i, name in enumerate(PAIRED_METRICS)
    }
    return out


def _mean_over_valid_frames(values: Any, person_mask: Any) -> tuple[np.ndarray, np.ndarray]:
    values = _numpy(values).astype(np.float64)
    mask = _numpy(person_mask).astype(bool)
    if values.shape != mask.shape or values.ndim != 3:
        raise ValueError(
            f"expected values and person_mask of one shape (C, T, N); got {values.shape}, {mask.shape}"
        )
    count = mask.sum(1)  # (C, N)
    total = np.where(mask, values, 0.0).sum(1)  # (C, N), garbage at invalid frames never added
    mean = total / np.maximum(count, 1)
    return mean, count > 0


def largest_box_scores(area: Any, person_mask: Any) -> np.ndarray:
    """Baseline "largest box": mean box area over the frames each person is in.

    Args:
        area: (C, T, N) float, box area per person-frame (any unit; values at absent
            person-frames are ignored).
        person_mask: (C, T, N) bool.

    Returns:
        (C, N) float64 scores, ``-inf`` at slots valid in no frame.
    """
    mean, valid = _mean_over_valid_frames(area, person_mask)
    return np.where(valid, mean, -np.inf)


def most_central_scores(center_dist: Any, person_mask: Any) -> np.ndarray:
    """Baseline "most central": minus the mean distance of the box centre to the frame centre.

    Args:
        center_dist: (C, T, N) float, distance per person-frame (values at absent person-frames
            are ignored).
        person_mask: (C, T, N) bool.

    Returns:
        (C, N) float64 scores, ``-inf`` at slots valid in no frame.
    """
    mean, valid = _mean_over_valid_frames(center_dist, person_mask)
    return np.where(valid, -mean, -np.inf)
