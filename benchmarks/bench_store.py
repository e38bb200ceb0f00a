"""Foundation benchmark: geometry extraction into the store, rerun cost, size and read speed.

Prints, for a few hundred synthetic demo clips, in one run:
- extract throughput (clips/s) of `msgvip extract --features geometry`,
- the time of a rerun on unchanged data as a fraction of the first run,
- the store's size on disk against the raw fp32 size of the same padded arrays,
- read throughput of whole clips from the store against `np.load` of the same features saved as
  one .npy per clip (the baseline a user would otherwise write).

    python benchmarks/bench_store.py --clips 300 [--frames 32 --persons 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from msgvip.config import ExtractConfig
from msgvip.data.synthetic import DemoDataConfig, write_demo_data
from msgvip.pipelines import run_extract
from msgvip.store import FeatureStore
from msgvip.store.cache import directory_size
from msgvip.store.feature_store import ZARR_DIR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=300)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--persons", type=int, default=8)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--repeats", type=int, default=3, help="read passes; the best is reported")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        demo = DemoDataConfig(clips=args.clips, frames=args.frames, persons=args.persons, height=args.height, width=args.width)
        write_demo_data(tmp / "data", demo)
        config = ExtractConfig(features=("geometry",))

        first = run_extract(tmp / "data", config, cache_dir=tmp / "cache", progress=False)
        rerun = run_extract(tmp / "data", config, cache_dir=tmp / "cache", progress=False)
        assert first.ok and first.written == args.clips and rerun.written == 0

        store = FeatureStore.open(Path(first.store))
        entries = store.entries_for()
        names = [a.name for a in store.arrays]
        raw_fp32 = sum(
            len(entries) * demo.frames * demo.persons * int(np.prod(a.shape)) * 4 for a in store.arrays
        )
        on_disk = directory_size(store.path / ZARR_DIR)

        npy_dir = tmp / "npy"
        npy_dir.mkdir()
        for e in entries:  # the baseline: every clip's features as one fp32 .npy
            clip = store.read_clip(e)
            packed = np.concatenate([clip[n].reshape(e.frames, e.persons, -1).astype(np.float32) for n in names], -1)
            np.save(npy_dir / f"{e.row}.npy", packed)
        npy_size = directory_size(npy_dir)

        def best_of(fn) -> float:
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            return min(times)

        store_read = best_of(lambda: [store.read_clip(e) for e in entries])
        npy_read = best_of(lambda: [np.load(npy_dir / f"{e.row}.npy") for e in entries])
        bulk_read = best_of(lambda: store.read_rows(np.array([e.row for e in entries])))

    figures = {
        "clips": args.clips,
        "frames": args.frames,
        "persons": args.persons,
        "extract_clips_per_s": args.clips / first.seconds,
        "extract_seconds": first.seconds,
        "rerun_seconds": rerun.seconds,
        "rerun_fraction": rerun.seconds / first.seconds,
        "store_bytes": on_disk,
        "raw_fp32_bytes": raw_fp32,
        "store_vs_raw": on_disk / raw_fp32,
        "npy_bytes": npy_size,
        "store_read_clips_per_s": len(entries) / store_read,
        "npy_read_clips_per_s": len(entries) / npy_read,
        "store_vs_npy_read": npy_read / store_read,
        "bulk_read_clips_per_s": len(entries) / bulk_read,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"{args.clips} demo clips, T={args.frames}, N={args.persons}, geometry features")
    print(f"extract          {figures['extract_clips_per_s']:8.1f} clips/s  ({first.seconds:.2f} s)")
    print(f"rerun unchanged  {rerun.seconds:8.3f} s = {100 * figures['rerun_fraction']:.1f}% of the first run")
    print(f"store on disk    {on_disk / 1e6:8.2f} MB = {100 * figures['store_vs_raw']:.1f}% of raw fp32 ({raw_fp32 / 1e6:.2f} MB); .npy per clip: {npy_size / 1e6:.2f} MB")
    print(f"read, store      {figures['store_read_clips_per_s']:8.0f} clips/s (one clip at a time)")
    print(f"read, .npy       {figures['npy_read_clips_per_s']:8.0f} clips/s (np.load per clip)")
    print(f"read, store bulk {figures['bulk_read_clips_per_s']:8.0f} clips/s (all rows in one read, as training loads a split)")
    print(f"store / npy read speed: {figures['store_vs_npy_read']:.2f}x")


if __name__ == "__main__":
    main()
