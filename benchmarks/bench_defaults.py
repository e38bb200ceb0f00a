"""Do `msgvip train`'s defaults hold on worlds nobody tuned them to? Issue #18's matrix.

Each *world* is a synthetic data set in the MSG_VIP format (``msgvip demo-data``) that isolates
one cue kind (``--difficulty``: presence, drift, group, hard, appearance, pixel, or default's mix
of all), at a data size and clip shape, extracted into the families named (geometry alone, or all
four with the demo's tiny random backbones). On each world this runs, as a user would:

    msgvip train --store FP --out RUN --seed S        (S = 0, 1, 2; nothing else)
    msgvip evaluate RUN

and prints, per world: chance (the mean of 1/persons over the test clips), the run's own probe
baseline (the suite of ``msgvip probe`` fitted on train, chosen on val: the same for every seed)
on test, the model's test Rank@1 per seed and their mean, and model minus probe with a paired
95% bootstrap interval over the test clips (the per-clip hit rate averaged over the seeds). The
bar: the mean is never below the probe, and is at least 0.2 above it on the worlds whose cue
needs relations or time (``REQUIRED_MARGIN``).

    .venv/bin/python benchmarks/bench_defaults.py [--worlds NAME ...] [--seeds 0 1 2] [--set SECTION.KEY=VALUE ...] [--keep DIR] [--json]

``--worlds`` picks rows of ``WORLDS`` (default: all); ``--list`` prints them. ``--set`` hands
settings to every ``train`` (``msgvip train --set``), to measure a candidate against the defaults.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from msgvip.cli import json_ready, main as msgvip
from msgvip.config import ExtractConfig
from msgvip.data.synthetic import DemoDataConfig, write_demo_data
from msgvip.pipelines.extract import run_extract
from msgvip.ranker.metrics import rank_of_target
from msgvip.ranker.trainer import scored_split
from msgvip.store.feature_store import FeatureStore

ALL_FAMILIES = ("appearance", "face", "geometry", "pose")
RESAMPLES = 10000


@dataclass(frozen=True)
class World:
    name: str
    difficulty: str
    clips: int  # 70% train, 15% val, 15% test
    frames: int
    persons: int
    families: tuple[str, ...] = ("geometry",)
    margin: float = 0.0  # how far the mean model must be above the probe

    def data(self, seed: int = 0) -> DemoDataConfig:
        return DemoDataConfig(clips=self.clips, frames=self.frames, persons=self.persons, seed=seed, difficulty=self.difficulty)


# One cue each at the demo's size and shape, then other sizes and shapes. "hard" is the only world
# whose cue a per-person probe cannot see by construction (relations in time): its margin is 0.2.
WORLDS = (
    World("presence", "presence", 240, 24, 8),
    World("drift", "drift", 240, 24, 8),
    World("group", "group", 240, 24, 8),
    World("hard", "hard", 240, 24, 8, margin=0.2),
    World("default", "default", 240, 24, 8, ALL_FAMILIES),
    World("appearance", "appearance", 240, 24, 8, ALL_FAMILIES),
    World("pixel", "pixel", 240, 24, 8, ALL_FAMILIES),
    World("presence-small", "presence", 140, 16, 20),
    World("default-long", "default", 140, 120, 4),
    World("drift-large", "drift", 1400, 24, 8),
)


def build_store(world: World, root: Path) -> FeatureStore:
    """The world's clips under ``root/data``, extracted as ``msgvip demo`` extracts them."""
    write_demo_data(root / "data", world.data())
    config = ExtractConfig(features=world.families)
    if set(world.families) - {"geometry"}:
        from msgvip.extract.backbones import DEMO_CROP_SIZE, make_demo_backbones

        models = make_demo_backbones(root / "models")
        config = ExtractConfig(features=world.families, crop_size=DEMO_CROP_SIZE, backbone=str(models["backbone"]), pose_model=str(models["pose_model"]))
    return FeatureStore.open(Path(run_extract(root / "data", config, cache_dir=root / "cache", progress=False).store))


def _cli(*args: str) -> str:
    result = CliRunner().invoke(msgvip, list(args))
    if result.exit_code != 0:
        raise RuntimeError(f"msgvip {' '.join(args)} failed: {result.output[-2000:]}")
    return result.output


def measure(world: World, seeds: list[int], settings: list[str], root: Path, say) -> dict:
    start = time.perf_counter()
    store = build_store(world, root)
    built = time.perf_counter() - start
    runs, hits, probe_hits = [], [], None
    for seed in seeds:
        run = root / f"run-seed{seed}"
        tick = time.perf_counter()
        _cli("train", "--store", str(store.path), "--out", str(run), "--seed", str(seed), *(a for s in settings for a in ("--set", s)))
        scored = scored_split(run, store, "test", None, "cpu", None, with_probe=True)  # as `msgvip evaluate` scores it
        target, valid = scored.data.targets.numpy(), scored.data.valid_slots().numpy()
        labeled = target >= 0
        hits.append((rank_of_target(scored.scores, target, valid) == 1)[labeled].astype(float))
        probe = scored.probe
        probe_hits = (rank_of_target(scored.probe_scores, target, valid) == 1)[labeled].astype(float)
        best = json.loads(_cli("runs", "ls", str(run), "--json"))["runs"][0]
        runs.append({"seed": seed, "rank@1": float(hits[-1].mean()), "val_rank@1": best["metrics"]["val_rank@1"], "best_epoch": best["best_epoch"],
                     "epochs": best["epochs_run"], "probe": probe.about, "probe_val_rank@1": probe.val["rank@1"], "seconds": time.perf_counter() - tick})  # fmt: skip
    diff = np.mean(hits, 0) - probe_hits  # (labeled clips,)
    draws = np.random.default_rng(0).integers(0, len(diff), (RESAMPLES, len(diff)))
    interval = np.percentile(diff[draws].mean(1), [2.5, 97.5]).tolist()
    mean, probe_rank1 = float(np.mean([r["rank@1"] for r in runs])), float(probe_hits.mean())
    chance = float(np.mean(1.0 / valid.sum(1)))
    result = {
        "world": world.name, "difficulty": world.difficulty, "clips": world.clips, "frames": world.frames, "persons": world.persons,
        "families": list(world.families), "test_clips": int(labeled.sum()), "chance": chance, "probe": runs[0]["probe"], "probe_rank@1": probe_rank1,
        "model": runs, "model_mean": mean, "minus_probe": mean - probe_rank1, "minus_probe_interval": interval, "required_margin": world.margin,
        "passed": mean - probe_rank1 >= world.margin - 1e-12, "seconds": time.perf_counter() - start, "build_seconds": built,
    }  # fmt: skip
    say(_line(result))
    return result


def _line(r: dict) -> str:
    seeds = ", ".join(f"{m['rank@1']:.3f}" for m in r["model"])
    return (f"{r['world']:<15} {r['clips']:>5} clips T{r['frames']:<3} N{r['persons']:<3} {'+'.join(f[:4] for f in r['families']):<19} "
            f"chance {r['chance']:.3f}  probe {r['probe_rank@1']:.3f} ({r['probe']})  model {r['model_mean']:.3f} ({seeds})  "
            f"model-probe {r['minus_probe']:+.3f} [{r['minus_probe_interval'][0]:+.3f}, {r['minus_probe_interval'][1]:+.3f}]  "
            f"bar {r['required_margin']:+.1f}: {'PASS' if r['passed'] else 'FAIL'}  ({r['seconds']:.0f} s)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = [w.name for w in WORLDS]
    parser.add_argument("--worlds", nargs="+", choices=names, default=names)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--keep", type=Path, help="build everything under this directory and keep it [default: a temporary one]")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the lines")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="SECTION.KEY=VALUE", help="a setting for every train (repeatable)")
    parser.add_argument("--list", action="store_true", help="print the worlds and exit")
    args = parser.parse_args()
    if args.list:
        for w in WORLDS:
            print(w)
        return
    say = (lambda *a, **k: None) if args.json else (lambda *a: print(*a, flush=True))
    start, results = time.perf_counter(), []
    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        for world in (next(w for w in WORLDS if w.name == name) for name in args.worlds):  # in the order asked
            results.append(measure(world, args.seeds, args.settings, base / world.name, say))
    if args.json:
        print(json.dumps(json_ready(results), indent=2, allow_nan=False))
        return
    failed = [r["world"] for r in results if not r["passed"]]
    print(f"{len(results) - len(failed)} of {len(results)} worlds pass{': failing ' + ', '.join(failed) if failed else ''} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
