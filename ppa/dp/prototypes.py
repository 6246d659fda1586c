"""Identity prototypes released under DP: per-record clipping + the Gaussian mechanism.

Mechanism (one release per round, over every record of the site exactly once): record r with
label y and views v contributes ``u_r = mean_v clip_C(g_v)`` (each view's BNNeck feature of its
corrected feature, clipped to L2 norm C, then averaged over the record's views, so
||u_r|| <= C) to its identity's sum, and 1
to its count. The site releases ``S + N(0, (sigma C)^2)`` for every (identity, channel) and
``c + N(0, sigma^2)`` for every identity, identities it does not hold included (noisy counts
are then clamped at 0: post-processing).

Adding or removing one record moves S/C by at most 1 (L2) and c by 1 in one coordinate, so in
noise-normalised units the release is a Gaussian mechanism of L2 sensitivity sqrt(2) and noise
multiplier ``sigma / sqrt(2)``: the ledger accounts it as one step at sample rate 1 with that
multiplier (`ppa.dp.accounting.release_noise_multiplier`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ppa.anonymize import KprAnonymizer
from ppa.data.loader import Batch
from ppa.data.transforms import normalize
from ppa.device import DeviceSettings
from ppa.model import PPAEncoder


@dataclass
class PrototypeRelease:
    """Noised per-(modality, identity) sums (M, C, D) and counts (M, C), and the record count."""

    sums: torch.Tensor
    counts: torch.Tensor
    records: int


def clip_rows(features: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Scale each row to L2 norm <= max_norm (rows already inside are unchanged)."""
    norms = features.norm(dim=-1, keepdim=True)
    return features * (max_norm / norms.clamp(min=1e-12)).clamp(max=1.0)


def add_gaussian_noise(
    sums: torch.Tensor,
    counts: torch.Tensor,
    *,
    clip: float,
    noise: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gaussian mechanism on (sums, counts): std noise*clip on sums, noise on counts."""
    sums = sums.float()
    counts = counts.float()
    noisy_sums = sums + torch.randn(sums.shape, generator=generator, device=sums.device) * (
        noise * clip
    )
    noisy_counts = counts + torch.randn(counts.shape, generator=generator, device=counts.device) * (
        noise
    )
    return noisy_sums, noisy_counts


@torch.no_grad()
def clipped_sums(
    model: PPAEncoder,
    loader: Iterable[Batch],
    *,
    num_modalities: int,
    num_classes: int,
    clip: float,
    device: DeviceSettings,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    anonymizer: KprAnonymizer | None = None,
    correct_offsets: bool = True,
    include_raw: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-identity sums of per-record clipped features, and counts (before any noise).

    A record's feature is the mean over its views (raw, and anonymised when `anonymizer` is
    given, corrected by its modality's offset; the raw view left out with `include_raw`
    false) of the BNNeck features, each clipped to `clip`: the same features the non-DP
    accumulator sums, bounded per record.
    """
    if not include_raw and anonymizer is None:
        raise ValueError("prototypes without the raw view need the anonymiser")
    was_training = model.training
    model.eval()
    dim = model.num_features
    sums = torch.zeros(num_modalities, num_classes, dim, device=device.device)
    counts = torch.zeros(num_modalities, num_classes, device=device.device)
    records = 0
    try:
        for batch in loader:
            batch = batch.to(device.device, non_blocking=device.non_blocking)
            views = [(batch.images, None)] if include_raw else []
            if anonymizer is not None:
                anon = anonymizer(batch.images, batch.keypoints, batch.noise_keys).images
                flags = torch.ones_like(batch.labels, dtype=torch.bool) if correct_offsets else None
                views.append((anon, flags))
            feature = torch.zeros(len(batch), dim, device=device.device)
            for images, flags in views:
                x = device.prepare(normalize(images, mean, std))
                with device.autocast():
                    out = model(x, batch.modality, anonymized=flags)
                feature += clip_rows(out.neck.float(), clip)
            feature /= len(views)
            flat = batch.modality.long() * num_classes + batch.labels.long()
            sums.view(-1, dim).index_add_(0, flat, feature)
            counts.view(-1).index_add_(0, flat, torch.ones_like(flat, dtype=counts.dtype))
            records += len(batch)
    finally:
        model.train(was_training)
    return sums, counts, records


def release_prototypes(
    model: PPAEncoder,
    loader: Iterable[Batch],
    *,
    num_modalities: int,
    num_classes: int,
    clip: float,
    noise: float,
    device: DeviceSettings,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    anonymizer: KprAnonymizer | None = None,
    correct_offsets: bool = True,
    include_raw: bool = True,
    generator: torch.Generator | None = None,
) -> PrototypeRelease:
    """Clipped sums and counts over one pass of `loader`, then the Gaussian mechanism."""
    sums, counts, records = clipped_sums(
        model,
        loader,
        num_modalities=num_modalities,
        num_classes=num_classes,
        clip=clip,
        device=device,
        mean=mean,
        std=std,
        anonymizer=anonymizer,
        correct_offsets=correct_offsets,
        include_raw=include_raw,
    )
    noisy_sums, noisy_counts = add_gaussian_noise(
        sums, counts, clip=clip, noise=noise, generator=generator
    )
    # Post-processing (free under DP): a count cannot be negative, and the server rejects
    # negative counts as malformed.
    return PrototypeRelease(noisy_sums, noisy_counts.clamp(min=0.0), records)
