"""The ``rgt`` preset: the reference-000 system (``proj_msgvip``) as a ranker on msgvip's store.

Rule-based multi-relation graph -> relation-typed graph attention -> GRU memory per person ->
video-level attention pooling -> scoring head; trained with cross-entropy + pairwise ranking +
a contrastive term.

1. **Rule edges**, per frame, between the valid persons of that frame only (from the stored
   geometry, and pose / face when the store holds them):

   - ``spatial``: the nearest others, distance between box centres in units of the pair's mean
     box height (so a near and a far pair of neighbours count alike);
   - ``attention``: whom a person faces. The gaze direction is the head yaw of ``face`` where
     the head is visible, else the yaw read from the ``pose`` head keypoints, else (geometry
     only) the direction the person has moved over the last ``motion_window`` frames: people
     face where they walk. An edge ``i -> j`` needs the cosine between ``i``'s gaze and the
     direction to ``j`` (scaled by how sure the gaze is) to reach ``attention_min``;
   - ``synchronization``: persons moving together, from the same windowed displacement: the dot
     product of the two displacements over the larger one's squared length reaches ``sync_min``.

   Each person keeps its ``top_k`` best-scoring others per relation (out-edges ``i -> j``: the
   message flows from ``i`` to ``j``, so ``j`` hears who looks at it). Ties at the k-th score are
   all kept, so the graph does not depend on slot order.
2. **Relation-typed GATv2**: per layer one ``torch_geometric.nn.GATv2Conv`` per relation (own
   weights, own self loops), summed, residual + LayerNorm. GATv2's softmax normalises away how
   many edges reach a node, and "many people look at her" is the cue, so each node also gets its
   in-degree share and mean incoming rule score per relation as input features.
3. **GRU memory** over each person's present frames, packed (absent frames are skipped, not
   zero-filled), bidirectional by default: importance is judged on the whole clip.
4. **Video-level aggregator**: multi-head attention pooling over the person's present frames.
5. **Scoring head**: MLP on the person's embedding and its difference from the clip's mean
   person, so the score is relative to the others of the clip.

Like :class:`msgvip.ranker.model.ImportanceRanker`, every stage runs on packed valid entries:
the nodes are ``mask.nonzero()``, candidate pairs come from
:func:`msgvip.ranker.model.frame_graph_edges`, persons are packed ``(P, L, H)``. Feature values
at invalid person-frames are never read, and slot permutations or extra padded slots / frames
leave the real persons' scores unchanged (up to float summation order).

Shape letters: B clips, T frames, N person slots, H hidden size, V valid person-frames (nodes),
C candidate pairs (ordered, same frame, no self pair), E kept edges of a relation, P persons
valid in at least one frame, L most present frames of one person, R relations, M most persons
of one frame.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch_geometric.nn import GATv2Conv

from ..domains import check_fields, ranged
from .losses import LossSettings, RankingLossTerms, ranking_loss_terms
from .model import INVALID_LOGIT, frame_graph_edges

__all__ = ["RELATIONS", "TRAIN_DEFAULTS", "RelationalGraphTemporalRanker", "RgtConfig", "RuleGraph"]

RELATIONS = ("spatial", "attention", "synchronization")

#: The geometry family's column names in store order (``msgvip.extract.geometry.GEOMETRY_FEATURES``
#: today; the ranker does not import extraction, so a test keeps the two equal).
DEFAULT_GEOMETRY_COLUMNS = (
    "x1", "y1", "x2", "y2", "cx", "cy", "w", "h", "area", "log_aspect", "center_dist", "group_dist",
    "size_rank", "vx", "vy", "ax", "ay", "visibility",
)  # fmt: skip
#: The geometry columns the rules read: box centre (frame units) and box height.
RULE_COLUMNS = ("cx", "cy", "h")
#: Store layouts the gaze rule reads when the family is present: ``pose`` is (K, 3) per
#: person-frame flattened to 3K (x, y relative to the box, score), its first five keypoints the
#: COCO head (nose, left eye, right eye, left ear, right ear); ``face`` ends with yaw, pitch,
#: visibility.
HEAD_KEYPOINTS = 5
FACE_TAIL = 3

#: TrainConfig overrides for this preset. lr 1e-3 rather than 3e-4: on the demo data (geometry,
#: 2 seeds, 36 val clips) val Rank@1 was 0.917 / 0.889 against 0.861 / 0.889, best epoch 3-4
#: against 3-6; a small edge (one val clip is 0.028), kept because it is never worse there.
TRAIN_DEFAULTS: dict[str, object] = {"lr": 1e-3}


@dataclass(frozen=True)
class RgtConfig:
    """Hyper-parameters of :class:`RelationalGraphTemporalRanker`: plain values, saved whole.

    ``RgtConfig(**d)`` rejects unknown keys and values of the wrong type (``TypeError``);
    inconsistent values raise ``ValueError``. ``geometry_columns`` names the geometry family's
    columns in store order (a list is accepted and kept as a tuple, so a config read back from
    JSON compares equal); it must contain :data:`RULE_COLUMNS`.
    """

    hidden: int = ranged(128, 1, 65536)  # H
    heads: int = ranged(4, 1)  # GATv2 heads per relation; hidden must be divisible by heads
    graph_layers: int = ranged(2, 0, 64)  # relation-typed GATv2 layers
    top_k: int = ranged(4, 1, 1024)  # out-edges kept per person, frame and relation
    attention_min: float = ranged(0.5, -1, 1)  # least gaze-direction cosine for an attention edge
    sync_min: float = ranged(0.5, -1, 1)  # least normalised displacement product for a synchronization edge
    motion_window: int = ranged(8, 1, 10**6)  # frames over which a person's displacement (heading) is measured
    motion_eps: float = ranged(0.01, 0, low_open=True)  # displacement (frame units) below which a person counts as still
    head_min_score: float = ranged(0.3, 0, 1)  # pose keypoint score for a head keypoint to count as seen
    gru_layers: int = ranged(1, 1, 64)
    bidirectional: bool = True
    pool_heads: int = ranged(4, 1)  # heads of the attention pooling over time; hidden divisible by it
    dropout: float = ranged(0.1, 0, 1, high_open=True)
    contrastive_weight: float = ranged(0.1, 0)  # weight of the contrastive term in the total loss
    contrastive_temperature: float = ranged(0.2, 0, low_open=True)
    geometry_columns: tuple[str, ...] = DEFAULT_GEOMETRY_COLUMNS

    def __post_init__(self) -> None:
        columns = self.geometry_columns
        if isinstance(columns, list):
            object.__setattr__(self, "geometry_columns", columns := tuple(columns))
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "geometry_columns":
                ok = isinstance(value, tuple) and all(isinstance(c, str) for c in value)
            else:
                expected = {"int": int, "float": (int, float), "bool": bool}[str(f.type)]
                ok = isinstance(value, expected) and not (isinstance(value, bool) and f.type != "bool")
            if not ok:
                raise TypeError(f"RgtConfig.{f.name} must be {f.type}, got {type(value).__name__} {value!r}")
        check_fields(self)
        for name in ("heads", "pool_heads"):
            if self.hidden % getattr(self, name):
                raise ValueError(f"RgtConfig.hidden={self.hidden} must be divisible by {name}={getattr(self, name)}")
        if self.bidirectional and self.hidden % 2:
            raise ValueError(f"RgtConfig.hidden={self.hidden} must be even with bidirectional=True")
        missing = [c for c in RULE_COLUMNS if c not in columns]
        if missing:
            raise ValueError(f"RgtConfig.geometry_columns lacks {missing} (the rules need {list(RULE_COLUMNS)}); got {list(columns)}")

    def to_dict(self) -> dict[str, int | float | bool | list[str]]:
        # a list, not a tuple: the dict goes to JSON and TOML, which have no tuples
        return {**asdict(self), "geometry_columns": list(self.geometry_columns)}


class RuleGraph(NamedTuple):
    """The rule graph of a batch, over packed nodes (the valid person-frames, (b, t, n) order).

    ``edges[r]`` is (2, E_r) long, row 0 the source node, row 1 the target node; ``scores[r]``
    (E_r,) the rule score of each edge; ``candidates`` the number C of ordered same-frame pairs.
    """

    node_b: Tensor  # (V,)
    node_t: Tensor  # (V,)
    node_n: Tensor  # (V,)
    edges: dict[str, Tensor]
    scores: dict[str, Tensor]
    candidates: int


class _RelationalLayer(nn.Module):
    """One GATv2Conv per relation, summed: ``x <- LN(x + dropout(GELU(sum_r GAT_r(x, E_r))))``."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        # own self loops per relation: a node no rule connects still keeps its own message
        self.convs = nn.ModuleDict({r: GATv2Conv(hidden, hidden // heads, heads=heads) for r in RELATIONS})
        self.norm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, edges: dict[str, Tensor]) -> tuple[Tensor, dict[str, tuple[Tensor, Tensor]]]:
        # x (V, H), edges[r] (2, E_r) -> (V, H), {r: (edge index with self loops (2, E_r + V), alpha (E_r + V, heads))}
        total, attention = 0, {}
        for r, conv in self.convs.items():
            out, attention[r] = conv(x, edges[r], return_attention_weights=True)
            total = total + out
        return self.norm(x + self.dropout(F.gelu(total))), attention


class _TimePooling(nn.Module):
    """Multi-head attention pooling over each person's present frames (the video-level aggregator)."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        # random, not zero: a zero query would leave the keys without a gradient at the first step
        self.query = nn.Parameter(torch.randn(heads, hidden // heads) / math.sqrt(hidden // heads))
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor, present: Tensor) -> Tensor:
        # x (P, L, H), present (P, L) bool with >= 1 True per row -> (P, H)
        P, L, H = x.shape
        d = H // self.heads
        k = self.key(x).view(P, L, self.heads, d)
        v = self.value(x).view(P, L, self.heads, d)
        score = torch.einsum("hd,plhd->plh", self.query, k) / math.sqrt(d)  # (P, L, heads)
        score = score.masked_fill(~present.unsqueeze(-1), float("-inf"))
        alpha = score.softmax(dim=1)  # (P, L, heads)
        return self.out(torch.einsum("plh,plhd->phd", alpha, v).reshape(P, H))


class RelationalGraphTemporalRanker(nn.Module):
    r"""Scores every person slot of a clip by importance (higher = more important); see the module
    docstring for the pipeline.

    Args:
        config: hyper-parameters.
        feature_dims: family name -> per person-frame feature size; must include ``"geometry"``
            with ``len(config.geometry_columns)`` columns. ``"pose"`` (3K, K >= 5) and ``"face"``
            (>= 3) feed the gaze rule when present; every family is also a node feature.

    Shapes:
        - **input:** ``features[name]`` :math:`(B, T, N, D_{name})` float, ``person_mask``
          :math:`(B, T, N)` bool.
        - **output:** logits :math:`(B, N)` float32, :data:`~msgvip.ranker.model.INVALID_LOGIT`
          at slots valid in no frame. Values of ``features`` at invalid person-frames are never read.

    After each forward the model keeps the persons' embeddings for :meth:`loss_terms`; in
    training mode it also accumulates graph statistics that :meth:`diagnostics` returns.

    Example::

        >>> model = RelationalGraphTemporalRanker(RgtConfig(hidden=32), {"geometry": 18}).eval()
        >>> mask = torch.rand(2, 10, 5) < 0.7
        >>> model({"geometry": torch.rand(2, 10, 5, 18)}, mask).shape
        torch.Size([2, 5])
    """

    def __init__(self, config: RgtConfig, feature_dims: dict[str, int]) -> None:
        super().__init__()
        if "geometry" not in feature_dims:
            raise ValueError(f"the rgt model needs the 'geometry' family for its rule edges; feature_dims has {sorted(feature_dims)}")
        bad = {k: v for k, v in feature_dims.items() if not isinstance(v, int) or isinstance(v, bool) or v < 1}
        if bad:
            raise ValueError(f"feature_dims values must be positive ints, got {bad}")
        if feature_dims["geometry"] != len(config.geometry_columns):
            raise ValueError(
                f"geometry has {feature_dims['geometry']} columns but RgtConfig.geometry_columns names "
                f"{len(config.geometry_columns)}; set geometry_columns to the store's geometry feature names"
            )
        if "pose" in feature_dims and (feature_dims["pose"] % 3 or feature_dims["pose"] < 3 * HEAD_KEYPOINTS):
            raise ValueError(f"pose must be K x 3 (K >= {HEAD_KEYPOINTS}) flattened, got {feature_dims['pose']} values")
        if "face" in feature_dims and feature_dims["face"] < FACE_TAIL:
            raise ValueError(f"face must end with yaw, pitch, visibility; got {feature_dims['face']} values")
        self.config = config
        self.feature_dims = dict(sorted(feature_dims.items()))  # fixed order: the sum is stable
        self.rule_columns = [config.geometry_columns.index(c) for c in RULE_COLUMNS]
        H = config.hidden

        self.input_norms = nn.ModuleDict({k: nn.LayerNorm(d) for k, d in self.feature_dims.items()})
        self.input_projs = nn.ModuleDict({k: nn.Linear(d, H) for k, d in self.feature_dims.items()})
        self.fuse_norm = nn.LayerNorm(H)
        self.graph_cues = nn.Linear(2 * len(RELATIONS), H)  # in-degree share + mean incoming score
        self.dropout = nn.Dropout(config.dropout)
        self.graph = nn.ModuleList(_RelationalLayer(H, config.heads, config.dropout) for _ in range(config.graph_layers))
        self.gru = nn.GRU(
            H, H // 2 if config.bidirectional else H, num_layers=config.gru_layers, batch_first=True,
            bidirectional=config.bidirectional, dropout=config.dropout if config.gru_layers > 1 else 0.0,
        )  # fmt: skip
        self.pool = _TimePooling(H, config.pool_heads)
        self.person_norm = nn.LayerNorm(H)
        # no output bias: a shift shared by every person changes no loss and no rank
        self.head = nn.Sequential(nn.Linear(2 * H, H), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(H, 1, bias=False))

        self._last: tuple[Tensor, Tensor, Tensor] | None = None  # (z (P, H), person_valid (B, N), person_id (B, N))
        self._stats: dict[str, Tensor] = {}

    # ------------------------------------------------------------------------------------ graph
    def build_graph(self, features: dict[str, Tensor], person_mask: Tensor) -> RuleGraph:
        """The rule graph of a batch (see the module docstring); reads valid person-frames only."""
        mask = person_mask.to(torch.bool)
        B, T, N = mask.shape
        node_b, node_t, node_n = mask.nonzero(as_tuple=True)  # (V,) each
        V = node_b.numel()
        # rules in float32 whatever the autocast: exact ties and thresholds keep slot-order invariance
        with torch.autocast(mask.device.type, enabled=False):
            geometry = features["geometry"][node_b, node_t, node_n].float()  # (V, G)
            centre = geometry[:, self.rule_columns[:2]]  # (V, 2)
            height = geometry[:, self.rule_columns[2]]  # (V,)
            motion = self._displacement(centre, mask, node_b, node_t, node_n)  # (V, 2)
            gaze = self._gaze(features, motion, node_b, node_t, node_n)  # (V, 2)

            pairs = frame_graph_edges(node_b * T + node_t, B * T)  # (2, C + V), self pairs included
            pairs = pairs[:, pairs[0] != pairs[1]]  # (2, C)
            src, dst = pairs
            offset = centre[dst] - centre[src]  # (C, 2)
            distance = offset.norm(dim=1)  # (C,)
            scale = (0.5 * (height[src] + height[dst])).clamp(min=1e-3)
            direction = offset / distance.clamp(min=1e-6)[:, None]  # (C, 2) unit vector src -> dst
            larger = torch.maximum(motion[src].pow(2).sum(1), motion[dst].pow(2).sum(1))  # (C,)
            rules = {
                "spatial": (-distance / scale, None),
                "attention": ((gaze[src] * direction).sum(1), self.config.attention_min),
                "synchronization": ((motion[src] * motion[dst]).sum(1) / (larger + self.config.motion_eps**2), self.config.sync_min),
            }
            edges, scores = {}, {}
            for r, (score, least) in rules.items():
                keep = self._top_k(score, src, V, least)
                edges[r], scores[r] = pairs[:, keep], score[keep]
        return RuleGraph(node_b, node_t, node_n, edges, scores, int(src.numel()))

    def _top_k(self, score: Tensor, src: Tensor, num_nodes: int, least: float | None) -> Tensor:
        """(C,) bool: the pairs among each source's ``top_k`` best scores (ties at the k-th kept),
        at least ``least`` when given."""
        eligible = torch.ones_like(score, dtype=torch.bool) if least is None else score >= least
        ranked = torch.where(eligible, score, torch.full_like(score, float("-inf")))
        # dense (V, M) table of each source's candidate scores, one column per candidate
        first = torch.full((num_nodes,), src.numel(), dtype=torch.long, device=src.device)
        first = first.scatter_reduce(0, src, torch.arange(src.numel(), device=src.device), "amin")  # (V,)
        column = torch.arange(src.numel(), device=src.device) - first[src]  # (C,) candidates of a source are contiguous
        width = int(column.max()) + 1 if column.numel() else 1
        table = score.new_full((num_nodes, width), float("-inf")).index_put((src, column), ranked)  # (V, M)
        kth = table.topk(min(self.config.top_k, width), dim=1).values[:, -1]  # (V,)
        return eligible & (ranked >= kth[src])

    def _displacement(self, centre: Tensor, mask: Tensor, node_b: Tensor, node_t: Tensor, node_n: Tensor) -> Tensor:
        """(V, 2): each node's centre minus the person's centre at its earliest present frame within
        the last ``motion_window`` frames (zero at a person's first frame). Smoothed over a window
        because frame-to-frame velocity is mostly detector jitter."""
        B, T, N = mask.shape
        w = self.config.motion_window
        person_valid = mask.any(1)  # (B, N)
        P = int(person_valid.sum())
        person_id = torch.cumsum(person_valid.flatten(), 0).view(B, N) - 1  # (B, N)
        node_p = person_id[node_b, node_n]  # (V,)
        present = mask.transpose(1, 2)[person_valid]  # (P, T)
        track = centre.new_zeros(P * T, 2).index_copy(0, node_p * T + node_t, centre).view(P, T, 2)
        frame = torch.arange(T, device=mask.device).expand(P, T)
        stamp = torch.where(present, frame, T + w)  # (P, T): absent frames never win the min
        stamp = F.pad(stamp, (w, 0), value=T + w)  # (P, T + w)
        start = stamp.unfold(1, w + 1, 1).amin(-1)  # (P, T) earliest present frame in [t - w, t]
        origin = track.gather(1, start.clamp(max=T - 1).unsqueeze(-1).expand(P, T, 2))  # (P, T, 2)
        return (track - origin)[node_p, node_t]

    def _gaze(self, features: dict[str, Tensor], motion: Tensor, node_b: Tensor, node_t: Tensor, node_n: Tensor) -> Tensor:
        """(V, 2) gaze direction in frame coordinates, length = confidence in [0, 1]: face yaw,
        else pose yaw, else the walking direction (see the module docstring)."""
        speed = motion.norm(dim=1, keepdim=True)  # (V, 1)
        gaze = motion / (speed + self.config.motion_eps)  # walking direction, short when nearly still
        if "pose" in self.feature_dims:
            keypoints = self.feature_dims["pose"] // 3
            pose = features["pose"][node_b, node_t, node_n].float().view(-1, keypoints, 3)[:, :HEAD_KEYPOINTS]  # (V, 5, 3)
            seen = pose[..., 2] >= self.config.head_min_score  # (V, 5)
            others = seen[:, 1:].float()  # (V, 4) eyes and ears
            count = others.sum(1)
            mean_x = (pose[:, 1:, 0] * others).sum(1) / count.clamp(min=1)  # (V,)
            seen_x = torch.where(seen[:, 1:], pose[:, 1:, 0], mean_x[:, None])  # (V, 4), unseen at the mean
            spread = seen_x.amax(1) - seen_x.amin(1)
            # the nose sits ahead of the eyes and ears in the direction the head turns; the 0.05
            # (a twentieth of the box width) keeps a single seen eye or ear from saturating the yaw
            yaw = ((pose[:, 0, 0] - mean_x) / (spread / 2 + 0.05)).clamp(-1, 1)
            known = seen[:, 0] & (count >= 1)
            gaze = torch.where(known[:, None], torch.stack([yaw, torch.zeros_like(yaw)], 1), gaze)
        if "face" in self.feature_dims:
            face = features["face"][node_b, node_t, node_n][:, -FACE_TAIL:].float()  # (V, 3) yaw, pitch, visibility
            known = face[:, 2] > 0
            gaze = torch.where(known[:, None], torch.stack([face[:, 0], torch.zeros_like(face[:, 0])], 1), gaze)
        return gaze

    @staticmethod
    def _cues(graph: RuleGraph, num_nodes: int, group_size: Tensor) -> Tensor:
        """(V, 2R) per relation: share of the frame's others with an edge to the node, and the
        mean rule score of those edges (0 when none)."""
        others = (group_size - 1).clamp(min=1).float()  # (V,)
        columns = []
        for r in RELATIONS:
            dst = graph.edges[r][1]
            count = torch.zeros(num_nodes, device=dst.device).index_add(0, dst, torch.ones_like(graph.scores[r]))
            total = torch.zeros(num_nodes, device=dst.device).index_add(0, dst, graph.scores[r])
            columns += [count / others, total / count.clamp(min=1)]
        return torch.stack(columns, 1)

    # ---------------------------------------------------------------------------------- forward
    def forward(self, features: dict[str, Tensor], person_mask: Tensor) -> Tensor:
        if person_mask.dim() != 3:
            raise ValueError(f"person_mask must be (B, T, N), got shape {tuple(person_mask.shape)}")
        B, T, N = person_mask.shape
        missing = [k for k in self.feature_dims if k not in features]
        if missing:
            raise KeyError(f"features lacks {missing}; the model was built for {list(self.feature_dims)}")
        for name, dim in self.feature_dims.items():
            if tuple(features[name].shape) != (B, T, N, dim):
                raise ValueError(f"features[{name!r}] has shape {tuple(features[name].shape)}, expected (B, T, N, {dim}) = {(B, T, N, dim)} from person_mask")
        mask = person_mask.to(torch.bool)
        device, dtype = mask.device, self.fuse_norm.weight.dtype
        logits = torch.full((B, N), INVALID_LOGIT, dtype=torch.float32, device=device)
        person_valid = mask.any(1)  # (B, N)
        person_id = torch.cumsum(person_valid.flatten(), 0).view(B, N) - 1  # (B, N), -1 unused
        graph = self.build_graph(features, mask)
        node_b, node_t, node_n = graph.node_b, graph.node_t, graph.node_n
        V = node_b.numel()
        if V == 0:
            self._last = (logits.new_zeros(0, self.config.hidden), person_valid, person_id)
            return logits

        # -- node features: fused families + the rule graph's in-degree cues ----------------------
        x = sum(self.input_projs[k](self.input_norms[k](features[k][node_b, node_t, node_n].to(dtype))) for k in self.feature_dims)
        group_size = torch.bincount(node_b * T + node_t, minlength=B * T)[node_b * T + node_t]  # (V,) persons in the node's frame
        cues = self._cues(graph, V, group_size)  # (V, 2R)
        x = self.dropout(self.fuse_norm(F.gelu(x + self.graph_cues(cues.to(dtype)))))  # (V, H)

        # -- relation-typed graph attention ----------------------------------------------------
        attention = []
        for layer in self.graph:
            x, alpha = layer(x, graph.edges)
            attention.append(alpha)

        # -- GRU memory over each person's present frames, packed --------------------------------
        present = mask.transpose(1, 2)[person_valid]  # (P, T)
        P, H = present.shape[0], x.shape[1]
        node_p = person_id[node_b, node_n]  # (V,)
        lengths = present.sum(1)  # (P,) >= 1
        L = int(lengths.max())
        step = (present.cumsum(1) - 1)[node_p, node_t]  # (V,) index among the person's present frames
        seq = x.new_zeros(P * L, H).index_copy(0, node_p * L + step, x).view(P, L, H)
        packed = pack_padded_sequence(seq, lengths.cpu(), batch_first=True, enforce_sorted=False)
        seq = pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=L)[0]  # (P, L, H)

        # -- video-level aggregation and scoring relative to the clip ----------------------------
        steps_present = torch.arange(L, device=device) < lengths[:, None]  # (P, L)
        z = self.person_norm(self.pool(seq, steps_present))  # (P, H)
        person_b = person_valid.nonzero(as_tuple=True)[0]  # (P,)
        clip_sum = z.new_zeros(B, H).index_add(0, person_b, z)
        clip_mean = clip_sum / person_valid.sum(1, keepdim=True).clamp(min=1).to(z.dtype)  # (B, H)
        score = self.head(torch.cat([z, z - clip_mean[person_b]], 1)).squeeze(-1)  # (P,)

        self._last = (z, person_valid, person_id)
        if self.training:
            self._collect(graph, attention, group_size)
        # persons are in (b, n) row-major order, the same order masked_scatter fills
        return logits.masked_scatter(person_valid, score.float())

    # ------------------------------------------------------------------------------------- loss
    def loss_terms(self, logits: Tensor, target: Tensor, valid: Tensor, train: LossSettings) -> RankingLossTerms:
        """Masked CE + pairwise margin ranking (``train.margin``, ``train.pairwise_weight``) +
        ``config.contrastive_weight`` x a supervised contrastive term on the embeddings of the
        last forward: each labeled clip's important person is pulled towards the important
        persons of the batch's other clips and away from every bystander (cosine similarity over
        ``config.contrastive_temperature``; zero with fewer than two labeled clips).

        ``total`` includes all three; ``ce`` and ``pairwise`` are unweighted. ``logits``, ``valid``
        and ``target`` are those of the last forward's batch.
        """
        if self._last is None:
            raise RuntimeError("loss_terms needs a forward pass first: it reads that pass's person embeddings")
        z, person_valid, person_id = self._last
        if valid.shape != person_valid.shape or not torch.equal(valid.to(torch.bool), person_valid):
            raise ValueError(f"loss_terms: valid {tuple(valid.shape)} is not the person mask of the last forward {tuple(person_valid.shape)}")
        terms = ranking_loss_terms(logits, target, valid, train.margin, train.pairwise_weight)
        contrastive = self._contrastive(z, person_id, target.long())
        if self.training:
            self._add("contrastive", contrastive.detach().float())
        return RankingLossTerms(terms.total + self.config.contrastive_weight * contrastive, terms.ce, terms.pairwise)

    def _contrastive(self, z: Tensor, person_id: Tensor, target: Tensor) -> Tensor:
        labeled = (target >= 0).nonzero(as_tuple=True)[0]  # (A,) clips with a label
        if labeled.numel() < 2:
            return z.sum() * 0.0  # still connected to the graph: backward() works
        anchor = person_id[labeled, target[labeled]]  # (A,) person index of each target
        unit = F.normalize(z.float(), dim=1)  # (P, H)
        similarity = unit[anchor] @ unit.t() / self.config.contrastive_temperature  # (A, P)
        is_self = torch.zeros_like(similarity, dtype=torch.bool)
        is_self[torch.arange(anchor.numel(), device=z.device), anchor] = True
        positive = torch.zeros_like(is_self)
        positive[:, anchor] = True  # the other clips' important persons
        positive &= ~is_self
        similarity = similarity.masked_fill(is_self, float("-inf"))
        log_all = torch.logsumexp(similarity, 1)  # (A,)
        log_positive = torch.logsumexp(similarity.masked_fill(~positive, float("-inf")), 1)
        return (log_all - log_positive).mean()

    # ------------------------------------------------------------------------------ diagnostics
    def _add(self, name: str, value: Tensor) -> None:
        # summed as tensors on the device: no host sync per batch
        self._stats[name] = self._stats.get(name, 0) + value

    @torch.no_grad()
    def _collect(self, graph: RuleGraph, attention: list[dict[str, tuple[Tensor, Tensor]]], group_size: Tensor) -> None:
        V = graph.node_b.numel()
        one = torch.ones((), device=graph.node_b.device)
        self._add("batches", one)
        self._add("nodes", one * V)
        self._add("candidates", one * graph.candidates)
        self._add("persons_per_frame", group_size.float().sum())
        for r in RELATIONS:
            E = graph.edges[r].shape[1]
            self._add(f"{r}_edges", one * E)
            heard = torch.zeros(V, dtype=torch.bool, device=one.device)
            heard[graph.edges[r][1]] = True
            self._add(f"{r}_isolated", (~heard).float().sum())
            for layer in attention:
                index, alpha = layer[r]
                alpha = alpha.float().mean(1)  # (E_r + V,) averaged over heads
                entropy = torch.zeros(V, device=one.device).index_add(0, index[1], -alpha * alpha.clamp(min=1e-12).log())
                own = alpha[index[0] == index[1]].sum()  # each node's self-loop weight, summed
                self._add(f"{r}_gat_entropy", entropy.sum() / len(attention))
                self._add(f"{r}_gat_self", own / len(attention))

    def diagnostics(self) -> dict[str, float]:
        """Graph statistics of the training forwards since the last call, then reset (``{}`` when
        there were none); meant to be written once per epoch (``records/graph_stats.csv``).

        Keys: ``batches``, ``persons_per_frame`` (mean valid persons in a node's frame),
        ``contrastive`` (mean contrastive loss, when :meth:`loss_terms` ran), and per relation
        ``{r}_edges_per_node`` (mean out-degree), ``{r}_density`` (kept edges / ordered
        same-frame pairs), ``{r}_isolated`` (share of nodes no edge of ``r`` reaches),
        ``{r}_gat_entropy`` (mean entropy of a node's GATv2 attention over its incoming
        edges and self loop, averaged over heads and layers; 0 = all on one edge) and
        ``{r}_gat_self`` (mean weight on the node's own self loop).
        """
        stats = {k: float(v) for k, v in self._stats.items()}
        self._stats = {}
        if not stats:
            return {}
        nodes = max(stats["nodes"], 1.0)
        out = {"batches": stats["batches"], "persons_per_frame": stats["persons_per_frame"] / nodes}
        if "contrastive" in stats:
            out["contrastive"] = stats["contrastive"] / stats["batches"]
        for r in RELATIONS:
            out[f"{r}_edges_per_node"] = stats[f"{r}_edges"] / nodes
            out[f"{r}_density"] = stats[f"{r}_edges"] / max(stats["candidates"], 1.0)
            out[f"{r}_isolated"] = stats[f"{r}_isolated"] / nodes
            if self.graph:
                out[f"{r}_gat_entropy"] = stats[f"{r}_gat_entropy"] / nodes
                out[f"{r}_gat_self"] = stats[f"{r}_gat_self"] / nodes
        return out

    def extra_repr(self) -> str:
        return f"feature_dims={self.feature_dims}, relations={RELATIONS}"
