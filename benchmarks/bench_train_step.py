"""Forward and backward time of one ranker training step: ImportanceRanker vs the user's original.

Both models get the same batch (default: the user's real shape, 8 clips x 120 frames x 20 person
slots, ~6 persons present per frame, 768-d appearance + 18-d geometry per person-frame), the same
loss (``ranking_loss``) and no optimizer step. "forward" is model + loss, "backward" is
``loss.backward()``; gradients are cleared outside the timed regions.

The BASELINE reproduces the user's way of computing the same architecture (reference 001):
width 768 throughout, a Python loop over frames calling a 2-layer x 4-head GATv2
(``torch_geometric.nn.GATv2Conv``) on all N slots of every clip (padding included), then a
2-layer x 12-head temporal Transformer over every slot (B * N sequences of length T, key padding
for absent frames), an event token, attention pooling and the dual head. The user measured
22.6 s forward + 21.7 s backward per step for their model on a 2-core CPU. (Their README notes the
dual head doubled their cost; this baseline runs the temporal Transformer once, so the ratio
printed here is conservative.)

    python benchmarks/bench_train_step.py                 # full size, CPU
    python benchmarks/bench_train_step.py --quick         # tiny smoke run
    python benchmarks/bench_train_step.py --device cuda --repeats 20 --json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GATv2Conv

from msgvip.ranker.losses import ranking_loss
from msgvip.ranker.model import ImportanceRanker, RankerConfig

FEATURE_DIMS = {"appearance": 768, "geometry": 18}


def make_batch(B: int, T: int, N: int, valid: int, device: str, seed: int = 0):
    """Random clips shaped like the user's: person tracks in random slots, visible in spans.

    Each clip has ``K = ceil(valid / 0.75)`` persons (at most N) in random slots; each is visible in
    one contiguous span of 50-100 % of the frames, so ~``valid`` persons are present per frame.
    Padded person-frames hold random values (the models must ignore them).
    """
    g = torch.Generator().manual_seed(seed)
    K = min(N, math.ceil(valid / 0.75))
    mask = torch.zeros(B, T, N, dtype=torch.bool)
    for b in range(B):  # data generation only, not timed
        slots = torch.randperm(N, generator=g)[:K]
        for s in slots.tolist():
            length = int(T * (0.5 + 0.5 * torch.rand(1, generator=g).item()))
            start = int(torch.randint(0, T - length + 1, (1,), generator=g))
            mask[b, start:start + length, s] = True
    features = {k: torch.randn(B, T, N, d, generator=g) for k, d in FEATURE_DIMS.items()}
    person_valid = mask.any(1)
    target = torch.multinomial(person_valid.float(), 1, generator=g).squeeze(1)
    to = lambda x: x.to(device)  # noqa: E731
    return {k: to(v) for k, v in features.items()}, to(mask), to(target), to(person_valid)


class UserBaseline(nn.Module):
    """The user's original computation: frame loop for the graph, every padded slot in time.

    Shapes: features[name] (B, T, N, D_name), person_mask (B, T, N) -> logits (B, N), -inf at
    slots valid in no frame.
    """

    def __init__(self, feature_dims: dict[str, int], d: int = 768, gat_layers: int = 2,
                 gat_heads: int = 4, temporal_layers: int = 2, temporal_heads: int = 12,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.names = sorted(feature_dims)
        self.norms = nn.ModuleDict({k: nn.LayerNorm(feature_dims[k]) for k in self.names})
        self.fuse = nn.Linear(sum(feature_dims.values()), d)
        self.gats = nn.ModuleList(GATv2Conv(d, d // gat_heads, heads=gat_heads) for _ in range(gat_layers))
        self.gat_norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(gat_layers))
        self.frame_embedding = nn.Embedding(512, d)
        layer = nn.TransformerEncoderLayer(d, temporal_heads, dropout=dropout, batch_first=True)
        self.temporal = nn.TransformerEncoder(layer, temporal_layers, enable_nested_tensor=False)
        self.event_token = nn.Parameter(torch.zeros(1, 1, d))
        self.event_attn = nn.MultiheadAttention(d, 8, batch_first=True)
        self.pool_score = nn.Sequential(nn.Linear(d, d // 4), nn.Tanh(), nn.Linear(d // 4, 1))
        self.self_head = nn.Sequential(nn.Linear(2 * d, d), nn.GELU(), nn.Linear(d, 1))
        self.rel_attn = nn.MultiheadAttention(d, 8, batch_first=True)
        self.rel_head = nn.Sequential(nn.Linear(2 * d, d), nn.GELU(), nn.Linear(d, 1))
        self.gate = nn.Linear(2 * d, 1)

    def forward(self, features: dict[str, Tensor], person_mask: Tensor) -> Tensor:
        B, T, N = person_mask.shape
        x = torch.cat([self.norms[k](features[k].float()) for k in self.names], -1)
        x = F.gelu(self.fuse(x)) * person_mask.unsqueeze(-1)  # (B, T, N, d), padding zeroed
        d = x.shape[-1]

        # fully connected graph over all N slots of each clip, built once per call
        local = torch.arange(N, device=x.device)
        src = local.repeat_interleave(N).repeat(B) + torch.arange(B, device=x.device).repeat_interleave(N * N) * N
        dst = local.repeat(N).repeat(B) + torch.arange(B, device=x.device).repeat_interleave(N * N) * N
        edge_index = torch.stack([src, dst])
        frames = []
        for t in range(T):  # the user's per-frame loop
            h = x[:, t].reshape(B * N, d)
            for gat, norm in zip(self.gats, self.gat_norms):
                h = norm(h + F.gelu(gat(h, edge_index)))
            frames.append(h.view(B, N, d))
        x = torch.stack(frames, 1)  # (B, T, N, d)

        seq = x.permute(0, 2, 1, 3).reshape(B * N, T, d) + self.frame_embedding.weight[:T]
        absent = ~person_mask.permute(0, 2, 1).reshape(B * N, T)  # (B*N, T)
        absent = absent & ~absent.all(1, keepdim=True)  # empty slots attend to all (avoid NaN)
        seq = self.temporal(seq, src_key_padding_mask=absent)  # (B*N, T, d) every slot

        tokens = seq.view(B, N * T, d)
        event, _ = self.event_attn(self.event_token.expand(B, -1, -1), tokens, tokens,
                                   key_padding_mask=absent.view(B, N * T))  # (B, 1, d)
        score = self.pool_score(seq).squeeze(-1).masked_fill(absent, float("-inf"))  # (B*N, T)
        person = (score.softmax(1).unsqueeze(-1) * seq).sum(1).view(B, N, d)
        person = torch.cat([person, event.expand(-1, N, -1)], -1)  # (B, N, 2d)

        valid = person_mask.any(1)  # (B, N)
        s_self = self.self_head(person).squeeze(-1)
        q = person[..., :d]
        ctx, _ = self.rel_attn(q, q, q, key_padding_mask=~valid)
        rel_in = torch.cat([q, ctx], -1)
        s_rel = self.rel_head(rel_in).squeeze(-1)
        g = torch.sigmoid(self.gate(rel_in)).squeeze(-1)
        logits = g * s_self + (1 - g) * s_rel
        return logits.masked_fill(~valid, float("-inf"))


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_steps(model: nn.Module, batch, device: str, warmup: int, repeats: int) -> dict[str, float]:
    features, mask, target, valid = batch
    model.train()
    forward, backward = [], []
    for i in range(warmup + repeats):
        model.zero_grad(set_to_none=True)
        _sync(device)
        t0 = time.perf_counter()
        loss = ranking_loss(model(features, mask), target, valid)
        _sync(device)
        t1 = time.perf_counter()
        loss.backward()
        _sync(device)
        t2 = time.perf_counter()
        if not torch.isfinite(loss):
            raise RuntimeError(f"{type(model).__name__} produced a non-finite loss {loss.item()}")
        if i >= warmup:
            forward.append((t1 - t0) * 1e3)
            backward.append((t2 - t1) * 1e3)
    fwd, bwd = statistics.median(forward), statistics.median(backward)
    return {
        "forward_ms": fwd,
        "backward_ms": bwd,
        "step_ms": fwd + bwd,
        "forward_ms_runs": [round(x, 2) for x in forward],  # this VM is noisy: show the spread
        "backward_ms_runs": [round(x, 2) for x in backward],
        "repeats": repeats,
        "warmup": warmup,
        "params": sum(p.numel() for p in model.parameters()),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=120)
    p.add_argument("--slots", type=int, default=20)
    p.add_argument("--valid", type=int, default=6, help="persons present per frame, on average")
    p.add_argument("--repeats", type=int, default=10, help="timed steps of ImportanceRanker")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps of ImportanceRanker")
    p.add_argument("--baseline-repeats", type=int, default=1)
    p.add_argument("--baseline-warmup", type=int, default=1)
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="tiny shapes, one repeat: a smoke run")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.frames, args.slots, args.valid = 2, 8, 5, 3
        args.repeats = args.warmup = args.baseline_repeats = args.baseline_warmup = 1
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda asked for, but torch.cuda.is_available() is False")
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    batch = make_batch(args.batch, args.frames, args.slots, args.valid, args.device)
    mask = batch[1]
    shape = {
        "batch": args.batch, "frames": args.frames, "slots": args.slots,
        "valid_per_frame": round(mask.sum().item() / (args.batch * args.frames), 2),
        "persons_per_clip": round(batch[3].sum().item() / args.batch, 2),
        "feature_dims": FEATURE_DIMS,
    }
    results = {}
    ours = ImportanceRanker(RankerConfig(), FEATURE_DIMS).to(args.device)
    results["ours"] = time_steps(ours, batch, args.device, args.warmup, args.repeats)
    if not args.skip_baseline:
        baseline = UserBaseline(FEATURE_DIMS).to(args.device)
        results["baseline"] = time_steps(baseline, batch, args.device, args.baseline_warmup,
                                         args.baseline_repeats)
    report = {
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "shape": shape,
        "results": results,
    }
    if "baseline" in results:
        report["ratio"] = {
            k: results["baseline"][f"{k}_ms"] / results["ours"][f"{k}_ms"]
            for k in ("forward", "backward", "step")
        }

    if args.json:
        print(json.dumps(report, indent=2))
        return report
    print(f"device {report['device']}, {report['threads']} threads, torch {report['torch']}")
    print(f"batch {shape['batch']} clips x {shape['frames']} frames x {shape['slots']} slots, "
          f"{shape['valid_per_frame']} persons per frame, {shape['persons_per_clip']} per clip")
    print(f"{'model':<10} {'params':>11} {'forward ms':>12} {'backward ms':>12} {'step ms':>12} {'runs':>5}")
    for name, r in results.items():
        print(f"{name:<10} {r['params']:>11,} {r['forward_ms']:>12.1f} {r['backward_ms']:>12.1f} "
              f"{r['step_ms']:>12.1f} {r['repeats']:>5}")
    if "ratio" in report:
        ratio = report["ratio"]
        print(f"baseline / ours: forward {ratio['forward']:.1f}x, backward {ratio['backward']:.1f}x, "
              f"step {ratio['step']:.1f}x")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
