"""Infrared-like views of visible images, run through the infrared stem.

Config: `train.pseudo_infrared`. A federated site holds one modality, so none of its
batches pairs an identity's visible and infrared images: the cross-modal match that
centralised training learns from mixed batches is missing there. A visible site can make
that pair itself: part of each identity's images in a batch become channel-augmented
(`ppa.data.channel_augment`) and are labelled infrared, so they run through the infrared
stem and the infrared BNNeck statistics, and the triplet and
identity losses see visible and infrared-like images of one identity side by side.

Nothing new leaves the site: a visible site still sends only the shared parts and its own
stem and offset (ppa/federation.py); whatever the infrared-like views change in its copy of
the infrared stem is dropped at the next round's global model.

The images are replaced, not appended, so a step costs what it cost before.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from omegaconf import DictConfig

from ppa.data.channel_views import channel_exchange, random_channel
from ppa.data.loader import Batch
from ppa.data.records import Modality

VIEWS = {"channel_exchange": channel_exchange, "random_channel": random_channel}


@dataclass(frozen=True)
class PseudoInfraredViews:
    """Turn `fraction` of each identity's visible images in a batch into infrared-like views."""

    fraction: float
    view: str = "channel_exchange"

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(
                f"train.pseudo_infrared.fraction must be in (0, 1], got {self.fraction}"
            )
        if self.view not in VIEWS:
            raise ValueError(
                f"train.pseudo_infrared.view must be one of {sorted(VIEWS)}, got {self.view!r}"
            )

    @classmethod
    def from_config(cls, train_cfg: DictConfig) -> PseudoInfraredViews | None:
        """None when `train.pseudo_infrared` is absent or its fraction is 0."""
        settings = train_cfg.get("pseudo_infrared")
        if settings is None or not float(settings.get("fraction", 0.0)):
            return None
        return cls(float(settings.fraction), str(settings.get("view", "channel_exchange")))

    def chosen(
        self, labels: torch.Tensor, visible: torch.Tensor, order: torch.Tensor
    ) -> torch.Tensor:
        """Mask of the images to convert: of each identity's visible images, the first
        round(fraction x count) in `order` (a permutation of the batch positions)."""
        mask = torch.zeros_like(visible)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel(), device=order.device)
        for label in labels[visible].unique():
            members = torch.nonzero(visible & (labels == label)).flatten()
            take = round(self.fraction * members.numel())
            if take:
                mask[members[rank[members].argsort()[:take]]] = True
        return mask

    def __call__(self, batch: Batch, generator: torch.Generator | None = None) -> Batch:
        visible = batch.modality == Modality.VISIBLE.index
        if not bool(visible.any()):
            return batch
        if generator is None:
            generator = torch.Generator(device=batch.images.device)
            generator.manual_seed(int(torch.randint(0, 2**62, ())))
        order = torch.randperm(len(batch), generator=generator, device=generator.device)
        mask = self.chosen(batch.labels, visible, order.to(batch.labels.device))
        if not bool(mask.any()):
            return batch
        images = batch.images.clone()
        images[mask] = VIEWS[self.view](batch.images[mask], generator)
        modality = batch.modality.clone()
        modality[mask] = Modality.INFRARED.index
        return replace(batch, images=images, modality=modality)
