"""Batched pretraining augmentation (sgmn.data.augment) against torchvision's definitions."""
import math

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from sgmn.data.augment import (
    augment_batch,
    colour_jitter,
    crop_rotate_theta,
    hue_rotation,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _images(n=4, size=16, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def test_colour_factors_match_torchvision_adjustments():
    x = _images().float() / 255
    ones = torch.ones(4)
    b, c, s = torch.tensor([0.7, 1.3, 1.0, 0.9]), torch.tensor([1.2, 0.8, 1.0, 1.1]), torch.tensor([0.8, 1.2, 1.0, 1.05])
    for i in range(4):
        assert torch.allclose(colour_jitter(x[i:i + 1], b[i:i + 1], ones[:1], ones[:1], torch.zeros(1)),
                              TF.adjust_brightness(x[i:i + 1], b[i].item()), atol=1e-6)
        assert torch.allclose(colour_jitter(x[i:i + 1], ones[:1], c[i:i + 1], ones[:1], torch.zeros(1)),
                              TF.adjust_contrast(x[i:i + 1], c[i].item()), atol=1e-5)
        assert torch.allclose(colour_jitter(x[i:i + 1], ones[:1], ones[:1], s[i:i + 1], torch.zeros(1)),
                              TF.adjust_saturation(x[i:i + 1], s[i].item()), atol=1e-5)


def test_hue_rotation_keeps_grey_and_turns_primaries():
    r = hue_rotation(torch.tensor([2 * math.pi / 3, 0.0]))
    assert torch.allclose(r[1], torch.eye(3), atol=1e-6)
    assert torch.allclose(r[0] @ torch.ones(3), torch.ones(3), atol=1e-6)        # grey stays grey
    assert torch.allclose(r[0] @ torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 1, 0]), atol=1e-6)  # red -> green


def test_identity_geometry_and_neutral_colour_return_the_image():
    """Crop scale 1 (the whole image), no rotation, neutral colour: the normalised input."""
    x = _images()
    theta = crop_rotate_theta(4, scale=(1.0, 1.0), ratio=(1.0, 1.0), rotate_p=0.0)
    assert torch.allclose(theta, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(4, 2, 3))
    out = augment_batch(x, 16, (0.5,) * 3, (0.25,) * 3, jitter=(0.0, 0.0, 0.0, 0.0),
                        generator=torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, 16, 16)
    # the default draw crops: compare with the geometry pinned instead
    import sgmn.data.augment as aug
    saved = aug.crop_rotate_theta
    aug.crop_rotate_theta = lambda n, generator=None: theta
    try:
        same = augment_batch(x, 16, (0.5,) * 3, (0.25,) * 3, jitter=(0.0, 0.0, 0.0, 0.0))
    finally:
        aug.crop_rotate_theta = saved
    assert torch.allclose(same, (x.float() / 255 - 0.5) / 0.25, atol=1e-5)


def test_draws_are_per_sample_and_follow_the_generator():
    x = _images(8).expand(8, 3, 16, 16)[:1].expand(8, 3, 16, 16).contiguous()   # one image, 8 times
    a = augment_batch(x, 16, (0.5,) * 3, (0.25,) * 3, generator=torch.Generator().manual_seed(3))
    b = augment_batch(x, 16, (0.5,) * 3, (0.25,) * 3, generator=torch.Generator().manual_seed(3))
    c = augment_batch(x, 16, (0.5,) * 3, (0.25,) * 3, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.allclose(a[0], a[1])                     # each copy augmented differently
    theta = crop_rotate_theta(10000, generator=torch.Generator().manual_seed(0))
    area = theta[:, 0, 0].hypot(theta[:, 0, 1]) * theta[:, 1, 0].hypot(theta[:, 1, 1])
    assert 0.5 - 1e-6 <= area.min() and area.max() <= 1 + 1e-6
    turned = (theta[:, 0, 1].abs() > 1e-9).float().mean()
    assert 0.45 < turned < 0.55                               # rotation with probability 0.5
