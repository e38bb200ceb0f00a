"""Ranking metrics over the valid persons of each clip, and the two classic baselines.

Everything is vectorised numpy over clips; inputs may be numpy arrays or torch tensors (moved to
CPU). Shape letters: C clips, T frames, N person slots.

Rules shared by every function here:

- only valid slots compete: an invalid slot never outranks anyone, whatever its score;
- ties are broken pessimistically: a valid person with the *same* score as the target counts as
  ranked above it (a constant scorer gets rank = number of valid persons, never a lucky rank 1);
- a NaN score of a valid person counts as ``-inf`` (so a NaN target is ranked last);
- clips with ``target < 0`` (unlabeled) are excluded from every metric and counted apart.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "PERSON_COUNT_BUCKETS",
    "largest_box_scores",
    "most_central_scores",
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


def _summary(ranks: np.ndarray) -> dict[str, float | int]:
    n = int(ranks.size)
    if n == 0:
        nan = float("nan")
        return {"n": 0, "rank@1": nan, "rank@2": nan, "rank@3": nan, "mrr": nan, "map": nan}
    ap = np.where(ranks == 1, 1.0, 1.0 / (2.0 * ranks))
    return {
        "n": n,
        "rank@1": float(np.mean(ranks <= 1)),
        "rank@2": float(np.mean(ranks <= 2)),
        "rank@3": float(np.mean(ranks <= 3)),
        "mrr": float(np.mean(1.0 / ranks)),
        "map": float(np.mean(ap)),
    }


def ranking_metrics(scores: Any, target: Any, valid: Any) -> dict[str, Any]:
    r"""Rank@k, MRR and mAP over the labeled clips, plus a breakdown by number of valid persons.

    With ``r`` the target's rank (:func:`rank_of_target`) in a clip:

    - ``rank@k`` = share of clips with ``r <= k`` (``rank@1`` is top-1 accuracy);
    - ``mrr`` = mean of ``1 / r``;
    - ``map`` = mean over clips of the trapezoidal average precision of the important-people
      literature. A clip's ranked list gives precision/recall points
      :math:`(R_k, P_k)` for :math:`k = 1..n`; the curve starts at :math:`(0, P_1)` and the
      area under it is taken with the trapezoid rule. With one relevant person at rank ``r``
      the points are :math:`(0, 0)` for :math:`k < r` and :math:`(1, 1/r)` at :math:`k = r`, so

      .. math:: AP = 1 \text{ if } r = 1, \qquad AP = \frac{1}{2r} \text{ if } r > 1.

      (Note the jump: rank 2 scores 0.25, not 0.5; plain non-interpolated AP would be ``1/r``,
      which equals ``mrr`` here.)

    Args:
        scores: (C, N) float; values at invalid slots are ignored.
        target: (C,) int, the target slot, < 0 for an unlabeled clip (excluded).
        valid: (C, N) bool, slots holding a person in at least one frame.

    Returns:
        ``{"n", "n_unlabeled", "rank@1", "rank@2", "rank@3", "mrr", "map", "by_persons"}``, where
        ``by_persons`` maps each bucket of :data:`PERSON_COUNT_BUCKETS` (``"1"``, ``"2"``,
        ``"3-4"``, ``"5-8"``, ``"9+"``) to ``{"n", "rank@1", "rank@2", "rank@3", "mrr",
        "map"}``. Metrics of an empty set are NaN.

    Example::

        >>> m = ranking_metrics([[3.0, 1.0], [0.0, 1.0]], [0, 0], [[True, True], [True, True]])
        >>> m["rank@1"], m["mrr"], m["map"]
        (0.5, 0.75, 0.625)
    """
    scores = _numpy(scores)
    target = _numpy(target).astype(np.int64)
    valid = _numpy(valid).astype(bool)
    ranks = rank_of_target(scores, target, valid)
    labeled = target >= 0
    num_valid = valid.sum(1)
    out: dict[str, Any] = _summary(ranks[labeled])
    out["n_unlabeled"] = int((~labeled).sum())
    out["by_persons"] = {
        name: _summary(ranks[labeled & (num_valid >= lo) & (num_valid <= hi)])
        for name, lo, hi in PERSON_COUNT_BUCKETS
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
