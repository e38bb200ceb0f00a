"""Training from the store against re-extracting features every epoch (the user's original way).

In one run, on synthetic demo clips, with the same ranker, the same data and the same batches:
- (c) epoch time when batches come from the feature store vs. when every epoch decodes the clips
  and runs the extractors again (here with the tiny random demo backbones; real DINOv2 makes the
  re-extraction side far slower: ~51 minutes per pass over the user's data set),
- (b) the fraction of a training epoch spent waiting for data, with the split in RAM and streamed
  from disk (`msgvip train --in-memory yes|no`).

    python benchmarks/bench_train_epoch.py [--clips 96 --frames 24 --epochs 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from msgvip.config import ExtractConfig
from msgvip.data.clip import read_clip
from msgvip.data.synthetic import DemoDataConfig, write_demo_data
from msgvip.extract.backbones import DEMO_CROP_SIZE, make_demo_backbones
from msgvip.extract.registry import build_extractors
from msgvip.pipelines import extract_features, run_extract
from msgvip.ranker import ImportanceRanker, StoreDataset, ranking_loss, train
from msgvip.store import FeatureStore
from msgvip.store.feature_store import MASK_ARRAY
from _small_config import SMALL_MODEL, SMALL_TRAIN  # noqa: E402  (the settings its README figures were measured with)


def step(model, optimizer, features: dict[str, torch.Tensor], mask: torch.Tensor, target: torch.Tensor) -> None:
    logits = model({k: v.float() for k, v in features.items()}, mask)
    loss = ranking_loss(logits, target, mask.any(1))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def epoch_from_store(model, optimizer, data: StoreDataset, batch_size: int, seed: int) -> float:
    start = time.perf_counter()
    for batch in data.batches(batch_size, shuffle=True, seed=seed):
        step(model, optimizer, batch.features, batch.person_mask, batch.target)
    return time.perf_counter() - start


def epoch_reextracting(model, optimizer, data: StoreDataset, config: ExtractConfig, batch_size: int, seed: int) -> float:
    """Same clips and batch order as :func:`epoch_from_store`, features recomputed from the clips."""
    extractors = build_extractors(config)
    start = time.perf_counter()
    for batch in data.batches(batch_size, shuffle=True, seed=seed):
        entries = [data.entries[i] for i in batch.index.tolist()]
        clips = [read_clip(e.source, e.key) for e in entries]
        arrays = extract_features(extractors, clips)
        t, n = batch.person_mask.shape[1:]  # padded as the store's batch is: to its own clips' largest

        def stack(name: str) -> torch.Tensor:
            out = np.zeros((len(clips), t, n, *arrays[0][name].shape[2:]), arrays[0][name].dtype)
            for i, a in enumerate(arrays):
                out[i, : a[name].shape[0], : a[name].shape[1]] = a[name]
            return torch.from_numpy(out.reshape(len(clips), t, n, -1) if name != MASK_ARRAY else out)

        step(model, optimizer, {f: stack(f) for f in data.families}, stack(MASK_ARRAY), batch.target)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=96)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--features", default="appearance,face,geometry,pose")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_demo_data(tmp / "data", DemoDataConfig(clips=args.clips, frames=args.frames, splits=(("train", 0.8), ("val", 0.2))))
        models = make_demo_backbones(tmp / "models")
        config = ExtractConfig(features=tuple(args.features.split(",")), crop_size=DEMO_CROP_SIZE,
                               backbone=str(models["backbone"]), pose_model=str(models["pose_model"]), num_workers=0)  # fmt: skip
        extracted = run_extract(tmp / "data", config, cache_dir=tmp / "cache", progress=False)
        store = FeatureStore.open(Path(extracted.store))
        data = StoreDataset(store, "train", in_memory="yes")

        timings = {"store": [], "reextract": []}
        for name in timings:
            torch.manual_seed(0)
            model = ImportanceRanker(SMALL_MODEL, data.feature_dims)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
            for epoch in range(args.epochs):
                if name == "store":
                    timings[name].append(epoch_from_store(model, optimizer, data, args.batch_size, epoch))
                else:
                    timings[name].append(epoch_reextracting(model, optimizer, data, config, args.batch_size, epoch))

        waits = {}
        for mode in ("yes", "no"):
            summary = train(store, tmp / f"run-{mode}", replace(SMALL_TRAIN, epochs=args.epochs, in_memory=mode, patience=100), SMALL_MODEL, progress=False)
            waits[mode] = summary.data_wait_fraction

    store_epoch, reextract_epoch = float(np.median(timings["store"])), float(np.median(timings["reextract"]))
    figures = {
        "clips_train": len(data), "frames": args.frames, "features": args.features, "extract_seconds": extracted.seconds,
        "epoch_seconds_from_store": store_epoch, "epoch_seconds_reextracting": reextract_epoch,
        "reextract_over_store": reextract_epoch / store_epoch,
        "data_wait_fraction_in_memory": waits["yes"], "data_wait_fraction_streamed": waits["no"],
    }  # fmt: skip
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"{len(data)} training clips, T={args.frames}, features {args.features} (tiny random demo backbones)")
    print(f"one-off extraction into the store: {extracted.seconds:.1f} s")
    print(f"epoch, batches from the store     {store_epoch:7.2f} s")
    print(f"epoch, re-extracting every batch  {reextract_epoch:7.2f} s   ({figures['reextract_over_store']:.1f}x slower)")
    print(f"data wait per epoch: {100 * waits['yes']:.2f}% in memory, {100 * waits['no']:.2f}% streamed from disk")


if __name__ == "__main__":
    main()
