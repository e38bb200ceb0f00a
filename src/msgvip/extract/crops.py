"""Cutting person crops for a whole group of clips at once, on the device, with tensor ops.

Conventions (every family shares them):

- Coordinates are continuous pixels: pixel ``k`` of a frame covers ``[k, k + 1)``, its centre is
  ``k + 0.5``; boxes and windows are ``x1 y1 x2 y2`` in these units.
- A crop of ``h x w`` pixels of a window ``(x1, y1, x2, y2)`` samples output pixel ``(i, j)`` at
  ``(x1 + (j + 0.5) (x2 - x1) / w, y1 + (i + 0.5) (y2 - y1) / h)``, bilinearly; outside the frame
  the image is black (zeros before normalisation). This is ``F.affine_grid`` +
  ``F.grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False)``, and the same as
  resizing the window with ``F.interpolate(..., align_corners=False)`` where the window lies on
  whole pixels inside the frame and is not smaller than the crop.

Shapes: ``P`` crops in a group (valid person-frames), ``B`` crops in one model batch, ``F``
frames in a frame bank, ``U`` distinct frames in a batch, ``h x w`` the crop size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data.clip import Clip

OUTSIDE = -4.0  # a normalised grid coordinate outside every frame: samples read zeros


@dataclass
class CropPlan:
    """Every valid person-frame of a group of clips, ordered by clip, frame, slot.

    ``clip``, ``frame``, ``slot`` are (P,) int64 indices; ``boxes`` is (P, 4) float32 pixels.
    """

    clip: np.ndarray
    frame: np.ndarray
    slot: np.ndarray
    boxes: np.ndarray

    @classmethod
    def of(cls, clips: Sequence[Clip]) -> CropPlan:
        parts = [np.nonzero(c.person_mask) for c in clips]  # per clip: (frames, slots) of valid people
        counts = [len(t) for t, _ in parts]
        return cls(
            clip=np.repeat(np.arange(len(clips), dtype=np.int64), counts),
            frame=np.concatenate([t for t, _ in parts] or [np.zeros(0, np.int64)]).astype(np.int64),
            slot=np.concatenate([n for _, n in parts] or [np.zeros(0, np.int64)]).astype(np.int64),
            boxes=np.concatenate([c.bboxes[t, n] for c, (t, n) in zip(clips, parts)] or [np.zeros((0, 4), np.float32)]).astype(np.float32),
        )

    def __len__(self) -> int:
        return len(self.clip)

    def scatter(self, values: np.ndarray, clips: Sequence[Clip]) -> list[np.ndarray]:
        """(P, ...) values -> one (T, N, ...) array per clip, zeros in absent slots."""
        bounds = np.searchsorted(self.clip, np.arange(len(clips) + 1))
        out = []
        for i, clip in enumerate(clips):
            per_clip = np.zeros((clip.num_frames, clip.num_slots, *values.shape[1:]), values.dtype)
            lo, hi = bounds[i], bounds[i + 1]
            per_clip[self.frame[lo:hi], self.slot[lo:hi]] = values[lo:hi]
            out.append(per_clip)
        return out


class FrameBank:
    """The frames of a group that hold at least one crop: uint8 on the device, one stack per frame size.

    ``bank_of[p]`` / ``row_of[p]`` say which stack and row hold the frame of plan row ``p``.
    """

    def __init__(self, clips: Sequence[Clip], plan: CropPlan, device: torch.device | str):
        self.device = torch.device(device)
        shapes: dict[tuple[int, int], int] = {}
        stacks: list[list[np.ndarray]] = []
        sizes: list[int] = []
        self.bank_of = np.zeros(len(plan), np.int64)
        self.row_of = np.zeros(len(plan), np.int64)
        bounds = np.searchsorted(plan.clip, np.arange(len(clips) + 1))
        for i, clip in enumerate(clips):  # bookkeeping per clip; the pixels move in one copy per size
            lo, hi = bounds[i], bounds[i + 1]
            if lo == hi:
                continue
            needed, local = np.unique(plan.frame[lo:hi], return_inverse=True)
            bank = shapes.setdefault((clip.height, clip.width), len(shapes))
            if bank == len(stacks):
                stacks.append([])
                sizes.append(0)
            self.bank_of[lo:hi] = bank
            self.row_of[lo:hi] = sizes[bank] + local
            stacks[bank].append(clip.frames[needed])
            sizes[bank] += len(needed)
        self.frames = [torch.from_numpy(np.concatenate(s)).to(self.device, non_blocking=True) for s in stacks]  # (F, H, W, 3) uint8
        self.single = len(self.frames) == 1

    def crop(self, rows: slice | np.ndarray, windows: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Crops of plan ``rows`` (B of them) over ``windows`` (B, 4) pixels -> (B, 3, h, w) float32 in [0, 255]."""
        frame_rows = torch.from_numpy(self.row_of[rows]).to(self.device)
        if self.single:
            return crop_windows(self.frames[0], frame_rows, windows, size)
        banks = self.bank_of[rows]
        out = torch.empty((len(banks), 3, *size), dtype=torch.float32, device=self.device)
        for bank in np.unique(banks):  # one pass per distinct frame size in the batch
            sel = torch.from_numpy(np.flatnonzero(banks == bank)).to(self.device)
            out[sel] = crop_windows(self.frames[bank], frame_rows[sel], windows[sel], size)
        return out


def crop_windows(frames: torch.Tensor, frame_index: torch.Tensor, windows: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear crops of many windows of many frames in one ``grid_sample`` call.

    Shapes: frames (F, H, W, 3) uint8, frame_index (B,) long into frames, windows (B, 4) float
    pixels x1 y1 x2 y2 -> (B, 3, h, w) float32, values in [0, 255], zeros outside the frame.

    Crops are grouped by frame: each of the ``U`` distinct frames is sampled once with a grid
    holding all its crops stacked (padded to the busiest frame's count with grid points outside
    the frame), so no frame is copied per crop.
    """
    h, w = size
    n, _, height, width = len(frame_index), *frames.shape[:3]
    x1, y1, x2, y2 = windows.float().unbind(-1)
    theta = torch.zeros((n, 2, 3), dtype=torch.float32, device=frames.device)
    theta[:, 0, 0] = (x2 - x1) / width
    theta[:, 0, 2] = (x1 + x2) / width - 1
    theta[:, 1, 1] = (y2 - y1) / height
    theta[:, 1, 2] = (y1 + y2) / height - 1
    grid = F.affine_grid(theta, [n, 3, h, w], align_corners=False)  # (B, h, w, 2)

    order = torch.argsort(frame_index, stable=True)
    frames_used, inverse, counts = torch.unique_consecutive(frame_index[order], return_inverse=True, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    slot_of = torch.empty_like(frame_index)  # (B,) position of each crop among its frame's crops
    slot_of[order] = torch.arange(n, device=frames.device) - starts[inverse]
    group_of = torch.empty_like(frame_index)  # (B,) which distinct frame
    group_of[order] = inverse
    per_frame = int(counts.max())
    stacked = torch.full((len(frames_used), per_frame, h, w, 2), OUTSIDE, dtype=torch.float32, device=frames.device)
    stacked[group_of, slot_of] = grid  # (U, K, h, w, 2)

    source = frames[frames_used].permute(0, 3, 1, 2).float()  # (U, 3, H, W)
    grid_all = stacked.view(len(frames_used), per_frame * h, w, 2)  # (U, K h, w, 2)
    sampled = F.grid_sample(source, grid_all, mode="bilinear", padding_mode="zeros", align_corners=False)  # (U, 3, K h, w)
    sampled = sampled.view(len(frames_used), 3, per_frame, h, w).permute(0, 2, 1, 3, 4)  # (U, K, 3, h, w)
    return sampled[group_of, slot_of]  # (B, 3, h, w)


def context_windows(boxes: torch.Tensor, context: float) -> torch.Tensor:
    """Boxes grown by ``context`` x their width (height) on the left and right (top and bottom).  (B, 4) -> (B, 4)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    dx, dy = (x2 - x1) * context, (y2 - y1) * context
    return torch.stack([x1 - dx, y1 - dy, x2 + dx, y2 + dy], -1)


def aspect_windows(boxes: torch.Tensor, aspect: float, padding: float) -> torch.Tensor:
    """Boxes widened or heightened about their centre to width/height = ``aspect``, then scaled by
    ``padding`` (the top-down pose convention: 0.75 and 1.25 for a 256 x 192 input).  (B, 4) -> (B, 4)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    cx, cy, bw, bh = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
    bw, bh = torch.maximum(bw, bh * aspect), torch.maximum(bh, bw / aspect)
    half_w, half_h = bw * padding / 2, bh * padding / 2
    return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], -1)


def normalize(crops: torch.Tensor, rescale: float, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(B, 3, h, w) raw pixel values -> the model's input: ``(x * rescale - mean) / std`` per channel."""
    mean_t = torch.tensor(mean, dtype=crops.dtype, device=crops.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=crops.dtype, device=crops.device).view(1, 3, 1, 1)
    return (crops * rescale - mean_t) / std_t


def batches(count: int, batch_size: int) -> Iterator[slice]:
    """Rows ``[0, count)`` in consecutive slices of at most ``batch_size``."""
    for start in range(0, count, batch_size):
        yield slice(start, min(start + batch_size, count))


def map_crops(
    bank: FrameBank, windows: torch.Tensor, size: tuple[int, int], batch_size: int, fn: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``fn`` over the crops of every plan row, ``batch_size`` crops per call; results stay on the device.

    Shapes: windows (P, 4) -> cat of ``fn((B, 3, h, w) raw crops) -> (B, ...)`` = (P, ...).
    """
    return torch.cat([fn(bank.crop(rows, windows[rows], size)) for rows in batches(len(windows), batch_size)])
