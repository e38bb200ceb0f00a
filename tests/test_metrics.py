"""Ranking metrics and baselines on hand-made clips whose answers are known."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from msgvip.ranker.metrics import (
    HEADLINE_METRICS,
    largest_box_scores,
    most_central_scores,
    paired_bootstrap,
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
    assert m["map_trapezoid"] == pytest.approx(np.mean(ap))
    assert m["map_standard"] == pytest.approx(np.mean(1 / ranks)) == m["mrr"]  # one relevant person: AP = 1 / r
    assert "map" not in m  # renamed: two definitions, each under its own name
    by = m["by_persons"]
    assert by["2"]["n"] == 1 and by["2"]["rank@1"] == 0.0 and by["2"]["map_trapezoid"] == pytest.approx(0.25)
    assert by["2"]["map_standard"] == pytest.approx(0.5)
    assert by["3-4"]["n"] == 4 and by["3-4"]["mrr"] == pytest.approx(np.mean(1 / ranks[:4]))
    assert by["1"]["n"] == 0 and math.isnan(by["1"]["mrr"])
    assert by["5-8"]["n"] == 0 and by["9+"]["n"] == 0


def test_perfect_scores_and_torch_inputs():
    scores = torch.tensor([[0.0, 5.0, float("-inf")], [1.0, 0.0, float("-inf")]], dtype=torch.float16)
    valid = torch.tensor([[True, True, False], [True, True, False]])
    m = ranking_metrics(scores, torch.tensor([1, 0]), valid)
    assert m["rank@1"] == m["mrr"] == m["map_trapezoid"] == m["map_standard"] == 1.0
    assert all(interval == [1.0, 1.0] for interval in m["intervals"].values())


def test_no_labeled_clip_gives_nan():
    m = ranking_metrics(np.zeros((2, 3)), np.array([-1, -1]), np.ones((2, 3), dtype=bool), scenes=["01", "02"])
    assert m["n"] == 0 and m["n_unlabeled"] == 2 and math.isnan(m["rank@1"])
    assert all(math.isnan(lo) and math.isnan(hi) for lo, hi in m["intervals"].values())
    assert m["by_scene"] == {}  # no labeled clip, no scene


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


def random_clips(clips: int, seed: int, persons: int = 6, skill: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, target, valid) of ``clips`` clips of 2..persons valid persons; the target's score
    gets ``skill`` added, so a larger skill ranks it first more often."""
    rng = np.random.default_rng(seed)
    valid = np.arange(persons)[None] < rng.integers(2, persons + 1, clips)[:, None]  # (C, N)
    target = rng.integers(0, valid.sum(1))  # a valid slot of each clip
    scores = rng.normal(size=(clips, persons))
    scores[np.arange(clips), target] += skill
    return scores, target, valid


def test_intervals_contain_the_estimate_and_narrow_with_more_clips():
    few = ranking_metrics(*random_clips(40, seed=1))
    many = ranking_metrics(*random_clips(2000, seed=1))
    for m in (few, many):
        assert set(m["intervals"]) == set(HEADLINE_METRICS)
        for name, (lo, hi) in m["intervals"].items():
            assert lo <= m[name] <= hi and lo < hi, name
    for name in HEADLINE_METRICS:
        few_width = np.subtract(*few["intervals"][name][::-1])
        many_width = np.subtract(*many["intervals"][name][::-1])
        # the width of a mean's interval goes as 1 / sqrt(n): 50x the clips, about 1/7 the width
        assert many_width < few_width / 3, name
    assert many["bootstrap"] == {"resamples": 1000, "seed": 0, "level": 0.95}


def test_intervals_are_deterministic_with_the_seed_and_change_without_it():
    clips = random_clips(100, seed=2)
    first, again = ranking_metrics(*clips, seed=5), ranking_metrics(*clips, seed=5)
    assert json.dumps(first) == json.dumps(again)  # as text: the NaNs of empty buckets compare equal
    assert ranking_metrics(*clips, seed=6)["intervals"] != first["intervals"]
    unbootstrapped = ranking_metrics(*clips, bootstrap=0)
    assert "intervals" not in unbootstrapped and "bootstrap" not in unbootstrapped
    assert unbootstrapped["rank@1"] == first["rank@1"]


def test_intervals_match_resampling_clip_indices():
    # the bootstrap draws multinomial counts of distinct per-clip values instead of clip indices;
    # both are the same distribution, so with many resamples their percentiles agree
    scores, target, valid = random_clips(300, seed=3)
    m = ranking_metrics(scores, target, valid, bootstrap=10000)
    ranks = rank_of_target(scores, target, valid)
    drawn = ranks[np.random.default_rng(0).integers(0, len(ranks), (10000, len(ranks)))]  # (B, C)
    for name, per_clip in [("rank@1", drawn <= 1), ("mrr", 1 / drawn), ("map_trapezoid", np.where(drawn == 1, 1, 1 / (2 * drawn)))]:
        expected = np.percentile(per_clip.mean(1), [2.5, 97.5])
        np.testing.assert_allclose(m["intervals"][name], expected, atol=0.01, err_msg=name)


def test_by_scene_breakdown():
    scores = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    valid = np.ones((5, 2), dtype=bool)
    target = np.array([0, 0, 0, -1, 0])  # ranks 1, 2, 1, unlabeled, 2
    m = ranking_metrics(scores, target, valid, scenes=["01", "01", "11", "07", ""])
    by = m["by_scene"]
    assert list(by) == ["", "01", "11"]  # sorted; "07" has only an unlabeled clip
    assert (by["01"]["n"], by["01"]["rank@1"], by["01"]["mrr"]) == (2, 0.5, 0.75)
    assert (by["11"]["n"], by["11"]["rank@1"], by["11"]["intervals"]["rank@1"]) == (1, 1.0, [1.0, 1.0])
    assert (by[""]["n"], by[""]["rank@1"]) == (1, 0.0)  # unknown scene
    assert "by_scene" not in ranking_metrics(scores, target, valid)
    with pytest.raises(ValueError, match="scenes"):
        ranking_metrics(scores, target, valid, scenes=["01"])


def test_paired_bootstrap_of_identical_rankings_is_zero():
    ranks = rank_of_target(*random_clips(200, seed=4))
    result = paired_bootstrap(ranks, ranks)
    assert result["n"] == 200 and result["same"] == 200 and result["b_better"] == result["a_better"] == 0
    for name in ("rank@1", "mrr"):
        metric = result["metrics"][name]
        assert metric["diff"] == 0.0 and metric["interval"] == [0.0, 0.0] and not metric["excludes_zero"]


def test_paired_bootstrap_finds_the_better_ranking_and_its_sign():
    scores, target, valid = random_clips(300, seed=5, skill=0.0)
    weak = rank_of_target(scores, target, valid)
    strong = rank_of_target(scores + 2.0 * (np.arange(6)[None] == target[:, None]), target, valid)
    better = paired_bootstrap(weak, strong, resamples=2000)
    for name in ("rank@1", "mrr"):
        metric = better["metrics"][name]
        assert metric["diff"] == pytest.approx(metric["b"] - metric["a"]) and metric["diff"] > 0.2
        assert 0 < metric["interval"][0] <= metric["diff"] <= metric["interval"][1] and metric["excludes_zero"]
    assert better["b_better"] > 0 and better["a_better"] == 0  # adding to the target's score never lowers it
    worse = paired_bootstrap(strong, weak, resamples=2000)["metrics"]["rank@1"]
    assert worse["interval"][1] < 0 and worse["excludes_zero"]
    # rankings that differ on every clip but win as often as they lose: no difference to find
    swapped = paired_bootstrap([1, 2] * 50, [2, 1] * 50, resamples=2000)
    assert swapped["b_better"] == swapped["a_better"] == 50
    for metric in swapped["metrics"].values():
        assert metric["diff"] == 0 and metric["interval"][0] < 0 < metric["interval"][1] and not metric["excludes_zero"]


def test_paired_bootstrap_refuses_different_clips():
    with pytest.raises(ValueError, match="labeled in one ranking and not in the other"):
        paired_bootstrap([1, 0, 2], [1, 1, 2])
    with pytest.raises(ValueError, match="one shape"):
        paired_bootstrap([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="resamples must be an int >= 1"):
        paired_bootstrap([1, 2], [1, 2], resamples=0)


def test_bootstrap_of_thousands_of_clips_is_fast():
    import time

    clips = random_clips(2000, seed=6, persons=12)
    scenes = [f"{i % 11 + 1:02d}" for i in range(2000)]
    start = time.perf_counter()
    ranking_metrics(*clips, scenes=scenes)
    ranks = rank_of_target(*clips)
    paired_bootstrap(ranks, np.maximum(ranks - 1, 1))
    # measured 0.1 s on 2 shared cores
    assert time.perf_counter() - start < 3.0
