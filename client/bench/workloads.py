"""The workloads the step benchmarks time: synthetic batches laid out as the identity sampler
lays them out, models without downloaded weights, step contexts for a `configs/ppa/` method,
one training step, and the KPR masks as built before the windowed skeleton."""

from __future__ import annotations

import logging

import torch
from omegaconf import DictConfig

from ppa.anonymize import KprAnonymizer
from ppa.config import load_config
from ppa.data.loader import Batch
from ppa.data.noise_keys import NOISE_KEY_BYTES
from ppa.device import DeviceSettings
from ppa.model import PPAEncoder, create_model
from ppa.pose.heatmaps import head_mask, skeleton_mask
from ppa.pose.prior import canonical_keypoints
from ppa.prototypes import IdentityPrototypes
from ppa.training.objective import PPAObjective
from ppa.training.step import StepContext, ppa_step

logger = logging.getLogger("bench")


# Keypoint jitter and crop shift of the synthetic batches, as fractions of the image height:
# the spread of augmented pedestrian crops (pad 10 px of 288, pose variation).
KEYPOINT_JITTER = 0.03


KEYPOINT_SHIFT = 10 / 288


MISSING_JOINTS = 0.1  # fraction of joints reported with score 0


def synthetic_batch(ids: int, instances: int, height: int, width: int, seed: int) -> Batch:
    """A batch as the identity sampler lays it out: P ids x K images per modality, both
    modalities, random images, canonical keypoints jittered and shifted like augmented crops,
    a tenth of the joints missing."""
    gen = torch.Generator().manual_seed(seed)
    per_modality = ids * instances
    size = 2 * per_modality
    keypoints = torch.from_numpy(canonical_keypoints(height, width)).expand(size, -1, -1).clone()
    keypoints[..., :2] += torch.randn(size, 17, 2, generator=gen) * KEYPOINT_JITTER * height
    keypoints[..., :2] += (
        (torch.rand(size, 1, 2, generator=gen) - 0.5) * 2 * (KEYPOINT_SHIFT * height)
    )
    keypoints[..., 2] = 0.5 + 0.5 * torch.rand(size, 17, generator=gen)
    keypoints[..., 2] *= torch.rand(size, 17, generator=gen) >= MISSING_JOINTS
    labels = torch.arange(ids).repeat_interleave(instances).repeat(2)
    return Batch(
        images=torch.rand(size, 3, height, width, generator=gen),
        keypoints=keypoints,
        labels=labels,
        modality=torch.arange(2).repeat_interleave(per_modality),
        cams=torch.ones(size, dtype=torch.long),
        # Random noise keys: a bench times the anonymiser, it reproduces no site's noise.
        noise_keys=torch.randint(0, 256, (size, NOISE_KEY_BYTES), generator=gen, dtype=torch.uint8),
        indices=torch.arange(size),
    )


def model_config(model: str, height: int, width: int, *extra: str) -> DictConfig:
    # No ImageNet download: the weights do not change the cost of a step.
    return load_config(
        [
            f"model={model}",
            "model.pretrained=false",
            f"input.height={height}",
            f"input.width={width}",
            *extra,
        ]
    )


def step_context(
    cfg: DictConfig,
    model: PPAEncoder,
    device: DeviceSettings,
    anonymizer: KprAnonymizer | None,
    ppa_name: str,
    num_classes: int,
) -> StepContext:
    """A StepContext for `configs/ppa/<ppa_name>.yaml`, with server-like prototypes for every
    identity so L_align is active in the full objective."""
    objective = PPAObjective.from_config(load_config([f"ppa={ppa_name}"]).ppa)
    prototypes = None
    if objective.uses_prototypes():
        gen = torch.Generator().manual_seed(1)
        sums = torch.randn(2, num_classes, model.num_features, generator=gen)
        prototypes = IdentityPrototypes.from_sums(sums, torch.ones(2, num_classes)).to(
            device.device
        )
    return StepContext.from_config(
        cfg,
        model=model,
        objective=objective,
        anonymizer=anonymizer if objective.anonymized_view else None,
        device=device,
        prototypes=prototypes,
    )


def build_model(cfg: DictConfig, num_classes: int, device: DeviceSettings) -> PPAEncoder:
    torch.manual_seed(int(cfg.seed))
    model = create_model(cfg.model, num_classes).to(device.device)
    if device.channels_last:
        # DeviceSettings.prepare only converts the inputs; the weights must follow for cuDNN
        # to pick its channels-last kernels.
        model = model.to(memory_format=torch.channels_last)
    return model


def train_step(ctx: StepContext, batch: Batch, optimizer: torch.optim.Optimizer) -> None:
    """What train_one_epoch does per batch: ppa_step, backward, optimiser step."""
    loss, _ = ppa_step(ctx, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def full_frame_masks(
    anonymizer: KprAnonymizer, keypoints: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """The KPR masks as built before the windowed skeleton (the 'before' of that fast path):
    kpr_masks with every limb evaluated over the whole frame."""
    s = anonymizer.mask_settings
    head = head_mask(
        keypoints, height, width, min_confidence=s.min_confidence, head_scale=s.head_scale
    )
    skeleton = skeleton_mask(
        keypoints,
        height,
        width,
        min_confidence=s.min_confidence,
        limb_width=s.limb_width,
        smooth_sigma=s.smooth_sigma,
        windowed=False,
    )
    return torch.minimum(skeleton, 1.0 - head)
