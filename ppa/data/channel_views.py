"""Channel views of visible images (after CAJ, Ye et al., ICCV 2021), batched on tensors.

The per-image, loader-time augmentation of the real-data recipes is `ppa.data.channel_augment`;
this module makes whole-batch infrared-like views during training (`ppa.training.pseudo_infrared`).

An infrared camera records one intensity per pixel; a visible image reduced to one of its
colour channels (or to its luminance) and repeated three times is an infrared-like view of
the same person with the same pose and shape cues. Training on such views pushes the encoder
toward what both modalities share.

All functions take a (B, 3, H, W) float batch in [0, 1] (any device) and a
`torch.Generator` on the batch's device, so a batch's augmentation is reproducible from the
generator's seed. They return new tensors; the input is never modified.
"""

from __future__ import annotations

import torch
from torch import Tensor

# ITU-R BT.601 luma weights (as in ppa.data.transforms and PIL's convert("L")).
LUMA = (0.299, 0.587, 0.114)
# channel_exchange's choices: 0 = R, 1 = G, 2 = B, 3 = luminance.
EXCHANGE_CHOICES = 4


def _check(images: Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"channel augmentation expects (B, 3, H, W) images, got {images.shape}")


def single_channel_views(images: Tensor, choice: Tensor) -> Tensor:
    """Per image, the channel `choice[i]` (0 R, 1 G, 2 B; 3 = luminance) repeated 3 times."""
    _check(images)
    if choice.shape != (images.shape[0],):
        raise ValueError(f"choice must have shape ({images.shape[0]},), got {tuple(choice.shape)}")
    if bool(((choice < 0) | (choice >= EXCHANGE_CHOICES)).any()):
        raise ValueError(f"channel choices must lie in 0..{EXCHANGE_CHOICES - 1}")
    luma = torch.tensor(LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    planes = torch.cat([images, (images * luma).sum(dim=1, keepdim=True)], dim=1)  # (B, 4, H, W)
    index = choice.to(images.device).view(-1, 1, 1, 1).expand(-1, 1, *images.shape[2:])
    return planes.gather(1, index).expand(-1, 3, -1, -1).contiguous()


def random_channel(images: Tensor, generator: torch.Generator) -> Tensor:
    """Each image becomes one of its own colour channels (uniform over R, G, B), repeated."""
    _check(images)
    choice = torch.randint(0, 3, (images.shape[0],), generator=generator, device=generator.device)
    return single_channel_views(images, choice)


def channel_exchange(images: Tensor, generator: torch.Generator) -> Tensor:
    """Each image becomes R, G, B or its luminance (uniform over the four), repeated."""
    _check(images)
    choice = torch.randint(
        0, EXCHANGE_CHOICES, (images.shape[0],), generator=generator, device=generator.device
    )
    return single_channel_views(images, choice)


def channel_random_erasing(
    images: Tensor,
    generator: torch.Generator,
    *,
    probability: float = 0.5,
    area: tuple[float, float] = (0.02, 0.4),
    aspect: tuple[float, float] = (0.3, 3.3),
    fill: tuple[float, float, float] = (0.4914, 0.4822, 0.4465),
) -> Tensor:
    """With `probability` per image, fill one random rectangle (a fraction `area` of the image,
    height/width ratio in `aspect`, log-uniform) with the per-channel value `fill`."""
    _check(images)
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"erasing probability must be in [0, 1], got {probability}")
    out = images.clone()
    n, _, height, width = images.shape
    dev = generator.device
    draws = torch.rand((n, 5), generator=generator, device=dev).cpu().tolist()
    value = torch.tensor(fill, dtype=images.dtype, device=images.device).view(3, 1, 1)
    lo, hi = torch.log(torch.tensor(aspect)).tolist()
    for i, (p, a, r, y, x) in enumerate(draws):
        if p >= probability:
            continue
        target = (area[0] + a * (area[1] - area[0])) * height * width
        ratio = float(torch.exp(torch.tensor(lo + r * (hi - lo))))
        h = min(height, max(1, round((target * ratio) ** 0.5)))
        w = min(width, max(1, round((target / ratio) ** 0.5)))
        top = int(y * (height - h + 1))
        left = int(x * (width - w + 1))
        out[i, :, top : top + h, left : left + w] = value
    return out
