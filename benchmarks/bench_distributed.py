"""Extraction throughput on dask.distributed: 1 vs N local workers, against one process.

Prints clips/s and crops/s for the in-process extractor and for local dask clusters of 1..N
worker processes (each with one thread), in one run on the same demo clips, and the scaling
efficiency rate(N) / (N * rate(1)). Uses the tiny random demo backbones unless --backbone is given.

    python benchmarks/bench_distributed.py [--workers 2] [--clips 240] [--features appearance,face,geometry,pose] [--json]
    python benchmarks/bench_distributed.py --device cuda --workers 4 --backbone facebook/dinov2-base --features appearance   # GPU node
"""

from __future__ import annotations

import argparse
import importlib
import json
import tempfile
import time
from pathlib import Path

from dask.distributed import Client

from msgvip.config import ExtractConfig
from msgvip.data.synthetic import DemoDataConfig, write_demo_data
from msgvip.extract.backbones import DEMO_CROP_SIZE, make_demo_backbones
from msgvip.pipelines import run_extract
from msgvip.pipelines.distributed import local_cluster


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="largest cluster to try")
    parser.add_argument("--clips", type=int, default=240)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--features", default="appearance,face,geometry,pose")
    parser.add_argument("--backbone", help="model id or dir (default: tiny random demo backbone)")
    parser.add_argument("--crop-size", type=int)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_demo_data(tmp / "data", DemoDataConfig(clips=args.clips, frames=args.frames))
        models = make_demo_backbones(tmp / "models")
        config = ExtractConfig(
            features=tuple(args.features.split(",")), device=args.device,
            backbone=args.backbone or str(models["backbone"]), pose_model=str(models["pose_model"]),
            crop_size=args.crop_size or (224 if args.backbone else DEMO_CROP_SIZE),
        )  # fmt: skip
        runs = {"one process": run_extract(tmp / "data", config, cache_dir=tmp / "c0", progress=False)}
        startup = {}
        for n in range(1, args.workers + 1):
            # The cluster is started and its workers have imported msgvip before the clock starts:
            # the figure is the steady work rate (model loading per worker is included).
            start = time.perf_counter()
            with local_cluster(n, config) as cluster, Client(cluster) as client:
                client.run(importlib.import_module, "msgvip.pipelines.distributed")
                startup[n] = time.perf_counter() - start
                runs[f"{n} dask worker{'s' if n > 1 else ''}"] = run_extract(tmp / "data", config, cache_dir=tmp / f"c{n}", progress=False, scheduler=cluster.scheduler_address)

    assert all(r.ok and r.written == args.clips for r in runs.values())
    rates = {name: {"clips_per_s": r.written / r.seconds, "crops_per_s": r.crops / r.seconds, "seconds": r.seconds} for name, r in runs.items()}
    one = rates["1 dask worker"]["clips_per_s"]
    for n in range(1, args.workers + 1):
        name = f"{n} dask worker{'s' if n > 1 else ''}"
        rates[name]["scaling_efficiency"] = rates[name]["clips_per_s"] / (n * one)
    if args.json:
        print(json.dumps({"rates": rates, "startup_seconds": startup}, indent=2))
        return
    print(f"{args.clips} demo clips, T={args.frames}, features {args.features}, device {args.device}")
    for name, r in rates.items():
        efficiency = f"  scaling efficiency {100 * r['scaling_efficiency']:.0f}%" if "scaling_efficiency" in r else ""
        print(f"{name:16s} {r['clips_per_s']:7.1f} clips/s {r['crops_per_s']:8.0f} crops/s ({r['seconds']:.1f} s){efficiency}")
    print("cluster start-up (not in the rates): " + ", ".join(f"{n} workers {t:.1f} s" for n, t in startup.items()))


if __name__ == "__main__":
    main()
