"""Batched image augmentation for CLIP pretraining: one call per batch, per-sample random draws.

The per-image torchvision pipeline it replaces (RandomResizedCrop(scale 0.5-1), RandomRotation(20)
with p 0.5, ColorJitter(0.3, 0.3, 0.2, 0.02)) cost about 3.5 ms an image on one core, as much
as the training step itself at batch 128 (scripts/bench_augment.py). Here the same families run
on the whole uint8 batch:

- geometry: the crop and the rotation are one affine map per sample (`affine_grid` +
  bilinear `grid_sample`). The crop's area fraction and log aspect ratio are drawn as in
  RandomResizedCrop (clamped inside the image instead of re-drawn); the rotation turns the
  crop about its centre, so its corners show the image around the crop (black only outside
  the image), where torchvision's second pass fills them black;
- colour: brightness, contrast and saturation as torchvision's adjust_* define them (scale;
  blend with the image's mean grey; blend with its grey image, ITU-R 601 weights), in that fixed
  order (torchvision shuffles it per image), then hue as a rotation about the grey axis (the
  StyleGAN2-ADA augmentation's form; torchvision shifts H in HSV, which differs slightly in
  saturated colours).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

GREY = (0.2989, 0.587, 0.114)   # torchvision's rgb_to_grayscale weights


def _uniform(n: int, low: float, high: float, generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def crop_rotate_theta(n: int, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3), degrees: float = 20.0,
                      rotate_p: float = 0.5, generator=None) -> torch.Tensor:
    """(n, 2, 3) affine maps from output to input coordinates ([-1, 1]): a random resized crop
    turned by a random angle (with probability rotate_p)."""
    area = _uniform(n, *scale, generator)
    log_r = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator)
    w = torch.sqrt(area * log_r.exp()).clamp(max=1.0)          # crop width / image width
    h = torch.sqrt(area / log_r.exp()).clamp(max=1.0)
    cx = (1 - w) * (2 * torch.rand(n, generator=generator) - 1)   # crop centre, inside the image
    cy = (1 - h) * (2 * torch.rand(n, generator=generator) - 1)
    turn = torch.rand(n, generator=generator) < rotate_p
    angle = torch.deg2rad(_uniform(n, -degrees, degrees, generator)) * turn
    cos, sin = angle.cos(), angle.sin()
    # input = centre + diag(w, h) @ R(angle) @ output
    return torch.stack([torch.stack([w * cos, -w * sin, cx], 1),
                        torch.stack([h * sin, h * cos, cy], 1)], 1)


def grey(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma."""
    return torch.einsum("bchw,c->bhw", x, x.new_tensor(GREY)).unsqueeze(1)


def hue_rotation(angle: torch.Tensor) -> torch.Tensor:
    """(n,) angles in radians -> (n, 3, 3) rotations of RGB about the grey axis (1, 1, 1)/sqrt 3."""
    u = 1 / math.sqrt(3)
    outer = angle.new_full((3, 3), u * u)                               # a a^T
    cross = angle.new_tensor([[0.0, -u, u], [u, 0.0, -u], [-u, u, 0.0]])  # [a]_x
    cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]
    return cos * torch.eye(3, device=angle.device) + sin * cross + (1 - cos) * outer   # Rodrigues


def colour_jitter(x: torch.Tensor, brightness, contrast, saturation, hue) -> torch.Tensor:
    """x (B, 3, H, W) in [0, 1]; per-sample factors (B,) (hue in turns, +-0.5 = +-180 degrees)."""
    f = lambda t: t.view(-1, 1, 1, 1)
    x = (x * f(brightness)).clamp(0, 1)
    x = (f(contrast) * x + (1 - f(contrast)) * grey(x).mean((2, 3), keepdim=True)).clamp(0, 1)
    x = (f(saturation) * x + (1 - f(saturation)) * grey(x)).clamp(0, 1)
    return torch.einsum("bij,bjhw->bihw", hue_rotation(2 * math.pi * hue), x).clamp(0, 1)


def augment_batch(images: torch.Tensor, size: int, mean, std, generator=None,
                  jitter=(0.3, 0.3, 0.2, 0.02)) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> normalised float (B, 3, size, size), each image augmented on its own."""
    n = images.shape[0]
    x = images.float() / 255
    theta = crop_rotate_theta(n, generator=generator).to(x.device)   # drawn on the CPU generator
    grid = F.affine_grid(theta, [n, 3, size, size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    b, c, s, h = jitter
    factors = torch.stack([_uniform(n, 1 - b, 1 + b, generator), _uniform(n, 1 - c, 1 + c, generator),
                           _uniform(n, 1 - s, 1 + s, generator), _uniform(n, -h, h, generator)]).to(x.device)
    x = colour_jitter(x, *factors)
    return (x - x.new_tensor(mean).view(1, 3, 1, 1)) / x.new_tensor(std).view(1, 3, 1, 1)
