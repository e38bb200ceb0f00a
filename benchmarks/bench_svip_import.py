"""svip's own model vs msgvip's SvipRanker with its weights imported: the same logits?

Needs a checkout of the user's svip repository (github.com/yml2002/svip; written against commit
26674fd), e.g. from a bare clone::

    mkdir /tmp/svip && git --git-dir svip.git archive HEAD | tar -x -C /tmp/svip
    SVIP_REPO=/tmp/svip python benchmarks/bench_svip_import.py

What it does, on CPU in float32:

1. builds svip's ImportanceRanker from svip's default config, with its DINOv2 replaced by
   nothing (svip's forward takes precomputed features: the L2-normalised CLS token and the
   output of its box MLP), perturbs every weight so that no zero-initialised bias hides a wrong
   mapping, and trains it one step with svip's loss;
2. saves ``best.pt`` with svip's own trainer (MemoryEfficientTrainer.save_checkpoint_with_metrics);
3. reads it with msgvip's svip importer (weights-only load, renames, shape checks) into SvipRanker;
4. scores the same clips with both in eval mode: svip gets the CLS features L2-normalised and its
   box MLP applied to boxes normalised as its data loader does; SvipRanker gets the raw CLS
   features and msgvip's ``svip_box`` features of the pixel boxes.

Every slot of the clips holds a person in some frame and every frame a person (svip's eval mode
gives NaN otherwise, see the end); people enter and leave, and some frames hold one person.
Prints the largest absolute difference of the 14 box features and of the logits; the logits
must agree within 1e-4.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from msgvip.extract.geometry import svip_box_features
from msgvip.ranker.svip import SvipConfig, SvipRanker
from msgvip.ranker.svip_import import load_svip_weights, read_svip_checkpoint

TOLERANCE = 1e-4
HEIGHT, WIDTH = 192, 336  # svip's DataConfig image size: its loader divides boxes by these


def svip_modules(repo: Path):
    sys.path.insert(0, str(repo))
    from src.configs.config import get_default_config
    from src.models import importance_ranker
    from src.models.bbox_geom import BBoxGeomEncoder
    from src.training.loss import CombinedLoss
    from src.training.trainer import MemoryEfficientTrainer

    # the frozen DINOv2 is not part of the checkpoint and not needed with precomputed features
    importance_ranker.VisionEncoder = lambda **kwargs: torch.nn.Identity()
    return get_default_config, importance_ranker.ImportanceRanker, BBoxGeomEncoder, CombinedLoss, MemoryEfficientTrainer


def make_clips(B: int, T: int, N: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(B, T, N, 4) pixel boxes and (B, T, N) masks: every slot and every frame holds a person."""
    rng = np.random.default_rng(seed)
    mask = rng.random((B, T, N)) < 0.7
    for b in range(B):
        mask[b, 3] = False
        mask[b, 3, b % N] = True  # a frame of one person
        mask[b, 5 + b] = False
        mask[b, 5 + b, :2] = True
        mask[b, ~mask[b].any(1), 0] = True  # no empty frame
        mask[b, 0, ~mask[b].any(0)] = True  # no empty slot
    size = rng.uniform([20, 40], [120, 180], (B, 1, N, 2))  # (B, 1, N, 2) box width, height
    start = rng.uniform(0, 1, (B, 1, N, 2)) * ([WIDTH, HEIGHT] - size)
    corner = np.clip(start + np.cumsum(rng.normal(0, 3, (B, T, N, 2)), 1), 0, [WIDTH, HEIGHT] - size)  # (B, T, N, 2)
    return np.concatenate([corner, corner + size], -1).astype(np.float32), mask


def svip_boxes(bboxes: np.ndarray, mask: np.ndarray) -> torch.Tensor:
    """Boxes as svip's data loader hands them to its model: /frame size, clipped, float16, zeroed where absent."""
    box = torch.tensor(bboxes)  # a copy: the in-place normalisation below must not reach the caller's array
    box[..., [0, 2]] = box[..., [0, 2]].clamp(0, WIDTH) / WIDTH
    box[..., [1, 3]] = box[..., [1, 3]].clamp(0, HEIGHT) / HEIGHT
    box = box.clamp(0.0, 1.0).to(torch.float16)
    return box.masked_fill(~torch.from_numpy(mask).unsqueeze(-1), 0.0).float()


def main() -> None:
    repo = os.environ.get("SVIP_REPO")
    if not repo or not (Path(repo) / "src" / "models" / "importance_ranker.py").is_file():
        sys.exit("set SVIP_REPO to a checkout of github.com/yml2002/svip (see this file's docstring)")
    get_default_config, ImportanceRanker, BBoxGeomEncoder, CombinedLoss, Trainer = svip_modules(Path(repo))
    torch.manual_seed(0)
    config = get_default_config()
    svip = ImportanceRanker(config)
    with torch.no_grad():
        for p in svip.parameters():
            p.add_(torch.randn_like(p) * 0.05)

    B, T, N = 3, 24, 6
    bboxes, mask_np = make_clips(B, T, N)
    mask = torch.from_numpy(mask_np)
    cls = torch.randn(B, T, N, 768)
    vision = F.normalize(cls, dim=-1).masked_fill(~mask.unsqueeze(-1), 0.0)  # what svip's VisionEncoder caches
    boxes = svip_boxes(bboxes, mask_np)
    with torch.no_grad():
        geometry = svip.geom(boxes, mask)  # what svip's feature cache holds
    target = torch.tensor([0, 2, 5])

    optimizer = torch.optim.AdamW([p for p in svip.parameters() if p.requires_grad], lr=5e-5, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=30, eta_min=1e-5)
    svip.train()
    out = svip(vision_features=vision, geometry_features=geometry, person_mask=mask, target_index=target)
    CombinedLoss(config).get_loss_components(importance_logits=out["importance_logits"], target_index=target, person_mask=mask)["total_loss"].backward()
    optimizer.step()
    svip.eval()

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config=config, model=svip, train_dataloader=None, val_dataloader=None, optimizer=optimizer, scheduler=scheduler,
                          loss_function=None, device=torch.device("cpu"), visualization_dir=None, checkpoint_dir=tmp, records_dir=None,
                          predictions_dir=None)  # fmt: skip
        trainer.save_checkpoint_with_metrics(name="best.pt", train_loss=1.0, train_acc=0.5, val_loss=1.0, val_acc=0.5, rank1=50.0, rank2=70.0, rank3=80.0)
        checkpoint = Path(tmp) / "best.pt"
        payload = read_svip_checkpoint(checkpoint)
        ours = SvipRanker(SvipConfig(), {"appearance": 768, "svip_box": 14}).eval()
        load_svip_weights(ours, payload["model_trainable"], str(checkpoint))
        print(f"checkpoint: {len(payload['model_trainable'])} svip tensors, {checkpoint.stat().st_size / 2**20:.1f} MiB; loaded {len(ours.state_dict())} into SvipRanker")

    box_features = torch.from_numpy(np.stack([svip_box_features(bboxes[b], mask_np[b], HEIGHT, WIDTH) for b in range(B)]))
    raw_geometry = BBoxGeomEncoder()
    raw_geometry.mlp = torch.nn.Identity()  # its 14 features before the MLP
    box_diff = float((raw_geometry(boxes, mask) - box_features).abs().max())

    with torch.no_grad():
        theirs = svip(vision_features=vision, geometry_features=geometry, person_mask=mask)["importance_logits"]
        mine = ours({"appearance": cls, "svip_box": box_features}, mask)
    logit_diff = float((theirs - mine).abs().max())
    print(f"clips: {B} x {T} frames x {N} slots, {int(mask.sum())} person-frames; logits span {float(theirs.min()):.3f} .. {float(theirs.max()):.3f}")
    print(f"max |svip box features - msgvip svip_box| = {box_diff:.3g}")
    print(f"max |svip logits - imported SvipRanker logits| = {logit_diff:.3g}  (tolerance {TOLERANCE:g})")

    # the case svip leaves undefined: an empty slot (padding) in eval mode on CPU
    padded_mask = F.pad(mask, (0, 1))
    with torch.no_grad():
        padded = svip(vision_features=F.pad(vision, (0, 0, 0, 1)), geometry_features=F.pad(geometry, (0, 0, 0, 1)), person_mask=padded_mask)
        rel = padded["importance_logits_rel"][:, :N]
        mine_padded = ours({"appearance": F.pad(cls, (0, 0, 0, 1)), "svip_box": F.pad(box_features, (0, 0, 0, 1))}, padded_mask)
    constant = bool((rel == rel[:, :1]).all())
    print(f"with one empty slot, svip's relation scores are {'one constant per clip' if constant else 'distinct'} and its logits move by "
          f"{float((padded['importance_logits'][:, :N] - theirs).abs().max()):.3g}; SvipRanker's move by {float((mine_padded[:, :N] - mine).abs().max()):.3g}")
    if not logit_diff < TOLERANCE:
        sys.exit(f"FAIL: logits differ by {logit_diff:.3g} > {TOLERANCE:g}")


if __name__ == "__main__":
    main()
