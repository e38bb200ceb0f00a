"""Does one outlier clip cost only itself in RAM? Peak RSS of a training process (the default
model, 2 epochs) on 60 small clips (16 frames x 8 slots), and on the same clips plus one of 400
frames x 400 slots (4 people in it), with batches cut by padded size (msgvip's batching) and with
fixed batches of 8 (every clip of the outlier's batch padded to 400 x 400), each in a fresh
process, in the same run.

    .venv/bin/python benchmarks/bench_outlier_rss.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from msgvip.pipelines import run_extract

# one training run in a fresh process: its peak RSS is what the kernel reports for it
CHILD = """
import json, resource, sys
import msgvip.ranker.dataset as dataset
from msgvip.ranker import TrainConfig, train
from msgvip.store import FeatureStore
if sys.argv[3] == "fixed":
    dataset.PAD_BUDGET = float("inf")  # batches of batch_size clips whatever their sizes
train(FeatureStore.open(sys.argv[1]), sys.argv[2], TrainConfig(epochs=2, batch_size=8, device="cpu", probe=False, threads=1), progress=False, dataset=sys.argv[4])
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))
"""


def clip(rng: np.random.Generator, frames: int, slots: int, people: int, target: int) -> dict[str, np.ndarray]:
    height, width = 48, 80
    bboxes = np.zeros((frames, slots, 4), np.float32)
    mask = np.zeros((frames, slots), bool)
    for slot in rng.choice(slots, people, replace=False):
        x, y = rng.uniform(0, width - 20), rng.uniform(0, height - 20)
        bboxes[:, slot] = [x, y, x + rng.uniform(6, 20), y + rng.uniform(8, 20)]
        mask[:, slot] = True
    target = int(np.flatnonzero(mask.any(0))[target % people])
    return {"frames": np.zeros((frames, height, width, 3), np.uint8), "bboxes": bboxes, "person_mask": mask,
            "target_index": np.array(target), "scene_category": np.array("01")}  # fmt: skip


def write_clips(folder: Path, outlier: bool) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (folder / split).mkdir(parents=True)
    for i in range(60):
        np.savez(folder / ("train" if i < 48 else "val") / f"clip_{i:02d}.npz", **clip(rng, 16, 8, 2 + i % 4, i))
    if outlier:
        np.savez(folder / "train" / "outlier.npz", **clip(rng, 400, 400, 4, 0))


def peak_rss(store: str, run: Path, batching: str, dataset: str) -> int:
    done = subprocess.run([sys.executable, "-c", CHILD, store, str(run), batching, dataset], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return int(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, outlier in (("small", False), ("with-outlier", True)):
            write_clips(root / name, outlier)
            store = run_extract(root / name, cache_dir=root / "cache", progress=False).store
            for batching in ("padded-size", "fixed"):
                results[f"{name}/{batching}"] = peak_rss(store, root / f"run-{name}-{batching}", batching, name)
    if args.json:
        print(json.dumps(results))
        return
    base = results["small/padded-size"]
    print(f"{'clips':<16} {'batching':<12} {'peak RSS MB':>12} {'/ small clips':>14}")
    for key, value in results.items():
        name, batching = key.split("/")
        print(f"{name:<16} {batching:<12} {value / 1e6:12.0f} {value / base:14.2f}")


if __name__ == "__main__":
    main()
