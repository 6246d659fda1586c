"""Batched feature extraction of raw and anonymised views (no training code)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ppa.anonymize import KprAnonymizer
from ppa.data.loader import Batch
from ppa.data.transforms import normalize
from ppa.device import DeviceSettings
from ppa.model import PPAEncoder
from ppa.progress_bar import ProgressBar  # log lines, not a bar, when not on a terminal


@dataclass
class FeatureSet:
    """Retrieval features (N, D) on the CPU, in loader order, with their labels."""

    features: torch.Tensor
    pids: torch.Tensor
    cams: torch.Tensor
    modality: torch.Tensor


VIEWS = ("raw", "anon")


@torch.no_grad()
def extract_features(
    model: PPAEncoder,
    loader: Iterable[Batch],
    *,
    device: DeviceSettings,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    views: tuple[str, ...] = ("raw",),
    anonymizer: KprAnonymizer | None = None,
    correct_offsets: bool = True,
    flip: bool = False,
    progress: bool = True,
    desc: str = "features",
) -> dict[str, FeatureSet]:
    """BNNeck features of every image for each requested view, in one pass over the loader.

    View "raw" uses the images as they are; "anon" anonymises them first with `anonymizer` and,
    when `correct_offsets`, corrects the features by their modality's DCMA offset. With `flip`,
    features of the image and its mirror are summed.
    """
    unknown = set(views) - set(VIEWS)
    if unknown:
        raise ValueError(f"unknown feature views {sorted(unknown)}; expected {VIEWS}")
    if "anon" in views and anonymizer is None:
        raise ValueError("the 'anon' view needs an anonymizer")
    model.eval()
    feats: dict[str, list[torch.Tensor]] = {v: [] for v in views}
    pids, cams, mods = [], [], []
    total = len(loader) if hasattr(loader, "__len__") else None
    for batch in ProgressBar(loader, total=total, desc=desc, disable=not progress, leave=False):
        batch = batch.to(device.device, non_blocking=device.non_blocking)
        for view in views:
            images, anonymized = batch.images, None
            if view == "anon":
                assert anonymizer is not None
                images = anonymizer(images, batch.keypoints, batch.noise_keys).images
                if correct_offsets:
                    anonymized = torch.ones_like(batch.labels, dtype=torch.bool)
            x = device.prepare(normalize(images, mean, std))
            with device.autocast():
                f = model(x, batch.modality, anonymized=anonymized).neck.float()
                if flip:
                    f = (
                        f
                        + model(
                            torch.flip(x, dims=[3]), batch.modality, anonymized=anonymized
                        ).neck.float()
                    )
            feats[view].append(f.cpu())
        pids.append(batch.labels.cpu())
        cams.append(batch.cams.cpu())
        mods.append(batch.modality.cpu())
    if not pids:
        raise ValueError("extract_features: the loader produced no batches")
    pid_t, cam_t, mod_t = torch.cat(pids), torch.cat(cams), torch.cat(mods)
    return {v: FeatureSet(torch.cat(f), pid_t, cam_t, mod_t) for v, f in feats.items()}
