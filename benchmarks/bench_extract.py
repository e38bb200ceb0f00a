"""Appearance extraction throughput, three ways, in one run (random-weight DINOv2-sized model).

(a) ceiling   the model alone on pre-cut, pre-normalised crops, ``--batch-size`` per call
(b) msgvip    ``AppearanceExtractor.extract`` end to end over clips in memory, grouped as
              ``msgvip extract`` groups them: crops of valid slots only, cut on the device in batches
(c) naive     the user's original loop: one clip at a time, every slot cropped (empty ones
              too) with a slice + ``F.interpolate`` per box, fp32, one ``torch.save`` .pt per clip

Rates are valid person-frames per second (the useful work; (c) also crops the empty slots, its
raw crop rate is printed beside). (b) runs again at half the occupancy to show that time follows
the valid person-frames, not T x N. Each method runs ``--repeat`` times, interleaved, and the
best time counts (the machine may be shared).

    python benchmarks/bench_extract.py --model-size small --clips 4 --frames 4 --slots 20 --valid 6
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from msgvip.config import ExtractConfig
from msgvip.data.clip import Clip
from msgvip.extract.appearance import AppearanceExtractor, pool_tokens
from msgvip.extract.backbones import load_model, resolve_model

SIZES = {"small": (384, 12, 6), "base": (768, 12, 12)}  # hidden, layers, heads (DINOv2-S / -B)


def make_backbone(out: Path, size: str) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    hidden, layers, heads = SIZES[size]
    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=4 * hidden, patch_size=14, image_size=518
    )
    Dinov2Model(config).save_pretrained(out)
    return out


def make_clips(count: int, frames: int, slots: int, valid: int, height: int, width: int, seed: int = 0) -> list[Clip]:
    """Clips with exactly ``valid`` of ``slots`` people per frame, person-sized boxes, noisy frames."""
    rng = np.random.default_rng(seed)
    clips = []
    for i in range(count):
        mask = np.zeros((frames, slots), bool)
        for t in range(frames):
            mask[t, rng.choice(slots, valid, replace=False)] = True
        h = rng.uniform(0.3, 0.6, (frames, slots)) * height
        w = h * rng.uniform(0.3, 0.5, (frames, slots))
        x, y = rng.uniform(0, 1, (frames, slots)) * (width - w), rng.uniform(0, 1, (frames, slots)) * (height - h)
        boxes = np.stack([x, y, x + w, y + h], -1).astype(np.float32)
        boxes[~mask] = 0
        pixels = rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
        clips.append(Clip(Path(f"bench{i}.npz"), f"bench{i}", pixels, boxes, mask, mask.astype(np.float32), -1, "", "", f"bench{seed}-{i}"))
    return clips


def groups(clips: list[Clip], batch_size: int) -> list[list[Clip]]:
    """As ``run_extract`` groups clips: add clips until the group holds ``batch_size`` valid crops."""
    out, group, crops = [], [], 0
    for clip in clips:
        group.append(clip)
        crops += int(clip.person_mask.sum())
        if crops >= batch_size:
            out.append(group)
            group, crops = [], 0
    return out + ([group] if group else [])


def run_ceiling(net: torch.nn.Module, count: int, args, pooling: str) -> float:
    crops = torch.randn(min(count, args.batch_size), 3, args.crop_size, args.crop_size, device=args.device)
    start = time.perf_counter()
    with torch.inference_mode():
        for lo in range(0, count, args.batch_size):
            pool_tokens(net(pixel_values=crops[: min(args.batch_size, count - lo)]).last_hidden_state, pooling).half().cpu()
    return time.perf_counter() - start


def run_ours(extractor: AppearanceExtractor, clips: list[Clip], batch_size: int) -> float:
    start = time.perf_counter()
    for group in groups(clips, batch_size):
        extractor.extract(group)
    return time.perf_counter() - start


def run_naive(net: torch.nn.Module, clips: list[Clip], args, out_dir: Path, mean, std) -> float:
    """The original per-clip loop (kept deliberately simple, as users write it)."""
    mean_t = torch.tensor(mean, device=args.device).view(3, 1, 1)
    std_t = torch.tensor(std, device=args.device).view(3, 1, 1)
    start = time.perf_counter()
    for clip in clips:
        frames = torch.from_numpy(clip.frames).to(args.device).permute(0, 3, 1, 2).float() / 255.0
        crops = []
        for t in range(clip.num_frames):
            for n in range(clip.num_slots):
                x1, y1, x2, y2 = (int(v) for v in clip.bboxes[t, n])
                x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
                box = frames[t : t + 1, :, y1:y2, x1:x2]
                crop = F.interpolate(box, size=(args.crop_size, args.crop_size), mode="bilinear", align_corners=False)[0]
                crops.append((crop - mean_t) / std_t)
        batch = torch.stack(crops)
        with torch.no_grad():
            chunks = [batch[i : i + args.batch_size] for i in range(0, len(batch), args.batch_size)]
            feats = torch.cat([pool_tokens(net(pixel_values=chunk).last_hidden_state, "cls+mean") for chunk in chunks])
        record = {"features": feats.view(clip.num_frames, clip.num_slots, -1).cpu(), "mask": torch.from_numpy(clip.person_mask)}
        torch.save(record, out_dir / f"{clip.clip_id}.pt")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--slots", type=int, default=20)
    parser.add_argument("--valid", type=int, default=6, help="valid people per frame")
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--model-size", choices=sorted(SIZES), default="small")
    parser.add_argument("--crop-size", type=int, default=224)
    parser.add_argument("--repeat", type=int, default=1, help="interleaved rounds; the best time counts")
    parser.add_argument("--skip-naive", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = make_backbone(tmp / "backbone", args.model_size)
        config = ExtractConfig(
            features=("appearance",), backbone=str(model_dir), crop_size=args.crop_size, batch_size=args.batch_size,
            device=args.device, dtype="float32", local_files_only=True,
        )  # fmt: skip
        extractor = AppearanceExtractor(config)
        resolved = resolve_model(str(model_dir))
        net = load_model(resolved, "backbone", args.device)
        full = make_clips(args.clips, args.frames, args.slots, args.valid, args.height, args.width)
        half = make_clips(args.clips, args.frames, args.slots, max(1, args.valid // 2), args.height, args.width, seed=1)
        n_full, n_half = sum(int(c.person_mask.sum()) for c in full), sum(int(c.person_mask.sum()) for c in half)
        all_slots = sum(c.num_frames * c.num_slots for c in full)
        hidden = SIZES[args.model_size][0]
        print(
            f"DINOv2-{args.model_size[0].upper()}-sized random model (hidden {hidden}), crops {args.crop_size}px, batch {args.batch_size}, "
            f"device {args.device}, torch threads {torch.get_num_threads()}\n"
            f"{args.clips} clips x {args.frames} frames x {args.slots} slots, {args.height}x{args.width}: "
            f"{n_full} valid person-frames of {all_slots} slots ({args.valid}/{args.slots}); half occupancy: {n_half}"
        )
        run_ours(extractor, full[:1], args.batch_size)  # warm-up: first calls, allocator
        best: dict[str, float] = {}
        for _ in range(args.repeat):
            for name, fn in (
                ("ceiling", lambda: run_ceiling(net, n_full, args, config.pooling)),
                ("ours", lambda: run_ours(extractor, full, args.batch_size)),
                ("ours_half", lambda: run_ours(extractor, half, args.batch_size)),
                ("naive", None if args.skip_naive else lambda: run_naive(net, full, args, tmp, resolved.mean, resolved.std)),
            ):
                if fn is not None:
                    seconds = fn()
                    best[name] = min(best.get(name, np.inf), seconds)

        rate = {k: (n_half if k == "ours_half" else n_full) / v for k, v in best.items()}
        print(f"\n{'':34}{'seconds':>9}{'valid crops/s':>15}")
        print(f"{'(a) model alone, pre-cut crops':34}{best['ceiling']:9.2f}{rate['ceiling']:15.2f}")
        share = rate["ours"] / rate["ceiling"]
        print(f"{'(b) msgvip batched extractor':34}{best['ours']:9.2f}{rate['ours']:15.2f}   {share:.0%} of the ceiling")
        scaling = f"time x{best['ours_half'] / best['ours']:.2f} for crops x{n_half / n_full:.2f}"
        print(f"{'    same, half the occupancy':34}{best['ours_half']:9.2f}{rate['ours_half']:15.2f}   {scaling}")
        if "naive" in best:
            raw = f"({all_slots / best['naive']:.2f} crops/s incl. empty slots; its time does not depend on occupancy)"
            print(f"{'(c) naive per-clip loop':34}{best['naive']:9.2f}{rate['naive']:15.2f}   {raw}")
            print(f"\nspeed-up of (b) over (c): {best['naive'] / best['ours']:.2f}x on the same clips")


if __name__ == "__main__":
    main()
