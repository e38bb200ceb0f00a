"""The ``rgt`` preset (reference 000): rule edges, invariances, loss, diagnostics, and a run from a store."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import garbage_like, random_batch, with_garbage

from msgvip.config import ExtractConfig
from msgvip.data.synthetic import DemoDataConfig, write_demo_data
from msgvip.extract.geometry import GEOMETRY_FEATURES
from msgvip.pipelines import run_extract
from msgvip.ranker import StoreDataset, TrainConfig, build_config
from msgvip.ranker.losses import ranking_loss_terms
from msgvip.ranker.metrics import ranking_metrics
from msgvip.ranker.model import INVALID_LOGIT
from msgvip.ranker.rgt import RELATIONS, TRAIN_DEFAULTS, RelationalGraphTemporalRanker, RgtConfig
from msgvip.ranker.baselines import baseline_metrics
from msgvip.ranker.trainer import Runtime, score_dataset
from msgvip.store import FeatureStore

G = len(GEOMETRY_FEATURES)
CX, CY, H = (GEOMETRY_FEATURES.index(c) for c in ("cx", "cy", "h"))
ALL_DIMS = {"geometry": G, "pose": 17 * 3, "face": 6}
TINY = RgtConfig(hidden=32, heads=2, pool_heads=2, dropout=0.0, top_k=2)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a shared, loaded CPU the spinning
    threads made the store run 18x slower (measured 141 s with 2 threads, 7.8 s with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(config: RgtConfig = TINY, dims: dict[str, int] = ALL_DIMS) -> RelationalGraphTemporalRanker:
    torch.manual_seed(0)
    return RelationalGraphTemporalRanker(config, dims).eval()


def make_batch(B: int = 3, T: int = 8, N: int = 5, p: float = 0.7, seed: int = 1, dims: dict[str, int] = ALL_DIMS):
    """Random features with plausible geometry: centres drift, heights positive, some heads seen."""
    g = torch.Generator().manual_seed(seed)
    features, mask = random_batch(dims, B, T, N, p, g)
    start, step = torch.rand(B, 1, N, 2, generator=g), 0.03 * torch.randn(B, 1, N, 2, generator=g)
    centre = start + step * torch.arange(T).view(1, T, 1, 1)  # (B, T, N, 2) walking people
    features["geometry"][..., [CX, CY]] = centre
    features["geometry"][..., H] = 0.2 + 0.3 * torch.rand(B, T, N, generator=g)
    if "pose" in dims:
        features["pose"].view(B, T, N, 17, 3)[..., 2] = torch.rand(B, T, N, 17, generator=g)
    if "face" in dims:
        features["face"][..., -1] = (torch.rand(B, T, N, generator=g) < 0.5).float()
    return features, mask


# -- config -----------------------------------------------------------------------------------


def test_default_geometry_columns_are_the_extractors():
    assert RgtConfig().geometry_columns == GEOMETRY_FEATURES


def test_config_checks_and_round_trip():
    assert RgtConfig(**TINY.to_dict()) == TINY
    assert isinstance(TINY.to_dict()["geometry_columns"], list)
    with pytest.raises(TypeError, match="hidden"):
        RgtConfig(hidden=32.0)
    with pytest.raises(TypeError, match="bidirectional"):
        RgtConfig(bidirectional=1)
    with pytest.raises(TypeError):
        RgtConfig(hiden=32)  # unknown key
    with pytest.raises(ValueError, match="divisible"):
        RgtConfig(hidden=30, heads=4)
    with pytest.raises(ValueError, match=r"lacks \['h'\]"):
        RgtConfig(geometry_columns=("cx", "cy", "w"))
    assert build_config(TrainConfig, TRAIN_DEFAULTS, "rgt defaults") is not None


def test_model_needs_geometry_with_the_named_columns():
    with pytest.raises(ValueError, match=r"needs the 'geometry' family.*\['appearance', 'pose'\]"):
        RelationalGraphTemporalRanker(TINY, {"pose": 51, "appearance": 8})
    with pytest.raises(ValueError, match="geometry has 5 columns but RgtConfig.geometry_columns names 18"):
        RelationalGraphTemporalRanker(TINY, {"geometry": 5})
    small = RgtConfig(**{**TINY.to_dict(), "geometry_columns": ["h", "cy", "cx"]})
    assert RelationalGraphTemporalRanker(small, {"geometry": 3}).rule_columns == [2, 1, 0]


# -- forward ----------------------------------------------------------------------------------


def test_output_shape_and_invalid_slots():
    model = make_model()
    features, mask = make_batch(B=4, N=6)
    mask[:, :, 2] = False  # slot 2 never valid anywhere
    mask[3] = False  # clip 3 holds nobody
    with torch.no_grad():
        logits = model(with_garbage(features, mask), mask)
    valid = mask.any(1)
    assert logits.shape == (4, 6) and logits.dtype == torch.float32
    assert torch.isfinite(logits[valid]).all()
    assert (logits[~valid] == INVALID_LOGIT).all()
    with torch.no_grad():
        assert (model(features, torch.zeros_like(mask)) == INVALID_LOGIT).all()


def test_families_the_model_was_not_built_for_are_ignored():
    model = make_model(dims={"geometry": G})
    features, mask = make_batch()
    with torch.no_grad():
        assert torch.equal(model(features, mask), model({"geometry": features["geometry"]}, mask))


def _permute_pad(features, mask, perm, extra_slots, extra_frames):
    """Permute slots, then append padded slots and padded frames full of garbage."""
    B, T, N = mask.shape
    new_mask = torch.zeros(B, T + extra_frames, N + extra_slots, dtype=torch.bool)
    new_mask[:, :T, :N] = mask[:, :, perm]
    new_features = {}
    for name, x in features.items():
        junk = garbage_like(torch.empty(B, T + extra_frames, N + extra_slots, x.shape[-1]))
        junk[:, :T, :N] = x[:, :, perm]
        new_features[name] = junk
    return new_features, new_mask


@pytest.mark.parametrize("dims", [ALL_DIMS, {"geometry": G}], ids=["geometry+pose+face", "geometry"])
def test_permutation_and_padding_invariance(dims):
    model = make_model(dims=dims)
    features, mask = make_batch(B=3, T=9, N=5, seed=2, dims=dims)
    mask[2] = False
    mask[2, 2:6, 1] = True  # clip 2: a single person, present in 4 frames
    features = with_garbage(features, mask)
    perm = torch.tensor([3, 0, 4, 1, 2])
    features2, mask2 = _permute_pad(features, mask, perm, extra_slots=3, extra_frames=4)
    with torch.no_grad():
        a = model(features, mask)
        b = model(features2, mask2)
        graph_a, graph_b = model.build_graph(features, mask), model.build_graph(features2, mask2)
    valid = mask.any(1)
    assert (b[:, 5:] == INVALID_LOGIT).all()
    torch.testing.assert_close(b[:, :5][valid[:, perm]], a[:, perm][valid[:, perm]], atol=1e-5, rtol=0)
    assert sum(e.shape[1] for e in graph_a.edges.values()) > 0
    for r in RELATIONS:
        assert graph_a.edges[r].shape == graph_b.edges[r].shape, r  # the same graph, relabelled


def test_clip_scores_do_not_depend_on_the_rest_of_the_batch():
    model = make_model()
    features, mask = make_batch(B=3, T=6, N=5, seed=4)
    mask[0] = False
    mask[0, :, :2] = True
    with torch.no_grad():
        together = model(features, mask)
        for b in range(3):
            alone = model({k: v[b : b + 1] for k, v in features.items()}, mask[b : b + 1])
            torch.testing.assert_close(alone[0], together[b], atol=1e-5, rtol=0)


# -- rule edges -------------------------------------------------------------------------------


def _node_keys(graph):
    return list(zip(graph.node_b.tolist(), graph.node_t.tolist(), graph.node_n.tolist()))


def test_edges_stay_in_their_frame_among_valid_persons_top_k_each():
    model = make_model()
    features, mask = make_batch(B=3, T=7, N=6, p=0.8, seed=7)
    graph = model.build_graph(with_garbage(features, mask), mask)
    keys = _node_keys(graph)
    assert len(keys) == int(mask.sum()) and all(mask[k] for k in keys)  # nodes = the valid person-frames
    for r in RELATIONS:
        src, dst = graph.edges[r].tolist()
        assert len(src) == graph.scores[r].numel()
        for s, d in zip(src, dst):
            assert s != d and keys[s][:2] == keys[d][:2], (r, keys[s], keys[d])  # same clip and frame
        out_degree = np.bincount(src, minlength=len(keys))
        assert out_degree.max(initial=0) <= TINY.top_k, r  # random scores: no ties at the k-th
    assert (graph.scores["attention"] >= TINY.attention_min).all()
    assert (graph.scores["synchronization"] >= TINY.sync_min).all()


def test_spatial_edges_are_each_persons_nearest_others_in_body_heights():
    model = make_model(dims={"geometry": G})
    features, mask = make_batch(B=2, T=3, N=6, p=1.0, seed=8, dims={"geometry": G})
    graph = model.build_graph(features, mask)
    keys = _node_keys(graph)
    got = {(keys[s], keys[d]) for s, d in graph.edges["spatial"].t().tolist()}
    want = set()
    for b in range(2):
        for t in range(3):
            geo = features["geometry"][b, t]
            for i in range(6):
                dist = {j: math.dist(geo[i, [CX, CY]].tolist(), geo[j, [CX, CY]].tolist()) / ((geo[i, H] + geo[j, H]).item() / 2) for j in range(6) if j != i}
                want |= {((b, t, i), (b, t, j)) for j in sorted(dist, key=dist.get)[: TINY.top_k]}
    assert got == want


def test_ties_at_the_kth_score_are_all_kept():
    """Two others at exactly the same distance: with top_k=1 both stay, whatever their slots."""
    model = make_model(RgtConfig(**{**TINY.to_dict(), "top_k": 1}), {"geometry": G})
    geometry = torch.zeros(1, 1, 3, G)
    geometry[0, 0, :, CX] = torch.tensor([0.25, 0.5, 0.75])
    geometry[0, 0, :, CY] = 0.5
    geometry[0, 0, :, H] = 0.25
    graph = model.build_graph({"geometry": geometry}, torch.ones(1, 1, 3, dtype=torch.bool))
    edges = set(map(tuple, graph.edges["spatial"].t().tolist()))
    assert edges == {(0, 1), (1, 0), (1, 2), (2, 1)}


def _scene(T: int, centres: list[list[tuple[float, float]]]) -> dict[str, torch.Tensor]:
    """Geometry of one clip: centres[n][t] per person, boxes 0.3 high."""
    geometry = torch.zeros(1, T, len(centres), G)
    geometry[0, :, :, [CX, CY]] = torch.tensor(centres).transpose(0, 1)  # (T, N, 2)
    geometry[0, :, :, H] = 0.3
    return {"geometry": geometry}


def test_attention_from_walking_direction_and_synchronization_from_moving_together():
    T = 4
    walker = [(0.1 + 0.1 * t, 0.5) for t in range(T)]  # walks right, toward `ahead`
    ahead, behind = [(0.7, 0.5)] * T, [(0.02, 0.5)] * T  # both still
    companion = [(0.1 + 0.1 * t, 0.9) for t in range(T)]  # walks beside the walker
    features = _scene(T, [walker, ahead, behind, companion])
    model = make_model(RgtConfig(**{**TINY.to_dict(), "top_k": 3}), {"geometry": G})
    graph = model.build_graph(features, torch.ones(1, T, 4, dtype=torch.bool))
    keys = _node_keys(graph)
    attention = {(keys[s][1:], keys[d][2]) for s, d in graph.edges["attention"].t().tolist()}
    for t in range(1, T):  # from frame 1 on, the walker has moved: it faces `ahead`, not `behind`
        assert ((t, 0), 1) in attention and ((t, 0), 2) not in attention
    assert not any(src[1] in (1, 2) for src, _ in attention)  # still persons face nobody
    assert not any(src[0] == 0 for src, _ in attention)  # nobody has moved yet at frame 0
    sync = {(keys[s][1:], keys[d][2]) for s, d in graph.edges["synchronization"].t().tolist()}
    assert sync == {((t, 0), 3) for t in range(1, T)} | {((t, 3), 0) for t in range(1, T)}


def test_head_yaw_sets_the_gaze_over_walking():
    """Three still persons in a row; the middle one's head turns left (face yaw), or right (pose)."""
    features = _scene(1, [[(0.2, 0.5)], [(0.5, 0.5)], [(0.8, 0.5)]])
    mask = torch.ones(1, 1, 3, dtype=torch.bool)
    face = torch.zeros(1, 1, 3, 6)
    face[0, 0, 1, -3:] = torch.tensor([-0.9, 0.0, 1.0])  # yaw left, visible
    model = make_model(dims={"geometry": G, "face": 6})
    graph = model.build_graph({**features, "face": face}, mask)
    assert graph.edges["attention"].t().tolist() == [[1, 0]]

    pose = torch.zeros(1, 1, 3, 17, 3)
    pose[0, 0, 1, :5] = torch.tensor([[0.8, 0.2, 0.9], [0.6, 0.15, 0.9], [0.0, 0.0, 0.0], [0.4, 0.2, 0.9], [0.0, 0.0, 0.0]])  # profile, nose right
    model = make_model(dims={"geometry": G, "pose": 51})
    graph = model.build_graph({**features, "pose": pose.flatten(-2)}, mask)
    assert graph.edges["attention"].t().tolist() == [[1, 2]]


# -- loss, gradients, training, diagnostics ----------------------------------------------------


def test_loss_terms_add_the_contrastive_term_to_the_ranking_loss():
    train = TrainConfig(margin=0.5, pairwise_weight=0.7)
    features, mask = make_batch(B=4, seed=3)
    valid = mask.any(1)
    target = valid.float().argmax(1)
    model = make_model()
    with pytest.raises(RuntimeError, match="forward pass first"):
        model.loss_terms(torch.zeros(4, 5), target, valid, train)
    logits = model(features, mask)
    ranking = ranking_loss_terms(logits, target, valid, 0.5, 0.7)
    terms = model.loss_terms(logits, target, valid, train)
    assert terms.ce == ranking.ce and terms.pairwise == ranking.pairwise
    assert terms.total > ranking.total  # the contrastive term is positive
    one_label = torch.tensor([target[0].item(), -1, -1, -1])  # no other important person to pull towards
    assert model.loss_terms(logits, one_label, valid, train).total == ranking_loss_terms(logits, one_label, valid, 0.5, 0.7).total
    with pytest.raises(ValueError, match="not the person mask of the last forward"):
        model.loss_terms(logits, target, ~valid, train)


def test_gradients_flow_to_every_parameter():
    torch.manual_seed(0)
    model = RelationalGraphTemporalRanker(TINY, ALL_DIMS).train()
    features, mask = make_batch(B=4, T=6, N=5, seed=3)
    valid = mask.any(1)
    target = valid.float().argmax(1)
    terms = model.loss_terms(model(with_garbage(features, mask), mask), target, valid, TrainConfig())
    terms.total.backward()
    assert torch.isfinite(terms.total)
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_a_few_steps_reduce_the_loss_and_diagnostics_are_finite():
    torch.manual_seed(0)
    model = RelationalGraphTemporalRanker(TINY, ALL_DIMS).train()
    features, mask = make_batch(B=6, T=6, N=5, seed=5)
    valid = mask.any(1)
    target = torch.tensor([int(np.flatnonzero(v)[-1]) for v in valid])  # the last valid slot: arbitrary but learnable here
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        terms = model.loss_terms(model(features, mask), target, valid, TrainConfig())
        optimizer.zero_grad()
        terms.total.backward()
        optimizer.step()
        losses.append(terms.total.item())
    assert losses[-1] < 0.5 * losses[0], losses

    stats = model.diagnostics()
    assert stats["batches"] == 25
    for r in RELATIONS:
        for key in ("edges_per_node", "density", "isolated", "gat_entropy", "gat_self"):
            assert f"{r}_{key}" in stats
    assert all(math.isfinite(v) for v in stats.values()), stats
    assert 0 < stats["spatial_density"] <= 1 and 0 <= stats["attention_gat_self"] <= 1
    assert stats["spatial_edges_per_node"] <= TINY.top_k
    assert model.diagnostics() == {}  # reset by reading
    with torch.no_grad():
        model.eval()(features, mask)
    assert model.diagnostics() == {}  # evaluation passes are not training statistics


# -- end to end from a store --------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory) -> FeatureStore:
    root = tmp_path_factory.mktemp("rgt_demo")
    write_demo_data(root / "data", DemoDataConfig(clips=140, frames=12, persons=6, seed=3, splits=(("train", 0.7), ("val", 0.3))))
    summary = run_extract(root / "data", ExtractConfig(features=("geometry",), num_workers=0), cache_dir=root / "cache", progress=False)
    return FeatureStore.open(Path(summary.store))


def test_trained_from_a_store_it_beats_both_heuristics(demo_store):
    train_data = StoreDataset(demo_store, "train", in_memory="yes")
    val_data = StoreDataset(demo_store, "val", in_memory="yes")
    torch.manual_seed(0)
    model = RelationalGraphTemporalRanker(RgtConfig(hidden=32, dropout=0.0), train_data.feature_dims)
    train = TrainConfig()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for epoch in range(10):
        model.train()
        for batch in train_data.batches(8, shuffle=True, permute_slots=True, seed=epoch, prefetch=0):
            logits = model(batch.features, batch.person_mask)
            terms = model.loss_terms(logits, batch.target, batch.person_mask.any(1), train)
            optimizer.zero_grad()
            terms.total.backward()
            optimizer.step()
        assert all(math.isfinite(v) for v in model.diagnostics().values())
    scores = score_dataset(model, val_data, Runtime(torch.device("cpu")), 64, amp=False)
    ours = ranking_metrics(scores, val_data.targets.numpy(), val_data.valid_slots().numpy())["rank@1"]
    heuristics = {name: m["rank@1"] for name, m in baseline_metrics(val_data).items()}
    print(f"val Rank@1: rgt {ours:.3f}, {heuristics}")
    assert ours >= max(heuristics.values()) + 0.2, (ours, heuristics)
