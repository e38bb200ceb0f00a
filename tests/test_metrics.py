"""Ranking metrics and baselines on hand-made clips whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from msgvip.ranker.metrics import (
    largest_box_scores,
    most_central_scores,
    rank_of_target,
    ranking_metrics,
)

NEG = -np.inf


def test_rank_of_target_basic_and_invalid_slots():
    scores = np.array([
        [0.1, 0.9, 0.5, 7.0],  # slot 3 invalid with the top score: target 1 is still first
        [0.3, 0.2, 0.1, 0.0],  # target 2: two valid persons above it
        [5.0, 1.0, 2.0, 3.0],  # target 1 last among 4
    ])
    valid = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]], dtype=bool)
    target = np.array([1, 2, 1])
    assert rank_of_target(scores, target, valid).tolist() == [1, 3, 4]


def test_ties_are_pessimistic_and_nan_is_last():
    scores = np.array([[1.0, 1.0, 1.0], [2.0, 2.0, 0.0], [np.nan, 0.0, -5.0], [1.0, np.nan, 0.0]])
    valid = np.ones((4, 3), dtype=bool)
    target = np.array([0, 1, 0, 0])
    # constant scores: last; a tie with one other: 2; NaN target: last; NaN other: below target
    assert rank_of_target(scores, target, valid).tolist() == [3, 2, 3, 1]


def test_unlabeled_clips_get_rank_zero_and_are_excluded():
    scores = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    valid = np.ones((3, 2), dtype=bool)
    target = np.array([1, -1, 0])
    assert rank_of_target(scores, target, valid).tolist() == [1, 0, 2]
    m = ranking_metrics(scores, target, valid)
    assert m["n"] == 2 and m["n_unlabeled"] == 1
    assert m["rank@1"] == 0.5


def test_ranking_metrics_values():
    # ranks 1, 2, 3, 4 in clips with 4 valid persons each, plus a 2-person clip at rank 2
    scores = np.array([
        [4.0, 3.0, 2.0, 1.0, 9.0],
        [4.0, 3.0, 2.0, 1.0, 9.0],
        [4.0, 3.0, 2.0, 1.0, 9.0],
        [4.0, 3.0, 2.0, 1.0, 9.0],
        [1.0, 2.0, 0.0, 0.0, 0.0],
    ])
    valid = np.array([[1, 1, 1, 1, 0]] * 4 + [[1, 1, 0, 0, 0]], dtype=bool)
    target = np.array([0, 1, 2, 3, 0])
    ranks = np.array([1, 2, 3, 4, 2])
    m = ranking_metrics(scores, target, valid)
    assert m["n"] == 5
    assert m["rank@1"] == pytest.approx(1 / 5)
    assert m["rank@2"] == pytest.approx(3 / 5)
    assert m["rank@3"] == pytest.approx(4 / 5)
    assert m["mrr"] == pytest.approx(np.mean(1 / ranks))
    ap = [1.0, 1 / 4, 1 / 6, 1 / 8, 1 / 4]  # 1 if first, else 1 / (2 r)
    assert m["map"] == pytest.approx(np.mean(ap))
    by = m["by_persons"]
    assert by["2"]["n"] == 1 and by["2"]["rank@1"] == 0.0 and by["2"]["map"] == pytest.approx(0.25)
    assert by["3-4"]["n"] == 4 and by["3-4"]["mrr"] == pytest.approx(np.mean(1 / ranks[:4]))
    assert by["1"]["n"] == 0 and math.isnan(by["1"]["mrr"])
    assert by["5-8"]["n"] == 0 and by["9+"]["n"] == 0


def test_perfect_scores_and_torch_inputs():
    scores = torch.tensor([[0.0, 5.0, float("-inf")], [1.0, 0.0, float("-inf")]], dtype=torch.float16)
    valid = torch.tensor([[True, True, False], [True, True, False]])
    m = ranking_metrics(scores, torch.tensor([1, 0]), valid)
    assert m["rank@1"] == m["mrr"] == m["map"] == 1.0


def test_no_labeled_clip_gives_nan():
    m = ranking_metrics(np.zeros((2, 3)), np.array([-1, -1]), np.ones((2, 3), dtype=bool))
    assert m["n"] == 0 and m["n_unlabeled"] == 2 and math.isnan(m["rank@1"])


def test_target_on_invalid_slot_raises():
    with pytest.raises(ValueError, match="not a valid person in clips \\[1\\]"):
        rank_of_target(np.zeros((2, 2)), np.array([0, 1]), np.array([[1, 1], [1, 0]], dtype=bool))


def test_baselines():
    mask = np.zeros((1, 3, 4), dtype=bool)
    mask[0, :, 0] = True  # slot 0 in all 3 frames
    mask[0, :2, 1] = True  # slot 1 in frames 0-1
    mask[0, 2, 2] = True  # slot 2 in frame 2 only; slot 3 never
    area = np.full((1, 3, 4), 1e9)  # garbage where absent
    area[0, :, 0] = [0.1, 0.2, 0.3]
    area[0, :2, 1] = [0.4, 0.6]
    area[0, 2, 2] = 0.05
    scores = largest_box_scores(area, mask)
    np.testing.assert_allclose(scores[0, :3], [0.2, 0.5, 0.05])
    assert scores[0, 3] == NEG
    dist = np.where(mask, area, np.nan)  # NaN garbage where absent is ignored too
    central = most_central_scores(dist, mask)
    np.testing.assert_allclose(central[0, :3], [-0.2, -0.5, -0.05])
    assert central[0, 3] == NEG
    # slot 2 is the most central, slot 1 the largest
    assert rank_of_target(central, [2], mask.any(1)).tolist() == [1]
    assert rank_of_target(scores, [1], mask.any(1)).tolist() == [1]
