"""Reading frames and shop images into tensors: even frame sampling, padding and masks.

L frames are sampled evenly over a clip (linspace over its frames, as the official code does in
training); a clip with fewer than L frames is zero-padded and its mask marks the real frames.
Images are squashed to a square (the official preprocessing) and normalised with CLIP's
mean/std.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)


class FrameReadError(OSError):
    """A frame, video or image that cannot be decoded; the message names the file."""


def sample_indices(n: int, num: int) -> np.ndarray:
    """`num` evenly spaced indices into n frames (all of them when n <= num)."""
    if n <= num:
        return np.arange(n)
    return np.linspace(0, n - 1, num).round().astype(int)


def to_tensor(rgb: np.ndarray, size: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> normalised (3, size, size) float tensor."""
    img = Image.fromarray(rgb)
    if img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
    return (x - CLIP_MEAN) / CLIP_STD


def read_image(path: str | Path) -> np.ndarray:
    """A JPEG/PNG as (H, W, 3) uint8; a missing or corrupt file raises FrameReadError."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise FrameReadError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise FrameReadError(f"{path}: cannot decode image ({err})") from None


def read_video(path: str | Path, num: int) -> tuple[list[np.ndarray], int]:
    """`num` evenly sampled frames of an mp4 (decord) and the video's frame count."""
    path = Path(path)
    if not path.is_file():
        raise FrameReadError(f"{path}: file not found")
    import decord  # imported lazily: only MovingFashion needs it
    try:
        reader = decord.VideoReader(str(path), num_threads=1)
        n = len(reader)
        if n == 0:
            raise FrameReadError(f"{path}: video has no frames")
        frames = reader.get_batch(sample_indices(n, num).tolist()).asnumpy()
    except (decord.DECORDError, RuntimeError) as err:  # decord raises RuntimeError on open
        raise FrameReadError(f"{path}: cannot decode video ({str(err).splitlines()[0][:200]})") from None
    return list(frames), n


def load_clip_frames(frame_paths=None, video_path=None, num: int = 8, size: int = 64,
                     on_bad_frame: str = "error", errors: list[str] | None = None):
    """Read a clip as (frames (L,3,S,S), mask (L,) bool, sampled indices (L,), -1 = padding).

    on_bad_frame="mask": an unreadable frame is dropped from the clip (mask False) and its
    error appended to `errors`; a clip with no readable frame raises FrameReadError.
    """
    frames = torch.zeros(num, 3, size, size)
    mask = torch.zeros(num, dtype=torch.bool)
    index = torch.full((num,), -1, dtype=torch.long)
    if video_path is not None:
        rgb, n = read_video(video_path, num)
        idx = sample_indices(n, num)
        for t, (i, arr) in enumerate(zip(idx, rgb)):
            frames[t], mask[t], index[t] = to_tensor(arr, size), True, int(i)
        return frames, mask, index
    idx = sample_indices(len(frame_paths), num)
    for t, i in enumerate(idx):
        try:
            frames[t] = to_tensor(read_image(frame_paths[i]), size)
        except FrameReadError as err:
            if on_bad_frame == "error":
                raise
            if errors is not None:
                errors.append(str(err))
            continue
        mask[t], index[t] = True, int(i)
    if not mask.any():
        raise FrameReadError(f"no readable frame among {len(frame_paths)} frames"
                             + (f" (first: {frame_paths[0]})" if frame_paths else ""))
    return frames, mask, index
