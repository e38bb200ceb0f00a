"""The importance ranker: per person-frame fusion -> GATv2 per frame -> scene track over the
clip's frames -> temporal Transformer per person -> event token -> attention pooling over time ->
dual head (self / relation / gate), plus a linear skip path on pooled inputs.

The architecture is the user's best model (reference 001), rebuilt so that its cost follows the
people, not the padding: every stage runs on packed valid entries only.

- GATv2 runs once for the whole batch on the valid person-frames (nodes), each (clip, frame) a
  complete graph, as dense blocks: all frames of c persons at once, one size c at a time.
- The temporal Transformer runs on the same V nodes: every per-token stage (norms, projections,
  feed-forward) on the present person-frames only, attention on each person's present frames
  left-aligned in a ``(P, L, H)`` grid (L = most present frames of one person), positions from a
  frame embedding indexed by the true frame number. Absent frames are never computed.
- The event token and the relation head see only valid persons of the same clip.

Padded slots and padded frames never enter a computation: their feature values are never read
(not even NaN or inf garbage can leak), so permuting slots or appending padded slots/frames gives
the same scores for the real persons (up to float summation order, ~1e-7).

Shape letters used below: B clips, T frames, N person slots, H hidden size, V valid person-frames
(nodes), E edges, P persons valid in at least one frame, M most persons of one clip, L most
present frames of one person.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GATv2Conv
from torch_geometric.utils import softmax as segment_softmax

from ..domains import check_fields, one_of, ranged
from .dropout import Dropout, dropout, dropout_add
from .layer_mix import LayerMix
from .losses import LossSettings, RankingLossTerms, ranking_loss_terms

__all__ = ["INVALID_LOGIT", "RECORD_DEFAULTS", "ImportanceRanker", "RankerConfig", "frame_graph_edges"]

#: Logit given to slots that hold no person in any frame of the clip. ``-inf`` so that such a slot
#: never wins an argmax or a sort, whatever the real logits are; losses and metrics mask these
#: slots explicitly as well, so they never see the value.
INVALID_LOGIT = float("-inf")

#: Most columns of a family that ``input_norm="auto"`` standardises per column.
NARROW_FAMILY = 64

#: Standardised inputs are clipped to this many standard deviations: a column that hardly varied
#: in training (a running variance near 0, say a visibility that was always 1) cannot turn a small
#: change at test time into an input hundreds of deviations away.
STANDARD_CLIP = 10.0

#: Elements of GATv2's (frames, c, c, heads, C) pair tensor computed at a time on a CPU (2 MB
#: of float32): a chunk's sum, activation and product stay in cache. See :class:`_PairScores`.
PAIR_CHUNK = 1 << 19

#: What a run's config record meant by a field it lacks because it was written before the field
#: existed: the value that rebuilds the model it was trained as.
RECORD_DEFAULTS = {"track_stats": False, "scene_layers": 0, "input_norm": "layer", "probe_prior": False}


@dataclass(frozen=True)
class RankerConfig:
    """Hyper-parameters of :class:`ImportanceRanker`: plain values, saved whole in checkpoints.

    ``RankerConfig(**d)`` rejects unknown keys (``TypeError``) and values of the wrong type
    (``TypeError``); inconsistent sizes raise ``ValueError``.
    """

    hidden: int = ranged(256, 1, 65536)  # H, width of every stage (65,536: 16 GiB a matrix, more than any machine trains)
    fusion: str = one_of("sum", ("sum", "concat"))  # "sum": sum of per-family projections; "concat": concat, then project
    # How each family's inputs are scaled before their projection. "batch": every column
    # standardised over the person-frames (BatchNorm, no affine; running statistics in eval), so
    # a small change in one column (a box 5% taller for a frame) keeps its size next to columns of
    # other units. "layer": each row normalised across its own columns (LayerNorm), which keeps an
    # embedding's quiet directions quiet. "auto": "batch" for families of at most
    # NARROW_FAMILY columns (hand-made columns: geometry, svip_box), "layer" for wider ones.
    input_norm: str = one_of("auto", ("auto", "batch", "layer"))
    gat_layers: int = ranged(2, 0, 64)
    gat_heads: int = ranged(4, 1)  # hidden must be divisible by gat_heads
    # The clip around each frame: every frame's persons pooled (mean, max), mixed over nearby frames
    # by depthwise convolutions and added to each person-frame. The graph sees one frame and the
    # temporal Transformer one person; only here does a person's frame meet other persons' other
    # frames ("two others raise an arm just after I do").
    scene_layers: int = ranged(2, 0, 64)  # 0: no scene stage
    scene_kernel: int = ranged(9, 1, 1023)  # frames one convolution spans (odd)
    temporal_layers: int = ranged(2, 0, 64)
    temporal_heads: int = ranged(8, 1)  # hidden must be divisible by temporal_heads
    ff_mult: int = ranged(4, 1, 64)  # feed-forward width (Transformer, scene track) = ff_mult * hidden
    max_frames: int = ranged(512, 1, 10**6)  # longest clip the learned frame embedding supports
    event_token: bool = True  # learned clip-context token attending over all person-frames
    event_heads: int = ranged(4, 1)
    pool_heads: int = ranged(4, 1)  # heads of the attention pooling over time
    dual_head: bool = True  # self + relation scores mixed by a sigmoid gate; else self only
    relation_heads: int = ranged(4, 1)
    # Per-person track statistics beside the attention pooling: presence fraction, first and last
    # frame, mean and max of the node features. Attention pooling averages frames away, so on its
    # own it cannot see how long or when a person is there (a probe on such statistics beat it).
    track_stats: bool = True
    # A linear score on each person's standardised mean inputs, their difference from the clip's
    # mean and the presence statistics, added to the logit: the model contains a linear probe.
    # Off by default: over wide families (thousands of pooled columns, a few hundred clips) it
    # can fit the training clips through their noise, and with the scene track and standardised
    # inputs it no longer helps (demo store, test Rank@1, mean of 3 seeds: 0.914 with it and
    # 0.952 without; bench_probe_vs_model.py --model-option linear_skip=true).
    linear_skip: bool = False
    # The skip path also learns on its own (cross-entropy of its score alone, this weight), so it
    # stays a fitted probe even once the deep path has memorised the training clips.
    skip_loss_weight: float = ranged(1.0, 0)
    # The run's probe baseline (the scorer `msgvip probe` picks on val) scores each person, and
    # that score, times a learned gain that starts at 1, is added to the logit: the model starts
    # as the probe and learns what the probe misses. On the train split the scores are
    # cross-fitted (each clip scored by a probe fitted without it), so they are as right there as
    # on clips the probe never saw, and the model cannot learn to trust them more than they deserve.
    probe_prior: bool = True
    # In training, each family of each clip is left out of the fusion with this probability (never
    # all of one clip's): a noisy family cannot carry the fit alone (sum fusion only).
    family_dropout: float = ranged(0.0, 0, 1, high_open=True)
    dropout: float = ranged(0.1, 0, 1, high_open=True)  # on activations (fusion, GAT, Transformer, heads)
    # On attention weights: GATv2 coefficients and temporal self-attention. Kept apart from
    # `dropout` because on a CPU any dropout there sends the temporal attention to PyTorch's
    # unfused kernel: 0.1 there cost 10-25% of a whole training step at the benchmark's shape.
    attention_dropout: float = ranged(0.0, 0, 1, high_open=True)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            expected = {"int": int, "float": (int, float), "bool": bool, "str": str}[str(f.type)]
            wrong_bool = isinstance(value, bool) and f.type != "bool"
            if wrong_bool or not isinstance(value, expected):
                raise TypeError(
                    f"RankerConfig.{f.name} must be {f.type}, got {type(value).__name__} {value!r}"
                )
        check_fields(self)
        for name in ("gat_heads", "temporal_heads", "event_heads", "pool_heads", "relation_heads"):
            if self.hidden % getattr(self, name):
                raise ValueError(f"RankerConfig.hidden={self.hidden} must be divisible by {name}={getattr(self, name)}")
        if self.scene_kernel % 2 == 0:
            raise ValueError(f"RankerConfig.scene_kernel must be odd, got {self.scene_kernel}")

    def to_dict(self) -> dict[str, int | float | bool | str]:
        return asdict(self)


def frame_graph_edges(group: Tensor, num_groups: int) -> Tensor:
    """Edge index of a graph that is fully connected (self loops included) within each group.

    Args:
        group: (V,) group id of each node, sorted ascending (nodes of a group are contiguous).
        num_groups: number of groups G (ids in ``[0, G)``; empty groups allowed).

    Returns:
        (2, E) long, ``E = sum_g count_g ** 2``, row 0 the source node, row 1 the target node.
    """
    counts = torch.bincount(group, minlength=num_groups)  # (G,)
    starts = torch.cumsum(counts, 0) - counts  # (G,) first node of each group
    degree = counts[group]  # (V,) every node talks to its whole group
    num_edges = int(degree.sum())
    src = torch.repeat_interleave(torch.arange(group.numel(), device=group.device), degree,
                                  output_size=num_edges)  # (E,)
    first_edge = torch.cumsum(degree, 0) - degree  # (V,) first edge of each source node
    offset = torch.arange(num_edges, device=group.device) - first_edge[src]  # (E,) 0..deg-1
    dst = starts[group[src]] + offset  # (E,)
    return torch.stack([src, dst])


def _normalise(norm: nn.Module, x: Tensor, training: bool) -> Tensor:
    """``norm(x)`` for x (R, C); a BatchNorm given a single row in training uses its running
    statistics (batch statistics need two rows), and its output is clipped to +-STANDARD_CLIP."""
    if not isinstance(norm, nn.BatchNorm1d):
        return norm(x)
    x = F.batch_norm(x, norm.running_mean, norm.running_var, training=training and x.shape[0] > 1, momentum=norm.momentum, eps=norm.eps)
    return x.clamp(-STANDARD_CLIP, STANDARD_CLIP)


class _PersonGrid:
    """Where each packed token goes in a ``(P, L)`` grid: row p holds person p's tokens in frame
    order, left-aligned (L = most tokens of one person); the rest of the row is empty.

    Args:
        person, place: (V,) each token's person and its place among that person's tokens.
        length: (P,) tokens per person, each >= 1.
    """

    def __init__(self, person: Tensor, place: Tensor, length: Tensor) -> None:
        self.P, self.L = length.numel(), int(length.max())
        self.person, self.place = person, place
        self.cell = person * self.L + place  # (V,) row of each token in the flattened grid
        self.keep = torch.arange(self.L, device=length.device) < length.unsqueeze(1)  # (P, L) True at a token
        self.empty = (~self.keep).flatten().nonzero().squeeze(1)  # rows of the flattened grid with no token

    def heads(self, x: Tensor, heads: int) -> Tensor:
        # x (V, H) -> (P, heads, L, H / heads), zeros where no token; backward gathers
        return _ToHeads.apply(x, self, heads)

    def from_heads(self, x: Tensor) -> Tensor:
        # x (P, heads, L, d) -> (V, heads * d); backward scatters
        return _FromHeads.apply(x, self)

    def scatter(self, x: Tensor) -> Tensor:
        # x (V, C) -> (P, L, C), zeros where no token; every row written once
        grid = x.new_empty(self.P * self.L, x.shape[1]).index_fill_(0, self.empty, 0.0)
        return grid.index_copy_(0, self.cell, x).view(self.P, self.L, -1)

    def _scatter_heads(self, x: Tensor, heads: int) -> Tensor:
        return self.scatter(x).view(self.P, self.L, heads, -1).transpose(1, 2)

    def _gather_heads(self, x: Tensor) -> Tensor:
        return x.transpose(1, 2)[self.person, self.place].flatten(1)


class _ToHeads(torch.autograd.Function):
    """Packed rows to the (P, heads, L, d) layout attention reads; backward gathers the tokens'
    gradient rows from it in one pass. Autograd's own backward of the scatter and views would
    first copy the gradient into the grid's row layout."""

    @staticmethod
    def forward(ctx, x: Tensor, grid: _PersonGrid, heads: int) -> Tensor:
        ctx.grid = grid
        return grid._scatter_heads(x, heads)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return ctx.grid._gather_heads(grad), None, None


class _FromHeads(torch.autograd.Function):
    """Attention's (P, heads, L, d) output back to packed (V, heads * d) rows; backward puts each
    row's gradient in its cell of a zero grid. The cells are distinct, so nothing needs the
    accumulation that indexing's own backward does."""

    @staticmethod
    def forward(ctx, x: Tensor, grid: _PersonGrid) -> Tensor:
        ctx.grid, ctx.heads = grid, x.shape[1]
        return grid._gather_heads(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return ctx.grid._scatter_heads(grad, ctx.heads), None


def _packed_encoder(encoder: nn.TransformerEncoder, x: Tensor, grid: _PersonGrid, attention_dropout: float) -> Tensor:
    """A pre-norm ``nn.TransformerEncoder`` run on packed tokens, with the encoder's own weights.

    Every per-token stage (LayerNorms, projections, feed-forward) runs on the V tokens only.
    Attention needs sequences: queries, keys and values are laid out in a ``(P, L)`` grid, each
    person's tokens left-aligned, the rest of the row masked out as keys. Attention is blind to
    the order of its keys, so a present frame's output equals that of the encoder over the
    ``(P, T)`` rows with absent frames key-padded (positions come from the frame embedding added
    before). ``attention_dropout`` stands in for the layers' dropout on attention weights (see
    ``RankerConfig.attention_dropout``); the other dropouts take the layers' rates and are
    computed by :func:`.dropout.dropout` (a cheaper mask on a CPU).

    Args:
        encoder: layers built with ``norm_first=True, batch_first=True``.
        x: (V, H) tokens.
        grid: where the tokens go for attention.
        attention_dropout: dropout on attention weights, applied in training only.

    Returns:
        (V, H) the encoder's output for each token.
    """
    keep = grid.keep.view(grid.P, 1, 1, grid.L)  # (P, 1, 1, L)
    dropout_p = attention_dropout if encoder.training else 0.0
    for layer in encoder.layers:
        attn = layer.self_attn
        heads = attn.num_heads
        normed = layer.norm1(x)
        # one (V, H) product per part rather than one (V, 3H): the same work, and at the step
        # benchmark's shape every tensor stays under glibc's 32 MB mmap threshold, above which
        # each step's allocation maps fresh pages and pays their faults (~4 GB/s here)
        q, k, v = (grid.heads(F.linear(normed, w, b), heads)  # (P, heads, L, H / heads) each
                   for w, b in zip(attn.in_proj_weight.chunk(3), attn.in_proj_bias.chunk(3)))
        ctx = grid.from_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=dropout_p))  # (V, H)
        x = dropout_add(x, attn.out_proj(ctx), layer.dropout1.p, layer.training)
        hidden = dropout(layer.activation(layer.linear1(layer.norm2(x))), layer.dropout.p, layer.training)
        x = dropout_add(x, layer.linear2(hidden), layer.dropout2.p, layer.training)
    return x if encoder.norm is None else encoder.norm(x)


class _FrameBlocks:
    """The nodes in the order :class:`_GraphBlock` reads them: grouped by the number of persons c
    of their frame, each frame's nodes together.

    Args:
        frame: (V,) frame id of each node, nondecreasing (a frame's nodes are contiguous).
        num_frames: number of frames (ids in ``[0, num_frames)``).

    Attributes:
        order: (V,) node index at each position of the block order.
        inverse: (V,) position of each node in the block order.
        sizes: per block, ``(c, F)``: F frames of c persons, ``F * c`` consecutive nodes.
    """

    def __init__(self, frame: Tensor, num_frames: int) -> None:
        persons = torch.bincount(frame, minlength=num_frames)[frame]  # (V,) persons in the node's frame
        self.order = torch.sort(persons, stable=True).indices  # stable: a frame's nodes stay together
        self.inverse = torch.empty_like(self.order)
        self.inverse[self.order] = torch.arange(len(self.order), device=frame.device)  # position of each node in the block order
        c, nodes = torch.unique_consecutive(persons[self.order], return_counts=True)
        self.sizes = [(c, n // c) for c, n in zip(c.tolist(), nodes.tolist())]


class _PairScores(torch.autograd.Function):
    """GATv2's attention logits for every (target i, source j) pair of each frame of c persons:
    ``score[f, i, j, h] = att[h] . leaky_relu(dst[f, i, h] + src[f, j, h])``.

    The pairs, a (F, c, c, heads, C) tensor, are the graph stage's largest: ~120 MB per layer at
    the step benchmark's shape (hidden 768). Formed whole, autograd writes them to memory and
    reads them back in a dozen passes: ~180 ms a layer, forward and backward, on 2 CPU cores.
    Here they are formed a chunk of frames at a time (``chunk`` elements; that chunk's work stays
    in cache) and never stored: backward forms each chunk again. ~35 ms a layer, same values.
    """

    @staticmethod
    def forward(ctx, dst: Tensor, src: Tensor, att: Tensor, slope: float, chunk: int) -> Tensor:
        # dst, src (F, c, heads, C), att (heads, C) -> (F, c, c, heads)
        F_, c, heads, C = dst.shape
        ctx.att_dtype = att.dtype
        att = att.to(dst.dtype)
        scores = dst.new_empty(F_, c, c, heads)
        step = max(1, chunk // (c * c * heads * C))  # frames per chunk
        for s in range(0, F_, step):
            pair = dst[s:s + step].unsqueeze(2) + src[s:s + step].unsqueeze(1)  # (n, c, c, heads, C)
            F.leaky_relu(pair, slope, inplace=True)
            torch.sum(pair.mul_(att), -1, out=scores[s:s + step])
        ctx.save_for_backward(dst, src, att)
        ctx.slope, ctx.step = slope, step
        return scores

    @staticmethod
    def backward(ctx, grad: Tensor):
        # grad (F, c, c, heads) -> grads of dst, src, att
        dst, src, att = ctx.saved_tensors
        heads, C = att.shape
        grad_dst, grad_src = torch.empty_like(dst), torch.empty_like(src)
        grad_att = torch.zeros(heads, C, dtype=torch.promote_types(att.dtype, torch.float32), device=att.device)
        for s in range(0, dst.shape[0], ctx.step):
            pair = dst[s:s + ctx.step].unsqueeze(2) + src[s:s + ctx.step].unsqueeze(1)  # (n, c, c, heads, C)
            F.leaky_relu(pair, ctx.slope, inplace=True)  # keeps each sign: its derivative can be read off it
            g = grad[s:s + ctx.step]  # (n, c, c, heads)
            grad_att += torch.einsum("eh,ehc->hc", g.reshape(-1, heads), pair.view(-1, heads, C))
            grad_pair = torch.ops.aten.leaky_relu_backward(g.unsqueeze(-1) * att, pair, ctx.slope, True)
            torch.sum(grad_pair, 2, out=grad_dst[s:s + ctx.step])  # each target's sources
            torch.sum(grad_pair, 1, out=grad_src[s:s + ctx.step])  # each source's targets
        return grad_dst, grad_src, grad_att.to(ctx.att_dtype), None, None


def _pair_scores(dst: Tensor, src: Tensor, att: Tensor, slope: float) -> Tensor:
    """``(att * leaky_relu(dst[:, :, None] + src[:, None], slope)).sum(-1)``: (F, c, heads, C)
    twice and (heads, C) -> (F, c, c, heads), in chunks on a CPU (:class:`_PairScores`)."""
    chunk = PAIR_CHUNK if dst.device.type == "cpu" else dst.numel() * dst.shape[1]  # one chunk where launches cost
    return _PairScores.apply(dst, src, att, slope, chunk)


class _GraphBlock(nn.Module):
    """GATv2 + residual + LayerNorm over the complete graph of each frame's persons (self loops
    included): ``x <- LN(x + dropout(GELU(GAT(x))))``.

    The parameters are those of a ``torch_geometric.nn.GATv2Conv`` and so is the formula, but
    the attention is computed on dense blocks, all frames of c persons as one (F, c, c) score
    tensor per size c, instead of on an edge list: no gather of both ends of every edge and no
    scatter of the messages back. At hidden 768 on the benchmark batch (~38,000 edges) that made
    the conv, its two projections included, 1.8x faster (forward + backward) for the same output.
    """

    def __init__(self, hidden: int, heads: int, dropout: float, attention_dropout: float) -> None:
        super().__init__()
        self.conv = GATv2Conv(hidden, hidden // heads, heads=heads, concat=True,
                              dropout=attention_dropout, add_self_loops=False)
        self.norm = nn.LayerNorm(hidden)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor, frames: _FrameBlocks) -> Tensor:
        # x (V, H) in frames.order -> (V, H)
        conv = self.conv
        heads, C = conv.heads, conv.out_channels
        source = conv.lin_l(x).view(-1, heads, C)  # (V, heads, C) messages and their half of the score
        target = conv.lin_r(x).view(-1, heads, C)  # (V, heads, C) the receiving node's half
        rows = [c * f for c, f in frames.sizes]
        out = []
        for (c, f), src, dst in zip(frames.sizes, source.split(rows), target.split(rows)):
            src, dst = src.view(f, c, heads, C), dst.view(f, c, heads, C)
            alpha = _pair_scores(dst, src, conv.att.view(heads, C), conv.negative_slope).softmax(2)  # (f, c, c, heads) over each target's sources
            alpha = F.dropout(alpha, conv.dropout, self.training)
            out.append(torch.einsum("fijh,fjhc->fihc", alpha, src).reshape(f * c, heads * C))
        return self.norm(dropout_add(x, F.gelu(torch.cat(out) + conv.bias), self.dropout.p, self.training))


class _SceneTrack(nn.Module):
    """The clip around each frame, added to its person-frames: ``x <- x + W s[clip, frame]``.

    ``s`` starts as every frame's persons pooled (mean and max, then a projection) and goes
    through ``layers`` ConvNeXt-style blocks over the clip's frames (depthwise convolution over
    time, LayerNorm, point-wise MLP, residual). It runs per frame, B * T rows, not per node.
    Frames with nobody in them, padded ones included, are zeros before every convolution, so
    appending padded frames changes nothing.
    """

    def __init__(self, hidden: int, layers: int, kernel: int, ff_width: int, dropout: float) -> None:
        super().__init__()
        self.summary = nn.Linear(2 * hidden, hidden)
        self.convs = nn.ModuleList(nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2, groups=hidden) for _ in range(layers))
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, ff_width), nn.GELU(), Dropout(dropout), nn.Linear(ff_width, hidden))
            for _ in range(layers)
        )
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor, frame: Tensor, B: int, T: int) -> Tensor:
        # x (V, H), frame (V,) = clip * T + frame number -> (V, H)
        H = x.shape[1]
        count = torch.bincount(frame, minlength=B * T).unsqueeze(1)  # (B*T, 1)
        mean = x.new_zeros(B * T, H).index_add(0, frame, x) / count.clamp(min=1)
        peak = x.new_full((B * T, H), float("-inf")).scatter_reduce(0, frame.unsqueeze(1).expand(-1, H), x, "amax")
        peak = peak.masked_fill(count == 0, 0.0)  # empty frames: -inf -> 0
        live = (count > 0).to(x.dtype)  # (B*T, 1)
        s = self.summary(torch.cat([mean, peak], -1)) * live  # (B*T, H)
        live = live.view(B, T, 1)
        s = s.view(B, T, H)
        for conv, mlp in zip(self.convs, self.mlps):
            s = (s + mlp(conv(s.transpose(1, 2)).transpose(1, 2))) * live  # (B, T, H)
        return x + self.out(s.reshape(B * T, H))[frame]


class _EventToken(nn.Module):
    """A learned token that attends over every valid person-frame of its clip (multi-head).

    Tokens of a clip are a ragged segment of a packed (V, H) tensor, so the softmax is a segment
    softmax over clip ids: no padding, no loop over clips. With a single query, keys and values
    need not be computed for every token (see :class:`_TimePooling`).
    """

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Parameter(torch.randn(heads, hidden // heads) / math.sqrt(hidden // heads))
        self.norm = nn.LayerNorm(hidden)
        self.key_value = nn.Linear(hidden, 2 * hidden)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, tokens: Tensor, clip: Tensor, grid: _PersonGrid, person_clip: Tensor, num_clips: int) -> Tensor:
        # tokens (V, H), clip (V,), person_clip (P,) -> (B, H)
        H = tokens.shape[1]
        heads, d = self.heads, H // self.heads
        w_key, w_value = (w.view(heads, d, H) for w in self.key_value.weight.split(H))  # keys, then values
        b_key, b_value = (b.view(heads, d) for b in self.key_value.bias.split(H))
        normed = self.norm(tokens)
        # q . (W_k x + b_k) = (W_k^T q) . x + q . b_k: no (V, H) keys or values are ever computed
        score = normed @ torch.einsum("hd,hdi->ih", self.query, w_key) + (self.query * b_key).sum(-1)  # (V, heads)
        alpha = segment_softmax(score / math.sqrt(d), clip, num_nodes=num_clips)  # (V, heads)
        # sum_v alpha_v (W_v x_v + b_v) = W_v (sum_v alpha_v x_v) + b_v sum_v alpha_v, the inner sum
        # per person on its grid row, then per clip
        mixed = grid.scatter(alpha).transpose(1, 2) @ grid.scatter(normed)  # (P, heads, H)
        mixed = mixed.new_zeros(num_clips, heads, H).index_add(0, person_clip, mixed)  # (B, heads, H)
        weight = alpha.new_zeros(num_clips, heads).index_add(0, clip, alpha)  # (B, heads): 1, or 0 for an empty clip
        ctx = torch.einsum("bhi,hdi->bhd", mixed, w_value) + weight.unsqueeze(-1) * b_value  # (B, heads, d)
        return self.out(ctx.reshape(num_clips, H))


class _TimePooling(nn.Module):
    """Multi-head attention pooling over a person's present frames; optional clip-context query.

    A person's frames are a row of the :class:`_PersonGrid`. With one query per person and head,
    ``q . (W_k x + b_k) = (W_k^T q) . x + q . b_k`` and ``sum_t a_t (W_v x_t + b_v) = W_v (sum_t
    a_t x_t) + b_v``: the query goes through the key projection instead of every frame, the value
    projection applies once to the weighted sum of frames. Same result as the textbook form up to
    float rounding, without its two (V, H) x (H, H) products.
    """

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Parameter(torch.zeros(heads, hidden // heads))
        self.context_query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor, grid: _PersonGrid, context: Tensor | None) -> Tensor:
        # x (V, H), context (P, H) or None -> (P, H)
        H = x.shape[1]
        P, heads, d = grid.P, self.heads, H // self.heads
        q = self.query.expand(P, -1, -1)  # (P, heads, d)
        if context is not None:
            q = q + self.context_query(context).view(P, heads, d)
        q_key = torch.einsum("phd,hdi->phi", q, self.key.weight.view(heads, d, H))  # (P, heads, H)
        q_bias = (q * self.key.bias.view(heads, d)).sum(-1, keepdim=True)  # (P, heads, 1)
        rows = grid.scatter(x)  # (P, L, H)
        score = (q_key @ rows.transpose(1, 2) + q_bias) / math.sqrt(d)  # (P, heads, L)
        alpha = score.masked_fill(~grid.keep.unsqueeze(1), float("-inf")).softmax(-1)  # (P, heads, L)
        # every person has a frame, so the weights sum to 1 and the value bias adds once
        pooled = torch.einsum("phi,hdi->phd", alpha @ rows, self.value.weight.view(heads, d, H))  # (P, heads, d)
        return self.out((pooled + self.value.bias.view(heads, d)).reshape(P, H))


class _RelationHead(nn.Module):
    """Scores each person against the other valid persons of its clip.

    Each person attends over the others (itself and padding masked out) plus a learned "nobody
    else" token, so a clip with one person is well defined. Returns the relation score and the
    gate that mixes it with the self score.
    """

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key_value = nn.Linear(hidden, 2 * hidden)
        self.null_key_value = nn.Parameter(torch.zeros(2, hidden))
        self.out = nn.Linear(hidden, hidden)
        self.score = nn.Sequential(
            nn.Linear(3 * hidden, hidden), nn.GELU(), Dropout(dropout), nn.Linear(hidden, 1)
        )
        self.gate = nn.Linear(2 * hidden, 1)

    def forward(self, z: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        # z (B, M, H), valid (B, M) bool -> relation score (B, M), gate in (0, 1) (B, M)
        B, M, H = z.shape
        d = H // self.heads
        q = self.query(z).view(B, M, self.heads, d)
        k, v = self.key_value(z).view(B, M, 2, self.heads, d).unbind(2)  # (B, M, heads, d) each
        null_k, null_v = self.null_key_value.view(2, 1, 1, self.heads, d).expand(2, B, 1, -1, -1)
        k = torch.cat([k, null_k], 1)  # (B, M + 1, heads, d)
        v = torch.cat([v, null_v], 1)
        score = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(d)  # (B, heads, M, M + 1)
        others = valid.unsqueeze(1) & ~torch.eye(M, dtype=torch.bool, device=z.device)  # (B, M, M)
        allowed = torch.cat([others, others.new_ones(B, M, 1)], 2)  # (B, M, M + 1)
        score = score.masked_fill(~allowed.unsqueeze(1), float("-inf"))
        ctx = torch.einsum("bhij,bjhd->bihd", score.softmax(-1), v).reshape(B, M, H)
        ctx = self.out(ctx)
        relation = self.score(torch.cat([z, ctx, z - ctx], -1)).squeeze(-1)  # (B, M)
        gate = torch.sigmoid(self.gate(torch.cat([z, ctx], -1))).squeeze(-1)  # (B, M)
        return relation, gate


class ImportanceRanker(nn.Module):
    r"""Scores every person slot of a clip by importance; higher is more important.

    Pipeline (all on packed valid entries, see the module docstring):

    1. fusion: per family (layered families first mixed over their layers, ``feature_layers``)
       standardised per column (``config.input_norm``) ``-> Linear(D_name, H)``, summed (or
       concatenated and projected, ``config.fusion``), then GELU + LayerNorm;
    2. ``config.gat_layers`` GATv2 blocks (``torch_geometric.nn.GATv2Conv``'s parameters and formula,
       ``config.gat_heads`` heads, residual + LayerNorm) over the persons of each frame;
       then the scene track (``config.scene_layers``): each frame's persons pooled, depthwise
       convolutions over the clip's frames, added back to every person-frame;
    3. learned frame embedding + ``nn.TransformerEncoder`` (pre-norm, ``config.temporal_layers``
       x ``config.temporal_heads``) over each person's present frames (packed, see the module
       docstring; absent frames are not computed);
    4. event token (``config.event_token``): a learned token attends over all person-frames of
       the clip; its output is added to every person-frame and conditions the pooling query;
       multi-head attention pooling over the person's present frames;
    5. self score (MLP); with ``config.dual_head`` also a relation score (attention over the other
       persons of the clip) and a sigmoid gate: ``logit = g * self + (1 - g) * relation``;
    6. with ``config.probe_prior``, ``+ gain * prior``: the run's probe's score of each person
       (``forward(..., prior=(B, N))``; the score layers start at 0, the gain at 1, so the untrained
       model ranks as the probe). Without ``prior`` the model scores alone.

    Args:
        config: hyper-parameters (default: ``RankerConfig()``).
        feature_dims: family name -> per person-frame feature size, e.g.
            ``{"appearance": 768, "geometry": 18}``. Multi-dimensional families (pose ``(K, 3)``)
            are flattened by the caller.
        feature_layers: family name -> L for families whose rows hold L backbone layers
            (``msgvip extract --layers``; see :func:`.layer_mix.layer_counts`), given flattened
            as ``feature_dims[name] = L * D``. Each such family is reshaped to (V, L, D) and
            mixed by a :class:`.layer_mix.LayerMix` into (V, D) before its LayerNorm and
            projection; the linear skip path takes the mixed (V, D) too. Default: none.

    Shapes:
        - **input:** ``features[name]`` :math:`(B, T, N, D_{name})` float (float16 allowed; cast
          to the parameter dtype), or packed :math:`(V, D_{name})`: the valid person-frames in the
          row-major order of ``person_mask.nonzero()`` (no padded copy is built; see
          ``StoreDataset.batches(packed=True)``); ``person_mask`` :math:`(B, T, N)` bool.
        - **output:** logits :math:`(B, N)` float32. Slots valid in no frame of the clip get
          :data:`INVALID_LOGIT` (``-inf``). Values of ``features`` at invalid person-frames are
          never read.

    ``features`` must hold every family of ``feature_dims``; extra keys are ignored. ``T`` may
    change between calls up to ``config.max_frames``; ``N`` may change freely.

    Example::

        >>> model = ImportanceRanker(RankerConfig(hidden=32), {"geometry": 18}).eval()
        >>> mask = torch.rand(2, 10, 5) < 0.7
        >>> model({"geometry": torch.randn(2, 10, 5, 18)}, mask).shape
        torch.Size([2, 5])
    """

    accepts_packed = True  # features may come as (V, D) valid rows

    def __init__(self, config: RankerConfig | None = None, feature_dims: dict[str, int] | None = None,
                 feature_layers: dict[str, int] | None = None) -> None:
        super().__init__()
        config = RankerConfig() if config is None else config
        if not feature_dims:
            raise ValueError("ImportanceRanker needs feature_dims, e.g. {'geometry': 18}; got none")
        bad = {k: v for k, v in feature_dims.items() if not isinstance(v, int) or isinstance(v, bool) or v < 1}
        if bad:
            raise ValueError(f"feature_dims values must be positive ints, got {bad}")
        self.config = config
        self.feature_dims = dict(sorted(feature_dims.items()))  # fixed order: sum/concat is stable
        feature_layers = dict(feature_layers or {})
        bad = {k: n for k, n in feature_layers.items()
               if k not in feature_dims or not isinstance(n, int) or isinstance(n, bool) or n < 2 or feature_dims[k] % n}
        if bad:
            raise ValueError(f"feature_layers {bad} must name families of feature_dims with >= 2 layers that divide their size {feature_dims}")
        self.feature_layers = dict(sorted(feature_layers.items()))
        # an empty ModuleDict holds no state: checkpoints from before layer mixing load unchanged
        self.layer_mix = nn.ModuleDict({k: LayerMix(n) for k, n in self.feature_layers.items()})
        # what the fusion and the skip path see of each family: one layer's D for a mixed family
        self.input_dims = {k: d // feature_layers.get(k, 1) for k, d in self.feature_dims.items()}
        H = config.hidden

        def input_norm(d: int) -> nn.Module:
            batch = config.input_norm == "batch" or (config.input_norm == "auto" and d <= NARROW_FAMILY)
            return nn.BatchNorm1d(d, affine=False) if batch else nn.LayerNorm(d)

        self.input_norms = nn.ModuleDict({k: input_norm(d) for k, d in self.input_dims.items()})
        if config.fusion == "sum":
            self.input_projs = nn.ModuleDict({k: nn.Linear(d, H) for k, d in self.input_dims.items()})
            self.fuse = nn.Identity()
        else:
            self.input_projs = nn.ModuleDict()
            self.fuse = nn.Linear(sum(self.input_dims.values()), H)
        self.fuse_norm = nn.LayerNorm(H)
        self.dropout = Dropout(config.dropout)

        self.graph = nn.ModuleList(
            _GraphBlock(H, config.gat_heads, config.dropout, config.attention_dropout)
            for _ in range(config.gat_layers)
        )

        self.scene = _SceneTrack(H, config.scene_layers, config.scene_kernel, config.ff_mult * H, config.dropout) if config.scene_layers else None

        self.frame_embedding = nn.Embedding(config.max_frames, H)
        nn.init.normal_(self.frame_embedding.weight, std=0.02)
        if config.temporal_layers > 0:
            layer = nn.TransformerEncoderLayer(
                H, config.temporal_heads, dim_feedforward=config.ff_mult * H, dropout=config.dropout,
                activation="gelu", batch_first=True, norm_first=True,
            )
            self.temporal = nn.TransformerEncoder(layer, config.temporal_layers,
                                                  norm=nn.LayerNorm(H), enable_nested_tensor=False)
        else:
            self.temporal = None

        if config.event_token:
            self.event = _EventToken(H, config.event_heads)
            self.event_to_tokens = nn.Linear(H, H)
            self.token_norm = nn.LayerNorm(H)
        else:
            self.event = None
        self.pool = _TimePooling(H, config.pool_heads)
        self.person_norm = nn.LayerNorm(H)

        self.self_head = nn.Sequential(
            nn.Linear(H, H), nn.GELU(), Dropout(config.dropout), nn.Linear(H, 1)
        )
        self.relation = _RelationHead(H, config.relation_heads, config.dropout) if config.dual_head else None
        self.stats = nn.Linear(2 * H + 3, H) if config.track_stats else None
        raw_dims = sum(self.input_dims.values())
        self.skip_norm = nn.BatchNorm1d(4 * raw_dims + 3, affine=False) if config.linear_skip else None
        self.skip = nn.Linear(4 * raw_dims + 3, 1) if config.linear_skip else None
        if self.skip is not None:
            nn.init.zeros_(self.skip.weight)  # starts as the plain model; the data decides how much to lean on it
        self.prior_gain = nn.Parameter(torch.ones(())) if config.probe_prior else None
        if self.prior_gain is not None:  # the score layers start at 0, so the untrained model ranks exactly as the probe
            for last in (self.self_head[-1], *([self.relation.score[-1]] if self.relation is not None else [])):
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)

    @property
    def accepts_prior(self) -> bool:
        """Whether forward adds ``prior``, the probe's scores (B, N), to its own: msgvip's runs
        always pass it to such a model; without it, forward scores with the model alone."""
        return self.prior_gain is not None

    def forward(self, features: dict[str, Tensor], person_mask: Tensor, prior: Tensor | None = None) -> Tensor:
        if person_mask.dim() != 3:
            raise ValueError(f"person_mask must be (B, T, N), got shape {tuple(person_mask.shape)}")
        B, T, N = person_mask.shape
        if T > self.config.max_frames:
            raise ValueError(
                f"Cannot rank a clip of {T} frames, max_frames is only {self.config.max_frames}: "
                "raise RankerConfig.max_frames or subsample frames"
            )
        missing = [k for k in self.feature_dims if k not in features]
        if missing:
            raise KeyError(f"features lacks {missing}; the model was built for {list(self.feature_dims)}")
        if prior is not None and tuple(prior.shape) != (B, N):
            raise ValueError(f"prior (the probe's scores) must be (B, N) = {(B, N)}, like person_mask's clips and slots; got {tuple(prior.shape)}")
        mask = person_mask.to(torch.bool)
        packed = all(features[name].dim() == 2 for name in self.feature_dims)
        V = int(mask.sum()) if packed else None
        for name, dim in self.feature_dims.items():
            expected = (V, dim) if packed else (B, T, N, dim)
            if tuple(features[name].shape) != expected:
                raise ValueError(
                    f"features[{name!r}] has shape {tuple(features[name].shape)}, expected {expected} from person_mask "
                    "((B, T, N, D) padded, or (V, D) packed with V = person_mask.sum())"
                )
        device = mask.device
        dtype = self.frame_embedding.weight.dtype
        logits = torch.full((B, N), INVALID_LOGIT, dtype=torch.float32, device=device)
        self._skip_logits: Tensor | None = None  # the skip path's own logits, kept for loss_terms in training

        # -- nodes: the valid person-frames, in (b, t, n) order --------------------------------
        node_b, node_t, node_n = mask.nonzero(as_tuple=True)  # (V,) each
        if node_b.numel() == 0:
            return logits
        nodes = {k: features[k] if packed else features[k][node_b, node_t, node_n] for k in self.feature_dims}  # (V, D) each
        x, raw = self._fuse(nodes, dtype, node_b, B)

        # -- 2. GATv2 over the persons of each (clip, frame) -----------------------------------
        node_frame = node_b * T + node_t  # (V,) each node's (clip, frame), nondecreasing
        if len(self.graph):
            frames = _FrameBlocks(node_frame, B * T)
            x = x[frames.order]  # (V, H) in block order
            for block in self.graph:
                x = block(x, frames)  # (V, H)
            x = x[frames.inverse]  # (V, H) back in (b, t, n) order
        if self.scene is not None:
            x = self.scene(x, node_frame, B, T)  # (V, H)

        # -- 3. temporal Transformer over the persons present in at least one frame ------------
        person_valid = mask.any(1)  # (B, N)
        person_id = torch.cumsum(person_valid.flatten(), 0).view(B, N) - 1  # (B, N), -1 unused
        P = int(person_valid.sum())
        person_b = person_valid.nonzero(as_tuple=True)[0]  # (P,)
        present = mask.transpose(1, 2)[person_valid]  # (P, T) frames each person is in
        node_p = person_id[node_b, node_n]  # (V,)
        H = x.shape[-1]
        grid = _PersonGrid(node_p, (present.cumsum(1) - 1)[node_p, node_t], present.sum(1))  # each person's frames, left-aligned
        tokens = x + self.frame_embedding(node_t)  # (V, H) position: the true frame number
        if self.temporal is not None:
            tokens = _packed_encoder(self.temporal, tokens, grid, self.config.attention_dropout)  # (V, H)

        # -- 4. event token (clip context) + attention pooling over time -----------------------
        context = None
        if self.event is not None:
            event = self.event(tokens, node_b, grid, person_b, B)  # (B, H)
            context = event[person_b]  # (P, H)
            tokens = self.token_norm(tokens + self.event_to_tokens(context)[node_p])  # (V, H)
        z = self.pool(tokens, grid, context)  # (P, H)
        track = self._track(node_p, node_t, person_b, P, B, dtype) if self.stats is not None or self.skip is not None else None
        if self.stats is not None:
            node_x = x.float()  # the node features after the graph: each person's frames, with their relations
            count = torch.bincount(node_p, minlength=P).unsqueeze(1).to(node_x.dtype)  # (P, 1)
            mean = node_x.new_zeros(P, H).index_add(0, node_p, node_x) / count
            peak = node_x.new_full((P, H), float("-inf")).scatter_reduce(0, node_p.unsqueeze(1).expand(-1, H), node_x, "amax")
            z = z + self.stats(torch.cat([mean, peak, track.float()], -1).to(z.dtype))
        z = self.person_norm(z)  # (P, H)

        # -- 5. dual head ---------------------------------------------------------------------
        score = self.self_head(z).squeeze(-1)  # (P,)
        if self.relation is not None:
            rank_in_clip = torch.cumsum(person_valid.long(), 1) - 1  # (B, N)
            person_slot = rank_in_clip[person_valid]  # (P,) column in the packed (B, M) layout
            M = int(person_valid.sum(1).max())
            packed = z.new_zeros(B * M, H).index_copy(0, person_b * M + person_slot, z).view(B, M, H)
            packed_valid = torch.arange(M, device=device) < person_valid.sum(1, keepdim=True)  # (B, M)
            relation, gate = self.relation(packed, packed_valid)  # (B, M) each
            relation = relation[person_b, person_slot]  # (P,)
            gate = gate[person_b, person_slot]
            score = gate * score + (1 - gate) * relation
        if self.skip is not None:
            skip = self._linear_skip(raw, node_p, person_b, P, B, track)  # (P,)
            self._skip_logits = logits.masked_scatter(person_valid, skip.float()) if self.training else None
            score = score + skip
        if self.prior_gain is not None and prior is not None:
            score = score + self.prior_gain * prior[person_valid].to(score.dtype)
        # persons are in (b, n) row-major order, the same order masked_scatter fills
        return logits.masked_scatter(person_valid, score.float())

    @staticmethod
    def _track(node_p: Tensor, node_t: Tensor, person_b: Tensor, P: int, B: int, dtype: torch.dtype) -> Tensor:
        """(P, 3): presence fraction, first frame and end frame of each person, as fractions of
        its clip's live length (up to the last frame anyone is present), so padded frames change
        nothing."""
        t = node_t.float()
        first = t.new_full((P,), float("inf")).scatter_reduce(0, node_p, t, "amin")
        end = t.new_zeros(P).scatter_reduce(0, node_p, t + 1, "amax")
        count = t.new_zeros(P).index_add(0, node_p, torch.ones_like(t))
        live = end.new_zeros(B).scatter_reduce(0, person_b, end, "amax")[person_b]  # (P,)
        return torch.stack([count / live, first / live, end / live], -1).to(dtype)

    def _linear_skip(self, raw: Tensor, node_p: Tensor, person_b: Tensor, P: int, B: int, track: Tensor) -> Tensor:
        """(P,) linear score of each person's inputs pooled over its frames (mean, std, last minus
        first), the mean's difference from the clip's mean person, and the track statistics,
        standardised per column (BatchNorm, no affine)."""
        raw = raw.float()
        V, D = raw.shape
        count = raw.new_zeros(P).index_add(0, node_p, raw.new_ones(V)).unsqueeze(1)  # (P, 1)
        mean = raw.new_zeros(P, D).index_add(0, node_p, raw) / count  # (P, sum D)
        std = (raw.new_zeros(P, D).index_add(0, node_p, raw * raw) / count - mean * mean).clamp(min=0).sqrt()
        row = torch.arange(V, device=raw.device)
        first = row.new_full((P,), V).scatter_reduce(0, node_p, row, "amin")  # nodes are in (b, t, n) order: by time per person
        last = row.new_zeros(P).scatter_reduce(0, node_p, row, "amax")
        persons = raw.new_zeros(B).index_add(0, person_b, raw.new_ones(P)).unsqueeze(1)  # (B, 1)
        clip_mean = (raw.new_zeros(B, D).index_add(0, person_b, mean) / persons.clamp(min=1))[person_b]
        stats = torch.cat([mean, std, raw[last] - raw[first], mean - clip_mean, track.float()], -1)  # (P, 4 sum D + 3)
        return self.skip(_normalise(self.skip_norm, stats, self.training)).squeeze(-1)

    def loss_terms(self, logits: Tensor, target: Tensor, valid: Tensor, train: LossSettings) -> RankingLossTerms:
        """Masked cross-entropy + pairwise margin (``train``: the TrainConfig's margin and weight)."""
        terms = ranking_loss_terms(logits, target, valid, train.margin, train.pairwise_weight)
        skip = getattr(self, "_skip_logits", None)
        if skip is None or not self.config.skip_loss_weight:
            return terms
        alone = ranking_loss_terms(skip, target, valid, pairwise_weight=0.0).ce
        return terms._replace(total=terms.total + self.config.skip_loss_weight * alone)

    def _fuse(self, features: dict[str, Tensor], dtype: torch.dtype, node_b: Tensor, B: int) -> tuple[Tensor, Tensor | None]:
        # features[name] (V, D_name), a layered family (V, L * D) -> fused (V, H), and for the skip
        # path the inputs after the layer mix side by side (V, sum D)
        inputs = {k: features[k].to(dtype) for k in self.feature_dims}
        for k, mix in self.layer_mix.items():
            inputs[k] = mix(inputs[k].unflatten(-1, (mix.layers, -1)))  # (V, L * D) -> (V, L, D) -> (V, D)
        raw = torch.cat(list(inputs.values()), -1) if self.skip is not None else None
        if self.config.fusion == "sum":
            parts = [self._project(k, v) for k, v in inputs.items()]  # (V, H) each
            if self.training and self.config.family_dropout > 0 and len(parts) > 1:
                keep = torch.rand(len(parts), B, device=node_b.device) >= self.config.family_dropout  # (F, B)
                keep[torch.randint(len(parts), (B,), device=node_b.device), torch.arange(B, device=node_b.device)] = True
                parts = [part * keep[i, node_b].unsqueeze(-1).to(part.dtype) for i, part in enumerate(parts)]
            x = parts[0]
            for part in parts[1:]:
                x = x + part
        else:
            x = self.fuse(torch.cat([_normalise(self.input_norms[k], v, self.training) for k, v in inputs.items()], -1))
        return self.dropout(self.fuse_norm(F.gelu(x))), raw

    def _project(self, name: str, x: Tensor) -> Tensor:
        """Family ``name``'s input norm and projection, (V, D) -> (V, H).

        A LayerNorm's scale and shift are folded into the projection when x needs no gradient:
        ``(x_hat * g + b_norm) W^T + b = x_hat (W * g)^T + (W b_norm + b)`` is the same map, and
        backward then skips the (V, D) x (D, H) product for x_hat's gradient, which only the
        scale and shift needed (at hidden 768, 5,600 person-frames: ~35 ms of a 2.6 s step on 2
        CPU cores).
        """
        norm, proj = self.input_norms[name], self.input_projs[name]
        if isinstance(norm, nn.LayerNorm) and not x.requires_grad:
            x_hat = F.layer_norm(x, norm.normalized_shape, eps=norm.eps)
            return F.linear(x_hat, proj.weight * norm.weight, torch.addmv(proj.bias, proj.weight, norm.bias))
        return proj(_normalise(norm, x, self.training))

    def extra_repr(self) -> str:
        return f"feature_dims={self.feature_dims}" + (f", feature_layers={self.feature_layers}" if self.feature_layers else "")

    def layer_weights(self) -> dict[str, list[float]]:
        """family -> its LayerMix weights, shallow to deep (families with one layer are absent)."""
        return {k: mix.weights().tolist() for k, mix in self.layer_mix.items()}
