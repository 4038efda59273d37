"""PyTorch datasets over loader records: training pairs, test queries and gallery images."""
from __future__ import annotations

import logging
import zlib
from pathlib import Path

import torch
from torch.utils.data import Dataset

from sgmn.data import lpr4m
from sgmn.data.frames import FrameReadError, load_clip_frames, load_image, read_image
from sgmn.data.records import Clip, TestSet
from sgmn.data.splits import read_split  # noqa: F401  (torch-free, re-exported)

log = logging.getLogger(__name__)
MAX_BOXES = 16  # boxes kept per frame in a batch (LPR4M's "abundant" starts above 7)


def index_of(dataset_config: dict) -> str | None:
    """dataset.index.path of a config: the shard index the frames and images are read through
    (`sgmn index`), or None for files in LPR4M's layout (a config without the key too)."""
    return (dataset_config.get("index") or {}).get("path") or None


def boxes_tensor(frame_boxes, index: torch.Tensor, pixel_size: tuple[int, int] | None = None):
    """(L, MAX_BOXES, 4) boxes of the sampled frames, zero-padded, and their counts (L,)."""
    num = index.numel()
    boxes = torch.zeros(num, MAX_BOXES, 4)
    counts = torch.zeros(num, dtype=torch.long)
    if frame_boxes is None:
        return boxes, counts
    if pixel_size is not None:
        frame_boxes = lpr4m.normalise_boxes(frame_boxes, *pixel_size)
    for t, i in enumerate(index.tolist()):
        if 0 <= i < len(frame_boxes) and frame_boxes[i]:   # a tracklet may end before the video
            b = torch.tensor(frame_boxes[i][:MAX_BOXES], dtype=torch.float32)
            boxes[t, : len(b)], counts[t] = b, len(b)
    return boxes, counts


def target_index(clip: Clip, index: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(L,) position of the intended product's box among each sampled frame's boxes, -1 for none.

    LPR-Synth names it (`target_index`, from synth_meta.json); real LPR4M annotates one
    intended-product box per frame (RICE supplementary, Sec. 2.2), so there it is the first box.
    """
    named = clip.extra.get("target_index")
    if named is None:
        return torch.where(counts > 0, 0, -1)
    named = torch.tensor(named + [-1], dtype=torch.long)           # index -1 (padding) -> -1
    out = named[index.clamp(min=-1)]
    return torch.where(out < counts, out, -1)                      # a box dropped past MAX_BOXES


DETECTOR_SCALE, DETECTOR_SHIFT = 0.15, 0.1   # emulated detector: size x U(1 -/+ 0.15), centre + U(-/+ 0.1) x size


def detector_boxes(boxes: torch.Tensor, frames: torch.Tensor, n_frames: int, key: str) -> torch.Tensor:
    """(L, 4) annotated boxes of frames `frames` (indices among the clip's n_frames annotated
    ones) as an emulated detector returns them: each side scaled by U(0.85, 1.15) and the centre
    moved by up to 0.1 of the box size, clipped to the frame (IoU with the annotation 0.73-0.90
    on 90% of LPR-Synth's test frames, median 0.80; spec/baselines.md section 5 asks for about
    0.7-0.95). It never misses a product in view nor fires on another one. The draws are fixed per clip (`key`) and frame, so a frame is detected the same way
    in every epoch, at every L, in training and at test time."""
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    n = max(n_frames, 1)
    scale = 1 + (torch.rand(n, 2, generator=g) * 2 - 1) * DETECTOR_SCALE
    shift = (torch.rand(n, 2, generator=g) * 2 - 1) * DETECTOR_SHIFT
    i = frames.clamp(0, n - 1)
    size = boxes[:, 2:] - boxes[:, :2]
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2 + shift[i] * size
    return torch.cat([centre - size * scale[i] / 2, centre + size * scale[i] / 2], 1).clamp(0, 1)


def clip_boxes(clip: Clip, index: torch.Tensor, mask: torch.Tensor) -> dict:
    """The sampled frames' annotated boxes (`boxes`, `box_counts`) and the intended product's box
    per frame as the emulated detector finds it (`target_box` (L, 4), `target_present` (L,);
    detector_boxes), normalised [x1, y1, x2, y2]; `target_index` (L,) is that box's position
    among `boxes` (-1: not in view), the tracker's identity for the two-stage baselines."""
    pixel = None
    if clip.extra.get("pixel_boxes") and mask.any():
        pixel = read_image(clip.frame_paths[int(index[mask][0])]).shape[1::-1]
    boxes, counts = boxes_tensor(clip.frame_boxes, index, pixel)
    target = target_index(clip, index, counts) if clip.frame_boxes is not None else torch.full_like(counts, -1)
    present = target >= 0
    box = boxes.gather(1, target.clamp(min=0).view(-1, 1, 1).expand(-1, 1, 4)).squeeze(1)
    n = len(clip.frame_boxes) if clip.frame_boxes is not None else 0
    box = detector_boxes(box, index, n, clip.video_id)
    return {"boxes": boxes, "box_counts": counts, "target_box": box * present.unsqueeze(1),
            "target_present": present, "target_index": target}


class ClipPairDataset(Dataset):
    """(clip, shop image, ASR, title, product) training pairs.

    Products are numbered by their image id, so several clips of one product share a label and
    are never used as each other's negatives.
    """

    def __init__(self, clips: list[Clip], num_frames: int, image_size: int, on_bad_frame: str = "error",
                 store=None):
        self.clips, self.store = clips, store
        self.num_frames, self.image_size, self.on_bad_frame = num_frames, image_size, on_bad_frame
        self.product_ids = sorted({c.image_id for c in clips})
        self.label = {pid: i for i, pid in enumerate(self.product_ids)}
        self.titles = {c.image_id: c.title for c in clips}
        self.frame_errors: list[str] = []

    def __len__(self):
        return len(self.clips)

    def __getitem__(self, i: int) -> dict:
        clip = self.clips[i]
        try:
            frames, mask, index = load_clip_frames(clip.frame_paths, clip.video_path, self.num_frames,
                                                   self.image_size, self.on_bad_frame, self.frame_errors,
                                                   self.store)
            image = load_image(clip.image_path, self.image_size, self.store)
        except FrameReadError as err:
            raise FrameReadError(f"{err} (annotation {clip.source})") from None
        return {"frames": frames, "frame_mask": mask, "image": image, "asr": clip.asr,
                "title": clip.title, "product": self.label[clip.image_id], "index": i,
                **clip_boxes(clip, index, mask)}


class QueryDataset(Dataset):
    """Test clips; an unreadable clip yields ok=False and its error instead of failing the run."""

    def __init__(self, test: TestSet, num_frames: int, image_size: int, store=None):
        self.queries, self.num_frames, self.image_size = test.queries, num_frames, image_size
        self.store = store

    def __len__(self):
        return len(self.queries)

    def __getitem__(self, i: int) -> dict:
        q = self.queries[i]
        errors: list[str] = []
        try:
            frames, mask, index = load_clip_frames(q.frame_paths, q.video_path, self.num_frames,
                                                   self.image_size, "mask", errors, self.store)
            boxes = clip_boxes(q, index, mask)
            ok, error = True, ""
        except FrameReadError as err:
            frames = torch.zeros(self.num_frames, 3, self.image_size, self.image_size)
            mask = torch.zeros(self.num_frames, dtype=torch.bool)
            boxes = clip_boxes(q, torch.full((self.num_frames,), -1), mask)
            ok, error = False, str(err)
        return {"frames": frames, "frame_mask": mask, "ok": ok, "error": error,
                "frame_errors": errors, "video_id": q.video_id, "asr": q.asr, **boxes}


class ImageDataset(Dataset):
    """Shop images by id; an unreadable image yields ok=False and its error."""

    def __init__(self, image_paths: dict[str, Path], image_ids: list[str], image_size: int, store=None):
        self.paths, self.ids, self.image_size, self.store = image_paths, image_ids, image_size, store

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        image_id = self.ids[i]
        try:
            image, ok, error = load_image(self.paths[image_id], self.image_size, self.store), True, ""
        except FrameReadError as err:
            image, ok, error = torch.zeros(3, self.image_size, self.image_size), False, str(err)
        return {"image": image, "ok": ok, "error": error, "image_id": image_id}


def collate(items: list[dict]) -> dict:
    """Stack tensors, keep strings and lists as lists."""
    out = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(values[0], (bool, int)) and not isinstance(values[0], str):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out


def frame_masking(mask: torch.Tensor, prob: float, max_ratio: float, generator: torch.Generator,
                  mode: str = "random") -> torch.Tensor:
    """Training augmentation: drop a fraction of each clip's frames (vectorised over the batch).

    With probability `prob` a clip loses floor(n * r) of its n real frames, r drawn from
    {0, 0.1, ..., max_ratio}; at least one frame always stays. mode="random" drops random frames
    (the paper); mode="tail" drops the last ones (the official code).
    """
    b, l = mask.shape
    n = mask.sum(1)                                                     # (B,)
    apply = torch.rand(b, generator=generator) < prob                   # (B,)
    steps = int(round(max_ratio * 10)) + 1
    ratio = torch.randint(0, steps, (b,), generator=generator).float() / 10
    drop = torch.where(apply, (n.float() * ratio).floor().long(), torch.zeros_like(n))
    drop = torch.minimum(drop, (n - 1).clamp(min=0))                    # (B,)
    if mode == "tail":
        order = torch.cumsum(mask.long(), 1) - 1                        # position among real frames
        dropped = order >= (n - drop).unsqueeze(1)
    else:
        keys = torch.rand(b, l, generator=generator).masked_fill(~mask, 2.0)
        rank = keys.argsort(1).argsort(1)                               # rank of each frame's key
        dropped = rank < drop.unsqueeze(1)
    return mask & ~dropped
