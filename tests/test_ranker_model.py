"""ImportanceRanker and ranking_loss on tiny inputs: shapes, masking, invariances, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import garbage_like, random_batch, with_garbage

from msgvip.ranker.losses import ranking_loss, ranking_loss_terms
from msgvip.ranker.model import INVALID_LOGIT, ImportanceRanker, RankerConfig, frame_graph_edges

DIMS = {"appearance": 12, "geometry": 5}
TINY = RankerConfig(hidden=32, temporal_heads=4, ff_mult=2, max_frames=64, dropout=0.0)


def make_model(config: RankerConfig = TINY, dims: dict[str, int] = DIMS) -> ImportanceRanker:
    torch.manual_seed(0)
    return ImportanceRanker(config, dims).eval()


def make_batch(B: int = 3, T: int = 6, N: int = 5, p: float = 0.6, seed: int = 1):
    return random_batch(DIMS, B, T, N, p, torch.Generator().manual_seed(seed))


def test_output_shape_and_dtype():
    model = make_model()
    features, mask = make_batch()
    features["appearance"] = features["appearance"].half()  # float16 inputs are cast
    with torch.no_grad():
        logits = model(features, mask)
    assert logits.shape == (3, 5)
    assert logits.dtype == torch.float32
    valid = mask.any(1)
    assert torch.isfinite(logits[valid]).all()


def test_invalid_slots_never_win():
    model = make_model()
    features, mask = make_batch(B=4, N=6)
    mask[:, :, 2] = False  # slot 2 never valid anywhere
    mask[1, :, 4] = False
    features["geometry"][:, :, 2] = 1e4  # would dominate if read
    with torch.no_grad():
        logits = model(features, mask)
    valid = mask.any(1)
    assert (logits[~valid] == INVALID_LOGIT).all()
    assert valid.gather(1, logits.argmax(1, keepdim=True)).all()


def _permute_pad(features, mask, perm, extra_slots, extra_frames, seed=5):
    """Permute slots, then append padded slots and padded frames full of garbage."""
    B, T, N = mask.shape
    g = torch.Generator().manual_seed(seed)
    new_mask = torch.zeros(B, T + extra_frames, N + extra_slots, dtype=torch.bool)
    new_mask[:, :T, :N] = mask[:, :, perm]
    new_features = {}
    for name, x in features.items():
        junk = garbage_like(torch.empty(B, T + extra_frames, N + extra_slots, x.shape[-1]))
        junk[:, :T, :N] = torch.where(
            mask[:, :, perm, None], x[:, :, perm], torch.randn(x[:, :, perm].shape, generator=g) * 1e3
        )
        new_features[name] = junk
    return new_features, new_mask


@pytest.mark.parametrize("config", [TINY, RankerConfig(**{**TINY.to_dict(), "fusion": "concat",
                                                          "event_token": False, "dual_head": False,
                                                          "input_norm": "layer", "scene_layers": 0})])
def test_permutation_and_padding_invariance(config):
    model = make_model(config)
    features, mask = make_batch(B=3, T=7, N=5, seed=2)
    mask[2] = False
    mask[2, :3, 1] = True  # clip 2: a single person, present in 3 frames
    # garbage at the invalid person-frames of the original batch too
    features = with_garbage(features, mask)
    perm = torch.tensor([3, 0, 4, 1, 2])
    features2, mask2 = _permute_pad(features, mask, perm, extra_slots=3, extra_frames=4)
    with torch.no_grad():
        a = model(features, mask)
        b = model(features2, mask2)
    valid = mask.any(1)
    assert torch.equal(mask2.any(1)[:, :5], valid[:, perm])
    assert (b[:, 5:] == INVALID_LOGIT).all()
    torch.testing.assert_close(b[:, :5][valid[:, perm]], a[:, perm][valid[:, perm]], atol=1e-5, rtol=0)


def test_clip_scores_do_not_depend_on_the_rest_of_the_batch():
    model = make_model()
    features, mask = make_batch(B=3, T=6, N=5, seed=4)
    mask[0] = False
    mask[0, :, :2] = True  # clip 0 has 2 persons, fewer than the others
    mask[1] = True
    with torch.no_grad():
        together = model(features, mask)
        for b in range(3):
            alone = model({k: v[b:b + 1] for k, v in features.items()}, mask[b:b + 1])
            torch.testing.assert_close(alone[0], together[b], atol=1e-5, rtol=0)


def test_gradients_flow_to_every_parameter():
    torch.manual_seed(0)
    model = ImportanceRanker(TINY, DIMS).train()
    features, mask = make_batch(B=4, T=5, N=4, seed=3)
    features = with_garbage(features, mask)
    valid = mask.any(1)
    target = valid.float().argmax(1)  # first valid slot
    prior = torch.randn(mask.shape[0], mask.shape[2])  # the probe's scores
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    # the score layers start at 0 (the untrained model ranks as its probe), so the layers before
    # them see a gradient from the second step on
    for _ in range(2):
        optimizer.zero_grad()
        loss = ranking_loss(model(features, mask, prior=prior), target, valid)
        loss.backward()
        optimizer.step()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_one_or_two_person_clips_and_empty_clip():
    model = make_model()
    features, mask = make_batch(B=4, T=4, N=6)
    mask[0] = False
    mask[0, 2, 3] = True  # one person in one frame
    mask[1] = False
    mask[1, :, 0] = True
    mask[1, 1:, 5] = True  # two persons
    mask[3] = False  # no person at all
    with torch.no_grad():
        logits = model(features, mask)
    assert torch.isfinite(logits[0, 3]) and torch.isfinite(logits[1, [0, 5]]).all()
    assert (logits[3] == INVALID_LOGIT).all()
    assert torch.isinf(logits[0]).sum() == 5


def test_all_empty_batch():
    with torch.no_grad():
        logits = make_model()(make_batch()[0], torch.zeros(3, 6, 5, dtype=torch.bool))
    assert (logits == INVALID_LOGIT).all()


def test_t_and_n_change_between_calls():
    model = make_model()
    for T, N in [(3, 2), (9, 7), (1, 1), (64, 4)]:
        features, mask = make_batch(B=2, T=T, N=N, seed=T)
        with torch.no_grad():
            assert model(features, mask).shape == (2, N)
    features, mask = make_batch(B=1, T=65, N=2)
    with pytest.raises(ValueError, match="65 frames, max_frames is only 64"):
        model(features, mask)


def test_input_validation_and_config_checks():
    model = make_model()
    features, mask = make_batch()
    with pytest.raises(KeyError, match="geometry"):
        model({"appearance": features["appearance"]}, mask)
    with pytest.raises(ValueError, match="appearance"):
        model({**features, "appearance": features["appearance"][..., :3]}, mask)
    with pytest.raises(ValueError, match="divisible"):
        RankerConfig(hidden=30, gat_heads=4)
    with pytest.raises(TypeError, match="hidden"):
        RankerConfig(hidden=32.0)
    with pytest.raises(TypeError):
        RankerConfig(hiden=32)  # unknown key
    assert RankerConfig(**TINY.to_dict()) == TINY


def test_frame_graph_edges_blocks():
    edges = frame_graph_edges(torch.tensor([0, 0, 2, 2, 2]), 4)
    pairs = set(map(tuple, edges.t().tolist()))
    assert pairs == {(i, j) for i in (0, 1) for j in (0, 1)} | {(i, j) for i in (2, 3, 4) for j in (2, 3, 4)}
    assert edges.shape == (2, 13)


# -- ranking_loss -------------------------------------------------------------------------


def test_loss_ignores_invalid_slots_values_and_gradients():
    torch.manual_seed(0)
    logits = torch.randn(3, 5)
    valid = torch.tensor([[1, 1, 0, 1, 0], [0, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    target = torch.tensor([3, 1, 0])
    a = logits.clone().requires_grad_()
    loss_a = ranking_loss(a, target, valid, margin=0.5, pairwise_weight=0.7)
    loss_a.backward()
    b = torch.where(valid, logits, garbage_like(logits)).requires_grad_()
    loss_b = ranking_loss(b, target, valid, margin=0.5, pairwise_weight=0.7)
    loss_b.backward()
    assert torch.equal(loss_a, loss_b)
    assert torch.equal(a.grad, b.grad)
    assert (b.grad[~valid] == 0).all()


def test_loss_values_by_hand():
    logits = torch.tensor([[2.0, 0.0, 9.0], [0.0, 1.5, -1.0]])
    valid = torch.tensor([[True, True, False], [True, True, True]])
    target = torch.tensor([0, 1])
    terms = ranking_loss_terms(logits, target, valid, margin=1.0, pairwise_weight=2.0)
    ce0 = math.log(1 + math.exp(-2.0))
    ce1 = -(1.5 - math.log(math.exp(0) + math.exp(1.5) + math.exp(-1)))
    pair0 = 0.0  # 2 - 0 >= margin
    pair1 = (max(0, 1 - 1.5) + max(0, 1 - 2.5)) / 2  # both beyond the margin -> 0
    assert terms.ce.item() == pytest.approx((ce0 + ce1) / 2, abs=1e-6)
    assert terms.pairwise.item() == pytest.approx((pair0 + pair1) / 2, abs=1e-6)
    low = ranking_loss_terms(torch.tensor([[0.2, 0.0, 0.5]]), torch.tensor([0]),
                             torch.tensor([[True, True, True]]), margin=1.0)
    assert low.pairwise.item() == pytest.approx(((1 - 0.2) + (1 + 0.3)) / 2, abs=1e-6)
    assert terms.total.item() == pytest.approx(terms.ce.item() + 2 * terms.pairwise.item(), abs=1e-6)


def test_loss_skips_unlabeled_clips_and_handles_none():
    logits = torch.randn(3, 4, requires_grad=True)
    valid = torch.ones(3, 4, dtype=torch.bool)
    full = ranking_loss(logits, torch.tensor([1, -1, 2]), valid)
    part = ranking_loss(logits[[0, 2]], torch.tensor([1, 2]), valid[[0, 2]])
    assert full.item() == pytest.approx(part.item(), abs=1e-6)
    none = ranking_loss(logits, torch.tensor([-1, -1, -1]), valid)
    none.backward()
    assert none.item() == 0.0 and (logits.grad == 0).all()


def test_loss_rejects_target_on_invalid_slot():
    valid = torch.tensor([[True, False]])
    with pytest.raises(ValueError, match="not a valid person in clips \\[0\\]"):
        ranking_loss(torch.zeros(1, 2), torch.tensor([1]), valid)


@pytest.mark.parametrize("someone_always_present", [True, False])
def test_packed_temporal_encoder_matches_the_padded_one(someone_always_present):
    """The temporal Transformer on packed present frames gives, at every present frame, what
    ``nn.TransformerEncoder`` gives over whole (P, T) rows with absent frames key-padded, in both
    of its code paths (eval, which PyTorch may fuse, and training), and the same gradient."""
    from msgvip.ranker.model import _packed_encoder, _PersonGrid

    encoder = make_model().temporal
    g = torch.Generator().manual_seed(3)
    P, T, H = 6, 9, TINY.hidden
    present = torch.rand(P, T, generator=g) < 0.4
    present[~present.any(1), 0] = True
    present[0] = someone_always_present  # the grid is then as long as the clip (L = T), else shorter
    present[0, 4] = True
    seq = torch.randn(P, T, H, generator=g)
    person, frame = present.nonzero(as_tuple=True)
    place = (present.cumsum(1) - 1)[person, frame]
    grid = _PersonGrid(person, place, present.sum(1))
    for training in (False, True):
        encoder.train(training)
        with torch.no_grad():
            expected = encoder(seq, src_key_padding_mask=~present)[person, frame]
            packed = _packed_encoder(encoder, seq[person, frame], grid, 0.0)
        torch.testing.assert_close(packed, expected, atol=1e-5, rtol=1e-5)
    tokens = seq[person, frame].requires_grad_()
    weight = torch.randn(len(person), H, generator=g)
    (grad,) = torch.autograd.grad((_packed_encoder(encoder, tokens, grid, 0.0) * weight).sum(), tokens)
    rows = seq.clone().requires_grad_()
    (expected_grad,) = torch.autograd.grad((encoder(rows, src_key_padding_mask=~present)[person, frame] * weight).sum(), rows)
    torch.testing.assert_close(grad, expected_grad[person, frame], atol=1e-5, rtol=1e-5)


def test_the_person_grid_is_zero_where_no_token_even_in_reused_memory():
    """The grid is allocated uninitialised; its empty cells must still read 0 (attention's
    backward reads them, and a NaN left there by earlier work would spread)."""
    from msgvip.ranker.model import _PersonGrid

    person = torch.tensor([0, 0, 1, 2, 2, 2])
    place = torch.tensor([0, 1, 0, 0, 1, 2])
    grid = _PersonGrid(person, place, torch.tensor([2, 1, 3]))
    x = torch.randn(6, 5)
    for _ in range(3):  # freed NaN blocks of the grid's size are what the allocator hands out next
        junk = torch.full((grid.P * grid.L, 5), float("nan"))
        del junk
        cells = grid.scatter(x)
        assert torch.equal(cells[grid.keep], x[torch.argsort(grid.cell)])
        assert (cells[~grid.keep] == 0).all()


def test_dense_frame_blocks_compute_gatv2conv():
    """A graph block attends over dense per-frame blocks with GATv2Conv's parameters: the same
    output and input gradient as the conv itself on the edge list of each frame's complete graph
    (frames of 1, 2, 3 and 5 persons, one frame empty)."""
    from msgvip.ranker.model import _FrameBlocks, _GraphBlock

    torch.manual_seed(0)
    block = _GraphBlock(32, 4, dropout=0.0, attention_dropout=0.0)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn_like(p))  # no zero bias or unit norm to hide a wrong mapping
    frame = torch.tensor([0, 0, 0, 1, 2, 2, 4, 4, 4, 4, 4, 5, 5])  # frame 3 holds nobody
    x = torch.randn(len(frame), 32, requires_grad=True)
    frames = _FrameBlocks(frame, 6)
    dense = torch.empty(x.shape).index_copy(0, frames.order, block(x[frames.order], frames))
    (dense_grad,) = torch.autograd.grad(dense.square().sum(), x)
    conv = block.conv(x, frame_graph_edges(frame, 6))
    expected = block.norm(x + torch.nn.functional.gelu(conv))
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), x)
    torch.testing.assert_close(dense, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dense_grad, expected_grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("chunk", [1, 40, 10_000])  # a frame at a time, a few frames, all at once
def test_pair_scores_in_chunks_match_the_formula_and_its_gradients(chunk):
    """GATv2's pair scores, formed chunk by chunk and formed again in backward, equal the
    one-expression formula, and their gradients (targets, sources and att) pass gradcheck."""
    from msgvip.ranker.model import _PairScores

    g = torch.Generator().manual_seed(0)
    dst, src = (torch.randn(5, 3, 2, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    att = torch.randn(2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    scores = _PairScores.apply(dst, src, att, 0.2, chunk)
    expected = (att * F.leaky_relu(dst.unsqueeze(2) + src.unsqueeze(1), 0.2)).sum(-1)  # (5, 3, 3, 2)
    torch.testing.assert_close(scores, expected, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda d, s, a: _PairScores.apply(d, s, a, 0.2, chunk), (dst, src, att))


def test_input_layer_norm_folded_into_the_projection_is_the_same_map():
    """A family's LayerNorm scale and shift, folded into its projection, give the output and the
    parameter gradients of LayerNorm followed by the projection."""
    model = make_model(RankerConfig(**{**TINY.to_dict(), "input_norm": "layer"}))
    norm, proj = model.input_norms["appearance"], model.input_projs["appearance"]
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.normal_()
    x = torch.randn(7, DIMS["appearance"])
    params = [norm.weight, norm.bias, proj.weight, proj.bias]
    folded = model._project("appearance", x)
    expected = proj(norm(x))
    torch.testing.assert_close(folded, expected, atol=1e-5, rtol=1e-5)
    weight = torch.randn_like(expected)
    for got, want in zip(torch.autograd.grad((folded * weight).sum(), params), torch.autograd.grad((expected * weight).sum(), params)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_attention_pooling_without_per_frame_keys_and_values_matches_the_textbook_form():
    """Time pooling and the event token apply their key and value projections to the query and
    to weighted sums, not to every frame: same output as attention over projected frames."""
    from msgvip.ranker.model import _EventToken, _PersonGrid, _TimePooling

    torch.manual_seed(0)
    H, heads = 16, 4
    d = H // heads
    person = torch.tensor([0, 1, 0, 2, 1, 0, 2, 3])  # tokens of 4 persons
    clip = torch.tensor([0, 0, 0, 2, 0, 0, 2, 2])  # persons 0, 1 in clip 0, persons 2, 3 in clip 2, clip 1 empty
    place = torch.stack([(person[:i] == p).sum() for i, p in enumerate(person)])
    grid = _PersonGrid(person, place, torch.bincount(person))
    x, context = torch.randn(8, H), torch.randn(4, H)
    pool, event = _TimePooling(H, heads), _EventToken(H, heads)
    with torch.no_grad():
        for p in [*pool.parameters(), *event.parameters()]:
            p.copy_(torch.randn_like(p))

    def attend(q, k, v):  # q (heads, d), k and v (n, heads, d) -> (H,)
        alpha = ((k * q).sum(-1) / math.sqrt(d)).softmax(0)  # (n, heads)
        return (alpha.unsqueeze(-1) * v).sum(0).reshape(H)

    with torch.no_grad():
        q = pool.query + pool.context_query(context).view(4, heads, d)
        k, v = pool.key(x).view(8, heads, d), pool.value(x).view(8, heads, d)
        expected = pool.out(torch.stack([attend(q[p], k[person == p], v[person == p]) for p in range(4)]))
        torch.testing.assert_close(pool(x, grid, context), expected, atol=1e-5, rtol=1e-5)

        k, v = event.key_value(event.norm(x)).view(8, 2, heads, d).unbind(1)
        ctx = [attend(event.query, k[clip == b], v[clip == b]) if (clip == b).any() else torch.zeros(H) for b in range(3)]
        expected = event.out(torch.stack(ctx))  # the empty clip: no context, the output layer's bias
        torch.testing.assert_close(event(x, clip, grid, torch.tensor([0, 0, 2, 2]), 3), expected, atol=1e-5, rtol=1e-5)


def test_a_layered_family_is_mixed_by_learned_weights_and_stays_permutation_invariant():
    torch.manual_seed(0)
    # probe_prior off: its score layers start at 0, so no gradient would reach the mix on a first step
    model = ImportanceRanker(RankerConfig(hidden=16, gat_heads=2, temporal_heads=2, event_heads=2, pool_heads=2, relation_heads=2, probe_prior=False),
                             {"appearance": 3 * 8}, feature_layers={"appearance": 3})  # fmt: skip
    mask = torch.rand(2, 5, 4) < 0.8
    mask[:, 0, :2] = True
    features = {"appearance": torch.randn(2, 5, 4, 24)}
    logits = model(features, mask)
    assert logits.shape == (2, 4)
    logits[mask.any(1)].sum().backward()
    assert model.layer_mix["appearance"].logits.grad.abs().sum() > 0
    model.eval()
    order = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        torch.testing.assert_close(model(features, mask)[:, order], model({"appearance": features["appearance"][:, :, order]}, mask[:, :, order]))


def chain_clips(clips: int, generator: torch.Generator, frames: int = 16, persons: int = 4):
    """Clips where everyone spikes once (feature column 0, for one frame) at a distinct frame, and
    the target is the one whose spike another's follows exactly two frames later; every other two
    spikes lie at least three frames apart. Alone, a person's own track says next to nothing: only
    another person at another frame tells the target. -> ({"geometry": (C, T, N, 3)}, target (C,))."""
    features = 0.1 * torch.randn(clips, frames, persons, 3, generator=generator)
    target = torch.empty(clips, dtype=torch.long)
    for c in range(clips):
        while True:
            spikes = torch.randperm(frames - 2, generator=generator)[:persons] + 1  # (N,) one frame each
            gaps = (spikes.unsqueeze(0) - spikes.unsqueeze(1)).abs()  # (N, N)
            pairs = (gaps == 2).nonzero()
            if len(pairs) == 2 and ((gaps >= 3) | (gaps == 0)).sum() == persons * persons - 2:
                break
        i, j = pairs[0].tolist()
        target[c] = i if spikes[i] < spikes[j] else j
        features[c, spikes, torch.arange(persons), 0] += 1.0
    return {"geometry": features}, target


def test_the_scene_track_relates_one_person_to_others_in_other_frames():
    """A cue no per-frame graph or per-person track can see; the scene stage learns it."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    train_x, train_y = chain_clips(256, g)
    test_x, test_y = chain_clips(128, g)
    model = ImportanceRanker(RankerConfig(hidden=16, temporal_heads=4, gat_heads=2, event_heads=2, pool_heads=2,
                                          relation_heads=2, ff_mult=2, dropout=0.0), {"geometry": 3})  # fmt: skip
    mask = torch.ones(32, 16, 4, dtype=torch.bool)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(160):
        batch = torch.arange(32) + 32 * (step % 8)
        loss = F.cross_entropy(model({"geometry": train_x["geometry"][batch]}, mask), train_y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        hits = model.eval()(test_x, torch.ones(128, 16, 4, dtype=torch.bool)).argmax(1) == test_y
    assert hits.float().mean() >= 0.8, f"held-out Rank@1 {hits.float().mean():.2f}"


def test_a_column_constant_in_training_cannot_swamp_the_scores():
    """Standardised with a running variance near 0, a column that never varied in training would
    make a small change at test time enormous; inputs are clipped to STANDARD_CLIP deviations."""
    from msgvip.ranker.model import STANDARD_CLIP

    torch.manual_seed(0)
    model = ImportanceRanker(RankerConfig(hidden=16, temporal_heads=4, gat_heads=2, event_heads=2, pool_heads=2,
                                          relation_heads=2, ff_mult=2), {"geometry": 3})  # fmt: skip
    mask = torch.ones(4, 6, 3, dtype=torch.bool)
    for _ in range(300):  # running statistics of a column that is always 1
        x = torch.randn(4, 6, 3, 3)
        x[..., 2] = 1.0
        model.train()({"geometry": x}, mask)
    norm = model.input_norms["geometry"]
    assert norm.running_var[2] < 1e-6
    far, farther = x.clone(), x.clone()
    far[..., 2], farther[..., 2] = 0.0, -5.0  # e.g. a visibility that was always 1 in training
    standardised = (far[..., 2] - norm.running_mean[2]) / (norm.running_var[2] + norm.eps).sqrt()
    assert standardised.abs().min() > 30 * STANDARD_CLIP  # what an unclipped model would be fed
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model({"geometry": far}, mask), model({"geometry": farther}, mask), rtol=0, atol=0)
