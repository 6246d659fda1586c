"""Separable Gaussian filtering of image batches: the skeleton mask's smoothing, the blur
anonymiser and SSIM share it. It sits at the bottom of the ``pose -> anonymize`` import chain,
so none of them imports upwards."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

# Gaussian kernels are cut at this many standard deviations (radius = round(3 sigma); for
# sigma 1.5 that is the usual 11-tap SSIM window).
GAUSSIAN_TRUNCATE = 3.0

PaddingMode = Literal["reflect", "replicate", "valid"]


def gaussian_kernel1d(
    sigma: float,
    radius: int,
    *,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Normalised sampled Gaussian of standard deviation ``sigma`` with ``2 * radius + 1`` taps."""
    if sigma <= 0:
        raise ValueError(f"gaussian kernel sigma must be positive, got {sigma}")
    if radius < 0:
        raise ValueError(f"gaussian kernel radius must be >= 0, got {radius}")
    offsets = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def filter_matrix(kernel: Tensor, size: int, padding: PaddingMode = "reflect") -> Tensor:
    """Matrix (out, size) of a 1-D correlation with ``kernel`` (odd length) along an axis.

    The border rule is folded into the matrix: ``reflect`` mirrors without repeating the edge
    sample (scipy's ``mode="mirror"``; repeated for kernels longer than the axis),
    ``replicate`` repeats the edge, ``valid`` keeps only the ``size - len + 1`` full windows.
    """
    if kernel.ndim != 1 or kernel.numel() % 2 != 1:
        raise ValueError(f"filter kernel must be 1-D of odd length, got {tuple(kernel.shape)}")
    radius = kernel.numel() // 2
    offsets = torch.arange(-radius, radius + 1, device=kernel.device)
    if padding == "valid":
        if size < kernel.numel():
            raise ValueError(
                f"axis of length {size} is shorter than the {kernel.numel()}-tap "
                "kernel (padding='valid')"
            )
        centres = torch.arange(radius, size - radius, device=kernel.device)
    else:
        centres = torch.arange(size, device=kernel.device)
    index = centres[:, None] + offsets[None, :]
    if padding == "reflect":
        period = max(2 * (size - 1), 1)  # a length-1 axis reflects onto itself
        index = torch.remainder(index, period)
        index = torch.where(index >= size, period - index, index)
    elif padding == "replicate":
        index = index.clamp(0, size - 1)
    elif padding != "valid":
        raise ValueError(f"unknown padding {padding!r}; use reflect, replicate or valid")
    matrix = kernel.new_zeros(centres.numel(), size)
    return matrix.scatter_add_(1, index, kernel.expand(centres.numel(), -1).contiguous())


def separable_filter2d(
    images: Tensor, kernel_h: Tensor, kernel_w: Tensor, padding: PaddingMode = "reflect"
) -> Tensor:
    """Filter every channel of (B, C, H, W) with ``kernel_h`` along H and ``kernel_w`` along W.

    Computed as ``M_h @ x @ M_w^T`` with the banded matrices of `filter_matrix`: on CPU and GPU
    two dense matmuls beat a depthwise convolution for every kernel length here (11 to 109
    taps), and the cost does not grow with the blur sigma. ``padding="valid"`` returns the
    (H - kh + 1, W - kw + 1) interior; the other modes keep the size.
    """
    if images.ndim != 4:
        raise ValueError(f"expected (B, C, H, W) images, got shape {tuple(images.shape)}")
    h, w = images.shape[-2:]
    rows = filter_matrix(kernel_h.to(images.dtype), h, padding)
    cols = filter_matrix(kernel_w.to(images.dtype), w, padding)
    return torch.matmul(torch.matmul(rows, images), cols.T)


def gaussian_filter2d(
    images: Tensor,
    sigma: float,
    *,
    truncate: float = GAUSSIAN_TRUNCATE,
    padding: Literal["reflect", "replicate"] = "reflect",
) -> Tensor:
    """Separable Gaussian blur of (B, C, H, W) with standard deviation ``sigma`` pixels.

    The kernel has radius ``round(truncate * sigma)`` (scipy's rule); ``sigma <= 0`` returns
    the input.
    """
    if sigma <= 0:
        return images
    radius = math.floor(truncate * sigma + 0.5)
    kernel = gaussian_kernel1d(sigma, radius, device=images.device, dtype=images.dtype)
    return separable_filter2d(images, kernel, kernel, padding=padding)
