"""Forward and backward time of one ranker training step: msgvip's ImportanceRanker against svip's own code.

All models get the same batch (default: the user's real shape, 8 clips x 120 frames x 20 person
slots, ~6 persons present per frame, 768-d appearance + geometry per person-frame) in the same
process, the models in turn in every round (one svip step, ``--msgvip-steps`` of each msgvip
model, whose steps are cheap) so that load on the machine falls on all of them alike. Each is
fed as its own training loop feeds it: msgvip the valid person-frames as packed rows, svip
padded (B, T, N) tensors. "forward" is model + loss, "backward" is ``loss.backward()``; no
optimizer step; gradients are cleared outside the timed regions. Each side uses its own loss:
msgvip the trainer's (``model.loss_terms`` with the default ``TrainConfig``), svip its
``CombinedLoss``. All run in float32 by default; ``--autocast`` runs every forward and loss
under bfloat16 autocast instead, as svip's own training loop does on a CPU (msgvip's trainer
autocasts on CUDA only). On the development machine's 2 cores (AVX512-BF16, no AMX) that
helped svip more than msgvip: 42.8 s -> 25.8 s against 2.96 s -> 2.22 s at svip's widths (two
runs, one after the other).

Models:

- ``msgvip``: ``RankerConfig()``, the default model;
- ``msgvip-768``: msgvip at svip's widths, ``WIDTH_MATCHED`` below (see there);
- ``svip``: svip's ``ImportanceRanker`` from its own default config (github.com/yml2002/svip;
  written against commit 26674fd), built from the checkout that ``SVIP_REPO`` points at, with its
  frozen DINOv2 replaced by nothing as in its cached-feature mode: it is fed the L2-normalised
  CLS features and the 256-d box features its feature cache holds (the output of its box MLP).
  Without ``SVIP_REPO`` only msgvip is timed.

Printed: each model's median forward, backward and step time over the timed rounds, its median
minor page faults and kernel (system) CPU time per step, and the ratios svip / msgvip of the
time medians.

    SVIP_REPO=/tmp/svip python benchmarks/bench_train_step.py      # full size, CPU
    SVIP_REPO=/tmp/svip python benchmarks/bench_train_step.py --autocast   # ... in bfloat16
    python benchmarks/bench_train_step.py                          # msgvip alone
    python benchmarks/bench_train_step.py --quick                  # tiny smoke run
    SVIP_REPO=/tmp/svip python benchmarks/bench_train_step.py --device cuda --repeats 10 --json

(``mkdir /tmp/svip && git --git-dir svip.git archive HEAD | tar -x -C /tmp/svip`` makes a
checkout from a bare clone.)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msgvip.ranker.model import ImportanceRanker, RankerConfig
from msgvip.ranker.trainer import TrainConfig

FEATURE_DIMS = {"appearance": 768, "geometry": 18}
SVIP_GEOMETRY_DIM = 256  # svip's BBoxGeomConfig.feature_dim: what its feature cache holds per box

#: msgvip at svip's widths. svip: fused 1024 -> GATv2 512 (2 layers x 4 heads) -> temporal
#: Transformer 768 (2 layers x 12 heads, feed-forward 1024). msgvip has one width for every stage,
#: so: 768 (narrower than svip's fusion, wider than its GAT), the same layers and heads, and
#: feed-forward 1 x 768, the nearest whole multiple of 768 to svip's 1024 (2 x 768 = 1536 is
#: further away).
WIDTH_MATCHED = RankerConfig(hidden=768, gat_layers=2, gat_heads=4, temporal_layers=2,
                             temporal_heads=12, ff_mult=1)


def make_batch(B: int, T: int, N: int, valid: int, device: str, seed: int = 0):
    """Random clips shaped like the user's: person tracks in random slots, visible in spans.

    Each clip has ``K = ceil(valid / 0.75)`` persons (at most N) in random slots; each is visible in
    one contiguous span of 50-100 % of the frames, so ~``valid`` persons are present per frame.
    Padded person-frames hold random values (the models must ignore them).

    Returns features (name -> (B, T, N, D)), mask (B, T, N), target (B,), person_valid (B, N).
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


def msgvip_step(config: RankerConfig, batch, device: str) -> tuple[nn.Module, Callable[[], Tensor]]:
    """msgvip's model and loss, fed the valid rows only as its trainer feeds them (packed batches)."""
    features, mask, target, valid = batch
    rows = {k: v[mask] for k, v in features.items()}  # (V, D) each, in mask.nonzero() order
    torch.manual_seed(0)
    model = ImportanceRanker(config, FEATURE_DIMS).to(device).train()
    train = TrainConfig()
    return model, lambda: model.loss_terms(model(rows, mask), target, valid, train).total


def svip_step(repo: Path, batch, device: str) -> tuple[nn.Module, Callable[[], Tensor]]:
    """svip's model and loss from its checkout, fed what its cached-feature mode is fed."""
    sys.path.insert(0, str(repo))
    from src.configs.config import get_default_config
    from src.models import importance_ranker
    from src.training.loss import CombinedLoss

    # its frozen DINOv2 never runs in cached-feature mode: build nothing instead of loading its weights
    importance_ranker.VisionEncoder = lambda **kwargs: nn.Identity()
    config = get_default_config()
    torch.manual_seed(0)
    model = importance_ranker.ImportanceRanker(config).to(device).train()
    loss = CombinedLoss(config)
    features, mask, target, _ = batch
    absent = ~mask.unsqueeze(-1)
    vision = F.normalize(features["appearance"], dim=-1).masked_fill(absent, 0.0)  # (B, T, N, 768)
    g = torch.Generator().manual_seed(1)
    geometry = torch.randn(*mask.shape, SVIP_GEOMETRY_DIM, generator=g).to(device)
    geometry = geometry.masked_fill(absent, 0.0)  # (B, T, N, 256)

    def step() -> Tensor:
        out = model(vision_features=vision, geometry_features=geometry, person_mask=mask, target_index=target)
        return loss.get_loss_components(importance_logits=out["importance_logits"], target_index=target,
                                        person_mask=mask)["total_loss"]

    return model, step


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_rounds(steps: dict[str, tuple[nn.Module, Callable[[], Tensor]]], device: str, warmup: int,
                repeats: int, per_round: dict[str, int]) -> dict[str, dict]:
    """Per round, ``per_round[name]`` steps of every model in turn; medians over the rounds after
    ``warmup``."""
    runs = {name: {"forward": [], "backward": [], "faults": [], "kernel": []} for name in steps}
    for i in range(warmup + repeats):
        for name, (model, step) in steps.items():
            for _ in range(per_round[name]):
                _time_step(name, model, step, device, runs[name] if i >= warmup else None)
    results = {}
    for name, run in runs.items():
        forward, backward = run["forward"], run["backward"]
        fwd, bwd = statistics.median(forward), statistics.median(backward)
        results[name] = {
            "forward_ms": fwd,
            "backward_ms": bwd,
            "step_ms": fwd + bwd,
            "step_ms_runs": [round(f + b, 1) for f, b in zip(forward, backward)],  # the spread on a noisy machine
            "page_faults": statistics.median(run["faults"]),  # minor faults per step: memory the kernel mapped in afresh
            "kernel_ms": statistics.median(run["kernel"]),  # system CPU time per step, mostly those faults
            "params": sum(p.numel() for p in steps[name][0].parameters()),
        }
    return results


def _autocast(step: Callable[[], Tensor], device: str) -> Callable[[], Tensor]:
    """``step`` with its forward and loss under bfloat16 autocast (backward follows the casts)."""

    def autocast_step() -> Tensor:
        with torch.autocast(device, dtype=torch.bfloat16):
            return step()

    return autocast_step


def _time_step(name: str, model: nn.Module, step: Callable[[], Tensor], device: str,
               runs: dict[str, list[float]] | None) -> None:
    """One step; its forward and backward milliseconds, page faults and kernel milliseconds
    appended to ``runs``' lists of those names unless None."""
    model.zero_grad(set_to_none=True)
    _sync(device)
    before = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    loss = step()
    _sync(device)
    t1 = time.perf_counter()
    loss.backward()
    _sync(device)
    t2 = time.perf_counter()
    after = resource.getrusage(resource.RUSAGE_SELF)
    if not torch.isfinite(loss):
        raise RuntimeError(f"{name} produced a non-finite loss {loss.item()}")
    if runs is not None:
        runs["forward"].append((t1 - t0) * 1e3)
        runs["backward"].append((t2 - t1) * 1e3)
        runs["faults"].append(after.ru_minflt - before.ru_minflt)
        runs["kernel"].append((after.ru_stime - before.ru_stime) * 1e3)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=120)
    p.add_argument("--slots", type=int, default=20)
    p.add_argument("--valid", type=int, default=6, help="persons present per frame, on average")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds")
    p.add_argument("--msgvip-steps", type=int, default=3,
                   help="steps of each msgvip model per round (svip takes one): more samples where they are cheap")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds before them")
    p.add_argument("--autocast", action="store_true",
                   help="run every model's forward and loss under bfloat16 autocast, as svip's own training loop does on a CPU (default: float32)")
    p.add_argument("--svip-repo", type=Path, default=os.environ.get("SVIP_REPO") or None,
                   help="checkout of github.com/yml2002/svip (default: $SVIP_REPO); without it only msgvip is timed")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="tiny shapes, one round: a smoke run")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.frames, args.slots, args.valid = 2, 8, 5, 3
        args.repeats, args.warmup, args.msgvip_steps = 1, 0, 1
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda asked for, but torch.cuda.is_available() is False")
    if args.svip_repo is not None and not (args.svip_repo / "src" / "models" / "importance_ranker.py").is_file():
        p.error(f"no svip checkout at {args.svip_repo} (src/models/importance_ranker.py missing): "
                "point SVIP_REPO or --svip-repo at a checkout of github.com/yml2002/svip")
    if args.threads:
        torch.set_num_threads(args.threads)

    batch = make_batch(args.batch, args.frames, args.slots, args.valid, args.device)
    mask = batch[1]
    shape = {
        "batch": args.batch, "frames": args.frames, "slots": args.slots,
        "valid_per_frame": round(mask.sum().item() / (args.batch * args.frames), 2),
        "persons_per_clip": round(batch[3].sum().item() / args.batch, 2),
        "feature_dims": FEATURE_DIMS,
    }
    configs = {"msgvip": RankerConfig(), "msgvip-768": WIDTH_MATCHED}
    steps = {name: msgvip_step(config, batch, args.device) for name, config in configs.items()}
    if args.svip_repo is not None:
        steps["svip"] = svip_step(args.svip_repo, batch, args.device)
    if args.autocast:
        steps = {name: (model, _autocast(step, args.device)) for name, (model, step) in steps.items()}
    per_round = {name: 1 if name == "svip" else args.msgvip_steps for name in steps}
    results = time_rounds(steps, args.device, args.warmup, args.repeats, per_round)
    report = {
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "threads": torch.get_num_threads(),
        "precision": "bfloat16 autocast" if args.autocast else "float32",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "shape": shape,
        "configs": {name: config.to_dict() for name, config in configs.items()},
        "svip_repo": str(args.svip_repo) if args.svip_repo is not None else None,
        "results": results,
    }
    if "svip" in results:
        report["ratio"] = {
            name: {k: results["svip"][f"{k}_ms"] / results[name][f"{k}_ms"] for k in ("forward", "backward", "step")}
            for name in configs
        }

    if args.json:
        print(json.dumps(report, indent=2))
        return report
    print(f"device {report['device']}, {report['threads']} threads, torch {report['torch']}, {report['precision']}")
    print(f"batch {shape['batch']} clips x {shape['frames']} frames x {shape['slots']} slots, "
          f"{shape['valid_per_frame']} persons per frame, {shape['persons_per_clip']} per clip; "
          f"{args.repeats} timed rounds after {args.warmup} untimed, each with {args.msgvip_steps} step(s) of each msgvip "
          f"model{' and one of svip' if 'svip' in steps else ''}")
    print(f"{'model':<11} {'params':>11} {'forward ms':>11} {'backward ms':>12} {'step ms':>10} {'faults':>8} {'kernel ms':>10}  timed steps (ms)")
    for name, r in results.items():
        print(f"{name:<11} {r['params']:>11,} {r['forward_ms']:>11.1f} {r['backward_ms']:>12.1f} "
              f"{r['step_ms']:>10.1f} {r['page_faults']:>8.0f} {r['kernel_ms']:>10.0f}  {r['step_ms_runs']}")
    if "ratio" in report:
        for name, ratio in report["ratio"].items():
            print(f"svip / {name}: forward {ratio['forward']:.1f}x, backward {ratio['backward']:.1f}x, "
                  f"step {ratio['step']:.1f}x")
    else:
        print("svip not measured: set SVIP_REPO (or --svip-repo) to a checkout of github.com/yml2002/svip")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
