"""The ``svip`` model preset: the user's svip ranker (github.com/yml2002/svip at commit 26674fd,
reference 001), rebuilt layer for layer on packed valid entries, so that its trained weights load
into :class:`SvipRanker` (svip_import.py) and give svip's scores.

Pipeline (module names are svip's; every stage sees the valid person-frames only):

1. ``vision``: the DINOv2 CLS feature (``appearance`` family, extracted with ``--pooling cls``),
   through a bias-free ``vision_proj`` when its width is not ``vision_dim``, then L2-normalised,
   as svip's VisionEncoder does;
2. ``geom``: an MLP on svip's 14 box features (``svip_box`` family);
3. ``fuse``: ``Linear(vision + geom -> fused) -> ReLU -> dropout``;
4. ``gat``: ``Linear(fused -> gat_hidden)``, then in every frame holding two or more persons
   ``gat_layers`` GATv2 layers over the fully connected frame graph (self loops included), each
   ``x <- LN(dropout(ELU(GAT(x)))) + x``; a frame with one person skips them, as in svip;
5. relation branch: ``to_dmodel`` -> the temporal Transformer (pre-norm) over each person's
   present frames -> event context -> pooling; self branch (``dual_head``): ``self_to_dmodel``
   -> the same Transformer -> the same pooling;
6. event context (``event_token``, relation branch only): per frame a learned token attends over
   the frame's persons, the frame tokens go through a Transformer over the clip's frames, and
   each person-frame is mixed with its frame's token by a sigmoid gate;
7. pooling (``temporal_agg``): a post-norm Transformer over the person's present frames, the
   masked mean, ``Linear -> LayerNorm -> ReLU -> dropout``;
8. heads: ``scoring`` (relation), ``self_scoring`` and ``gate_mlp``:
   ``logit = (1 - g) * self + g * relation``; without ``dual_head`` the relation score alone.

There is no positional information anywhere (svip has none), so attention over a person's frames
is blind to their order.

Where svip's numbers are undefined this module differs: svip runs its Transformers on all
``N`` slots and ``T`` frames, and in eval mode on CPU the rows of empty slots (no valid frame)
come out NaN; the event attention then spreads the NaN to every person and its relation branch
gives every person the same score. Here empty slots, empty frames and absent person-frames are
never computed, so a clip's scores do not depend on its padding.

Shape letters: B clips, T frames, N slots, V valid person-frames, P persons valid in at least one
frame, L most frames of one person, G frames holding a person, M most persons of one frame,
C clips holding a person, F most such frames of one clip, D a feature width.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GATv2Conv

from ..domains import check_fields, ranged
from .losses import LossSettings, RankingLossTerms, ranking_loss_terms
from .model import INVALID_LOGIT, frame_graph_edges

__all__ = ["FAMILIES", "TRAIN_DEFAULTS", "SvipConfig", "SvipRanker", "svip_loss_terms"]

#: The feature families svip consumes: the DINOv2 CLS token and svip's own box geometry.
FAMILIES = ("appearance", "svip_box")

#: TrainConfig values svip trains with (its src/configs/config.py and training loop): AdamW at
#: lr 5e-5, weight decay 5e-4, gradient norm clipped at 3, no warmup (its cosine schedule starts
#: at the peak), early stop after 3 epochs without gain, and 16 clips per optimizer step (batches
#: of 8 with 2 accumulation steps).
TRAIN_DEFAULTS = {"lr": 5e-5, "weight_decay": 5e-4, "grad_clip": 3.0, "warmup_fraction": 0.0, "patience": 3, "batch_size": 16}


@dataclass(frozen=True)
class SvipConfig:
    """Hyper-parameters of :class:`SvipRanker`, defaults = svip's ``src/configs/config.py``.

    ``SvipConfig(**d)`` rejects unknown keys and values of the wrong type (``TypeError``);
    inconsistent sizes raise ``ValueError``.
    """

    vision_dim: int = ranged(768, 1, 65536)  # CLS width svip fuses (DinoConfig.feature_dim)
    geom_hidden: int = ranged(512, 1, 65536)  # BBoxGeomConfig.hidden_dim
    geom_dim: int = ranged(256, 1, 65536)  # BBoxGeomConfig.feature_dim
    # svip trains from a feature cache that holds the box MLP's output, computed once by its
    # randomly initialised MLP, so the MLP never learns; True keeps it so
    freeze_geom: bool = True
    fused_dim: int = ranged(1024, 1, 65536)
    gat_hidden: int = ranged(512, 1, 65536)
    gat_layers: int = ranged(2, 0, 64)
    gat_heads: int = ranged(4, 1)  # gat_hidden must be divisible by gat_heads
    d_model: int = ranged(768, 1, 65536)
    temporal_layers: int = ranged(2, 1, 64)
    temporal_heads: int = ranged(12, 1)  # also the event token's heads; d_model must be divisible by them
    ff_dim: int = ranged(1024, 1, 65536)  # feed-forward width of the temporal and event Transformers
    event_token: bool = True
    event_layers: int = ranged(1, 1, 64)
    pool_layers: int = ranged(1, 1, 64)
    pool_heads: int = ranged(4, 1)  # d_model must be divisible by pool_heads
    pool_ff_dim: int = ranged(512, 1, 65536)
    pool_dim: int = ranged(512, 1, 65536)
    score_hidden: int = ranged(128, 1, 65536)
    gate_hidden: int = ranged(128, 1, 65536)
    dual_head: bool = True
    features_dropout: float = ranged(0.1, 0, 1, high_open=True)
    gat_dropout: float = ranged(0.1, 0, 1, high_open=True)  # on GATv2 attention coefficients and outputs
    temporal_dropout: float = ranged(0.2, 0, 1, high_open=True)  # temporal, event and pooling Transformers, pooling projection
    scoring_dropout: float = ranged(0.2, 0, 1, high_open=True)
    gate_dropout: float = ranged(0.2, 0, 1, high_open=True)
    preference_weight: float = ranged(0.3, 0)  # loss = CE + preference_weight * preference term
    preference_beta: float = ranged(1.0, 0)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            expected = {"int": int, "float": (int, float), "bool": bool}[str(f.type)]
            wrong_bool = isinstance(value, bool) and f.type != "bool"
            if wrong_bool or not isinstance(value, expected):
                raise TypeError(f"SvipConfig.{f.name} must be {f.type}, got {type(value).__name__} {value!r}")
        check_fields(self)
        for width, heads in (("gat_hidden", "gat_heads"), ("d_model", "temporal_heads"), ("d_model", "pool_heads")):
            if getattr(self, width) % getattr(self, heads):
                raise ValueError(f"SvipConfig.{width}={getattr(self, width)} must be divisible by {heads}={getattr(self, heads)}")

    def to_dict(self) -> dict[str, int | float | bool]:
        return asdict(self)


def _encoder(d_model: int, heads: int, ff_dim: int, layers: int, dropout: float, norm_first: bool) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(d_model, heads, ff_dim, dropout, activation="gelu", batch_first=True, norm_first=norm_first)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


def _head(width: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1))


def _pad(x: Tensor, row: Tensor, col: Tensor, rows: int, cols: int) -> Tensor:
    """Packed rows (K, D) into a zero-padded (rows, cols, D) tensor: ``x[k]`` lands at ``[row[k], col[k]]``."""
    return x.new_zeros(rows * cols, x.shape[-1]).index_copy(0, row * cols + col, x).view(rows, cols, -1)


def _segments(group: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Runs of equal ids in a sorted (K,) tensor: (ids (S,), run of each element (K,), position
    of each element in its run (K,), run lengths (S,))."""
    ids, run, counts = torch.unique_consecutive(group, return_inverse=True, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts  # (S,)
    return ids, run, torch.arange(group.numel(), device=group.device) - starts[run], counts


class _Graph(nn.Module):
    """svip's GATv2Stack on packed nodes: frames holding one person skip the GAT layers."""

    def __init__(self, in_dim: int, hidden: int, layers: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.in_proj = nn.Linear(in_dim, hidden) if in_dim != hidden else nn.Identity()
        # frame_graph_edges includes the self loops, so the conv must not add them again
        self.layers = nn.ModuleList(
            GATv2Conv(hidden, hidden // heads, heads=heads, dropout=dropout, add_self_loops=False) for _ in range(layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        self.dropout = dropout

    def forward(self, x: Tensor, frame: Tensor, num_frames: int) -> Tensor:
        # x (V, D_in), frame (V,) sorted frame id -> (V, hidden)
        h = self.in_proj(x)
        crowded = (torch.bincount(frame, minlength=num_frames)[frame] > 1).nonzero().squeeze(1)  # (S,)
        if crowded.numel() == 0:
            return h
        hs = h[crowded]
        edge_index = frame_graph_edges(frame[crowded], num_frames)  # (2, E)
        for conv, norm in zip(self.layers, self.norms):
            hs = norm(F.dropout(F.elu(conv(hs, edge_index)), self.dropout, self.training)) + hs
        return h.index_copy(0, crowded, hs.to(h.dtype))  # under autocast LayerNorm gives float32


class _EventContext(nn.Module):
    """svip's EventTokenContext on packed person-frames."""

    def __init__(self, d_model: int, heads: int, ff_dim: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.event_token = nn.Parameter(torch.zeros(1, 1, d_model))
        self.event_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.event_temporal = _encoder(d_model, heads, ff_dim, layers, dropout, norm_first=True)
        self.gate = nn.Linear(2 * d_model, 1)

    def forward(self, tokens: Tensor, frame: Tensor, frames_per_clip: int) -> Tensor:
        # tokens (V, D), frame (V,) sorted id b * T + t -> (V, D)
        frame_ids, node_frame, slot, persons = _segments(frame)  # (G,), (V,), (V,), (G,)
        G, M = persons.numel(), int(persons.max())
        keys = _pad(tokens, node_frame, slot, G, M)  # (G, M, D)
        absent = torch.arange(M, device=tokens.device) >= persons.unsqueeze(1)  # (G, M)
        query = self.event_token.expand(G, 1, -1)  # (G, 1, D)
        event = self.event_attn(query, keys, keys, key_padding_mask=absent, need_weights=False)[0].squeeze(1)  # (G, D)

        _, frame_clip, position, frames = _segments(torch.div(frame_ids, frames_per_clip, rounding_mode="floor"))  # (G,), (G,), (C,)
        C, Fm = frames.numel(), int(frames.max())
        absent = torch.arange(Fm, device=tokens.device) >= frames.unsqueeze(1)  # (C, F)
        event = self.event_temporal(_pad(event, frame_clip, position, C, Fm), src_key_padding_mask=absent)  # (C, F, D)
        event = event[frame_clip, position][node_frame]  # (V, D)
        g = torch.sigmoid(self.gate(torch.cat([tokens, event], -1)))  # (V, 1)
        return (1.0 - g) * tokens + g * event


class _MeanPool(nn.Module):
    """svip's VideoLevelAggregator as configured (pooling "mean"): Transformer, masked mean, projection."""

    def __init__(self, d_model: int, heads: int, ff_dim: int, layers: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.video_transformer = _encoder(d_model, heads, ff_dim, layers, dropout, norm_first=False)
        self.output_projection = nn.Sequential(nn.Linear(d_model, out_dim), nn.LayerNorm(out_dim), nn.ReLU(), nn.Dropout(dropout))

    def forward(self, x: Tensor, present: Tensor) -> Tensor:
        # x (P, L, D), present (P, L) bool with >= 1 True per row -> (P, out_dim)
        x = self.video_transformer(x, src_key_padding_mask=~present)
        # where(), not a multiply: whatever a padded position holds never reaches the mean
        total = torch.where(present.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(1)  # (P, D)
        return self.output_projection(total / present.sum(1, keepdim=True).to(x.dtype))


class SvipRanker(nn.Module):
    r"""svip's importance ranker (see the module docstring for the pipeline).

    Args:
        config: hyper-parameters (svip's by default).
        feature_dims: ``{"appearance": D_cls, "svip_box": 14}``, exactly these two families.

    Shapes:
        - **input:** ``features[name]`` :math:`(B, T, N, D_{name})` float (float16 allowed),
          ``person_mask`` :math:`(B, T, N)` bool.
        - **output:** logits :math:`(B, N)` float32, :data:`~msgvip.ranker.model.INVALID_LOGIT`
          (``-inf``) at slots valid in no frame. Values of ``features`` at invalid person-frames
          are never read.

    Example::

        >>> config = SvipConfig(vision_dim=8, geom_hidden=8, geom_dim=8, fused_dim=16, gat_hidden=8, gat_heads=2,
        ...                     d_model=8, temporal_heads=2, ff_dim=16, pool_heads=2, pool_ff_dim=16, pool_dim=8)
        >>> model = SvipRanker(config, {"appearance": 12, "svip_box": 14}).eval()
        >>> mask = torch.rand(2, 10, 5) < 0.7
        >>> model({"appearance": torch.randn(2, 10, 5, 12), "svip_box": torch.rand(2, 10, 5, 14)}, mask).shape
        torch.Size([2, 5])
    """

    def __init__(self, config: SvipConfig, feature_dims: dict[str, int]) -> None:
        super().__init__()
        if set(feature_dims) != set(FAMILIES):
            raise ValueError(f"SvipRanker takes exactly the feature families {list(FAMILIES)}, got {sorted(feature_dims)}")
        self.config = config
        self.feature_dims = {name: feature_dims[name] for name in FAMILIES}
        c = config
        appearance = feature_dims["appearance"]
        self.vision_proj = nn.Linear(appearance, c.vision_dim, bias=False) if appearance != c.vision_dim else None
        self.geom = nn.Sequential(nn.Linear(feature_dims["svip_box"], c.geom_hidden), nn.ReLU(), nn.Linear(c.geom_hidden, c.geom_dim))
        self.geom.requires_grad_(not c.freeze_geom)
        self.fuse = nn.Sequential(nn.Linear(c.vision_dim + c.geom_dim, c.fused_dim), nn.ReLU(), nn.Dropout(c.features_dropout))
        self.gat = _Graph(c.fused_dim, c.gat_hidden, c.gat_layers, c.gat_heads, c.gat_dropout)
        self.to_dmodel = nn.Linear(c.gat_hidden, c.d_model)
        self.temporal_encoder = _encoder(c.d_model, c.temporal_heads, c.ff_dim, c.temporal_layers, c.temporal_dropout, norm_first=True)
        self.event_ctx = _EventContext(c.d_model, c.temporal_heads, c.ff_dim, c.event_layers, c.temporal_dropout) if c.event_token else None
        self.temporal_agg = _MeanPool(c.d_model, c.pool_heads, c.pool_ff_dim, c.pool_layers, c.pool_dim, c.temporal_dropout)
        self.scoring = _head(c.pool_dim, c.score_hidden, c.scoring_dropout)
        if c.dual_head:
            self.self_to_dmodel = nn.Linear(c.fused_dim, c.d_model)
            self.self_scoring = _head(c.pool_dim, c.score_hidden, c.scoring_dropout)
            self.gate_mlp = _head(2 * c.pool_dim, c.gate_hidden, c.gate_dropout)

    def forward(self, features: dict[str, Tensor], person_mask: Tensor) -> Tensor:
        if person_mask.dim() != 3:
            raise ValueError(f"person_mask must be (B, T, N), got shape {tuple(person_mask.shape)}")
        B, T, N = person_mask.shape
        for name, dim in self.feature_dims.items():
            if name not in features:
                raise KeyError(f"features lacks {name!r}; svip consumes {list(FAMILIES)}")
            if tuple(features[name].shape) != (B, T, N, dim):
                raise ValueError(f"features[{name!r}] has shape {tuple(features[name].shape)}, expected {(B, T, N, dim)} from person_mask")
        mask = person_mask.to(torch.bool)
        device, dtype = mask.device, self.to_dmodel.weight.dtype
        logits = torch.full((B, N), INVALID_LOGIT, dtype=torch.float32, device=device)
        node_b, node_t, node_n = mask.nonzero(as_tuple=True)  # (V,) each, in (b, t, n) order
        if node_b.numel() == 0:
            return logits

        vision = features["appearance"][node_b, node_t, node_n].to(dtype)  # (V, D_cls)
        if self.vision_proj is not None:
            vision = self.vision_proj(vision)
        vision = F.normalize(vision, dim=-1)
        box = self.geom(features["svip_box"][node_b, node_t, node_n].to(dtype))  # (V, geom_dim)
        fused = self.fuse(torch.cat([vision, box], -1))  # (V, fused_dim)
        frame = node_b * T + node_t  # (V,) ascending
        social = self.gat(fused, frame, B * T)  # (V, gat_hidden)

        # each person's present frames, in time order, packed into (P, L)
        person_valid = mask.any(1)  # (B, N)
        frames_present = mask.sum(1)  # (B, N)
        person = (torch.cumsum(person_valid.flatten(), 0) - 1).view(B, N)[node_b, node_n]  # (V,)
        position = (torch.cumsum(mask, 1) - 1)[node_b, node_t, node_n]  # (V,) rank among the person's frames
        P, L = int(person_valid.sum()), int(frames_present.max())
        present = torch.arange(L, device=device) < frames_present[person_valid].unsqueeze(1)  # (P, L)

        def sequences(x: Tensor) -> Tensor:  # (V, D) -> (P, L, D)
            return _pad(x, person, position, P, L)

        relation = self.temporal_encoder(sequences(self.to_dmodel(social)), src_key_padding_mask=~present)  # (P, L, d_model)
        if self.event_ctx is not None:
            relation = sequences(self.event_ctx(relation[person, position], frame, T))
        relation = self.temporal_agg(relation, present)  # (P, pool_dim)
        score = self.scoring(relation).squeeze(-1)  # (P,)
        if self.config.dual_head:
            own = self.temporal_encoder(sequences(self.self_to_dmodel(fused)), src_key_padding_mask=~present)
            own = self.temporal_agg(own, present)  # (P, pool_dim)
            gate = torch.sigmoid(self.gate_mlp(torch.cat([own, relation], -1))).squeeze(-1)  # (P,)
            score = (1.0 - gate) * self.self_scoring(own).squeeze(-1) + gate * score
        # persons are in (b, n) row-major order, the order masked_scatter fills
        return logits.masked_scatter(person_valid, score.float())

    def loss_terms(self, logits: Tensor, target: Tensor, valid: Tensor, train: LossSettings) -> RankingLossTerms:
        """svip's loss (see :func:`svip_loss_terms`); ``train`` (the TrainConfig) is not consulted:
        svip's loss has no margin."""
        return svip_loss_terms(logits, target, valid, self.config.preference_weight, self.config.preference_beta)

    def extra_repr(self) -> str:
        return f"feature_dims={self.feature_dims}"


def svip_loss_terms(logits: Tensor, target: Tensor, valid: Tensor, preference_weight: float = 0.3, beta: float = 1.0) -> RankingLossTerms:
    r"""svip's CombinedLoss: masked cross-entropy plus its soft-negative preference term.

    For a labeled clip with target logit :math:`s_t` and the other valid persons :math:`O`:
    ``preference`` :math:`= \mathrm{softplus}(\beta (\log \frac{1}{|O|} \sum_{j \in O} e^{s_j} - s_t))`,
    0 for a clip with one person. Both terms are averaged over the labeled clips (``target >= 0``);
    ``total = ce + preference_weight * preference``; the returned ``pairwise`` field holds the
    unweighted preference term. Shapes and checks as :func:`~msgvip.ranker.losses.ranking_loss_terms`.
    """
    ce = ranking_loss_terms(logits, target, valid, pairwise_weight=0.0).ce  # also checks shapes and targets
    valid, target = valid.to(torch.bool), target.long()
    rows = (target >= 0).nonzero().flatten()
    if rows.numel() == 0:
        return RankingLossTerms(ce, ce, ce)
    finite = torch.where(valid, logits.float(), torch.zeros_like(logits, dtype=torch.float32))[rows]  # (R, N)
    t = target[rows]
    positive = finite.gather(1, t.unsqueeze(1)).squeeze(1)  # (R,)
    others = valid[rows].clone()
    others[torch.arange(rows.numel(), device=others.device), t] = False  # (R, N)
    has_others = others.any(1)  # (R,)
    # a row with no other person takes zeros instead of all -inf, whose logsumexp has a NaN gradient
    fill = torch.where(has_others, float("-inf"), 0.0).unsqueeze(1)  # (R, 1)
    soft_negative = torch.logsumexp(torch.where(others, finite, fill), 1) - others.sum(1).clamp(min=1).log()  # (R,)
    preference = torch.where(has_others, F.softplus(beta * (soft_negative - positive)), 0.0).mean()
    return RankingLossTerms(ce + preference_weight * preference, ce, preference)
