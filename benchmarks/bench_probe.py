"""How long `msgvip probe` takes, on an existing store or on a demo-sized store with a 768-d family.

Without ``--store``, builds a store like the one `msgvip demo` builds (DEMO_DATA: 240 clips,
T=24, N=8) holding geometry, computed by the geometry extractor, and a DINOv2-base-sized
``appearance`` family (``--dim``, default 768, float16) of random-walk embeddings: a vector per
person, a slow drift and per-frame noise, the target's leaning along one direction in most clips.
The figures measure the probe's cost at that width; the embeddings mean nothing else.

Prints the probe's table, then wall and CPU seconds of the probe alone and of the whole process
(imports included, as a user running `msgvip probe` waits for them).

    .venv/bin/python benchmarks/bench_probe.py [--store PATH] [--dim 768] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

PROCESS_START = (time.perf_counter(), time.process_time())

import numpy as np  # noqa: E402

from msgvip.data.clip import read_clip  # noqa: E402
from msgvip.data.synthetic import write_demo_data  # noqa: E402
from msgvip.extract.geometry import GeometryExtractor  # noqa: E402
from msgvip.pipelines.demo import DEMO_DATA  # noqa: E402
from msgvip.ranker.probe import format_probe_table, probe_store  # noqa: E402
from msgvip.store import ArraySpec, FeatureStore, Snapshot, SnapshotEntry, fingerprint, open_storage  # noqa: E402
from msgvip.store.feature_store import MASK_ARRAY  # noqa: E402

P_TARGET_LEANS = 0.6


def embeddings(clip, index: int, dim: int) -> np.ndarray:
    """(T, N, dim) float16 random-walk embeddings of the clip's persons (zero where absent)."""
    rng = np.random.default_rng([0x9B0E, index])
    t, n = clip.person_mask.shape
    person = rng.standard_normal((n, dim), dtype=np.float32)
    if rng.random() < P_TARGET_LEANS:
        person[clip.target, : dim // 8] += 0.5
    drift = np.cumsum(rng.standard_normal((t, n, dim), dtype=np.float32) * 0.02, axis=0)  # (T, N, D)
    noise = rng.standard_normal((t, n, dim), dtype=np.float32) * 0.1
    return np.where(clip.person_mask[..., None], person + drift + noise, 0.0).astype(np.float16)


def build_store(root: Path, dim: int) -> FeatureStore:
    write_demo_data(root / "data", DEMO_DATA)
    geometry = GeometryExtractor()
    specs = [*geometry.arrays(), ArraySpec("appearance", (dim,), "float16")]
    config = {"features": {"geometry": geometry.spec(), "appearance": {"bench_probe": dim}}}
    store = FeatureStore.create(open_storage(root / "cache"), fingerprint(config), config, specs)
    entries = []
    with store.writer() as writer:
        for index, path in enumerate(sorted((root / "data").rglob("*.npz"))):
            clip = read_clip(path)
            writer.add(clip.content_hash, {MASK_ARRAY: clip.person_mask, **geometry.extract([clip])[0], "appearance": embeddings(clip, index, dim)})
            entries.append(SnapshotEntry(f"{path.parent.name}/{path.name}", clip.content_hash, path.parent.name, clip.target, clip.scene, str(path)))
    store.write_snapshot(Snapshot("bench", str(root / "data"), time.time(), tuple(entries)))
    return FeatureStore.open(store.path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="an existing store's directory [default: build the demo-sized one]")
    parser.add_argument("--dataset", help="its dataset snapshot [default: its only one]")
    parser.add_argument("--dim", type=int, default=768, help="width of the built store's appearance family")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        built = time.perf_counter()
        store = FeatureStore.open(args.store) if args.store else build_store(Path(tmp), args.dim)
        built = time.perf_counter() - built
        wall, cpu = time.perf_counter(), time.process_time()
        report = probe_store(store, args.dataset)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    # the process's own time, less building the store (a user's `msgvip probe` finds it built)
    process_wall = time.perf_counter() - PROCESS_START[0] - built
    result = {"store": args.store or f"built: demo clips + {args.dim}-d appearance", "build_s": built, "probe_wall_s": wall, "probe_cpu_s": cpu,
              "process_wall_s_without_build": process_wall, "report": report.to_json()}  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return
    print(format_probe_table(report))
    print(f"{result['store']}: probe {wall:.1f} s wall, {cpu:.1f} s CPU; whole process without building the store {process_wall:.1f} s")


if __name__ == "__main__":
    main()
