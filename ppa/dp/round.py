"""The one DP round, shared by a federated site and centralised DP training.

A round (a site's federated round, or one epoch of central DP training) is: plan its Gaussian
releases and commit them to the ledger before any data is read (`commit_releases`), DP-SGD
epochs on Poisson batches (`private_epochs`), then, when the objective aligns to identity
prototypes, their DP release (`release_private_prototypes`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ppa.data.records import MODALITIES, TrainRecord
from ppa.dp.accounting import PrivacyLedger, Release, plan_round
from ppa.dp.prototypes import PrototypeRelease, release_prototypes
from ppa.dp.sampling import create_poisson_loader, create_release_loader
from ppa.dp.settings import PrivacySettings
from ppa.dp.sgd import PerSampleGradients, PrivateStep
from ppa.prototypes import IdentityPrototypes
from ppa.training.loop import train_epoch
from ppa.training.setup import TrainingSetup


def poisson_loader(
    setup: TrainingSetup, records: Sequence[TrainRecord], *, expected_batch_size: int, seed: int
):
    """Poisson-sampled batches over `records`: what the accounting assumes."""
    cfg = setup.cfg
    return create_poisson_loader(
        records,
        setup.root,
        input_cfg=cfg.input,
        train_cfg=cfg.train,
        pose_cfg=cfg.pose,
        keypoints=setup.keypoints,
        expected_batch_size=expected_batch_size,
        seed=seed,
        on_bad_image=str(cfg.dataset.on_bad_image),
    )


def commit_releases(
    ledger: PrivacyLedger,
    privacy: PrivacySettings,
    site: str,
    round_number: int,
    *,
    sampler,
    epochs: int,
    prototypes: bool,
    run: str = "",
) -> tuple[list[Release], float]:
    """Plan the round's releases (`epochs` passes of `sampler`, plus prototypes), check them
    against the site's budget and record them. Returns (planned, projected epsilon); raises
    `PrivacyBudgetExhaustedError` (nothing recorded) when the round does not fit."""
    planned = plan_round(
        privacy,
        round_number,
        sample_rate=sampler.sample_rate,
        steps=epochs * sampler.steps,
        prototypes=prototypes,
        run=run,
    )
    projected = ledger.check_budget(site, planned, privacy.budget_for(site), privacy.delta)
    ledger.record(planned)
    return planned, projected


def private_epochs(
    setup: TrainingSetup,
    loader,
    optimizer: torch.optim.Optimizer,
    per_sample: PerSampleGradients,
    privacy: PrivacySettings,
    *,
    epochs: Sequence[int],
    noise_seed: int,
    prototypes: IdentityPrototypes | None,
    progress: bool = True,
    desc: str = "train",
) -> tuple[PrivateStep, list[tuple[float, dict[str, float]]]]:
    """DP-SGD over the global epochs `epochs`; returns the step (its counts of steps and
    clipped records) and each epoch's (lr factor, metrics)."""
    sampler = loader.batch_sampler
    step = PrivateStep(
        per_sample,
        noise_multiplier=privacy.noise_multiplier,
        max_grad_norm=privacy.max_grad_norm,
        expected_batch_size=sampler.sample_rate * sampler.num_records,
        seed=noise_seed,
    )
    ctx = setup.step_context(prototypes=prototypes, private_step=step)
    results = [
        train_epoch(ctx, loader, optimizer, setup.cfg.train, epoch, progress=progress, desc=desc)
        for epoch in epochs
    ]
    return step, results


def release_private_prototypes(
    setup: TrainingSetup,
    records: Sequence[TrainRecord],
    privacy: PrivacySettings,
    *,
    seed: int,
) -> PrototypeRelease:
    """Clipped, noised per-identity sums and counts of `records` (one Gaussian release)."""
    cfg = setup.cfg
    generator = torch.Generator(device=setup.device.device)
    generator.manual_seed(seed)
    return release_prototypes(
        setup.model,
        create_release_loader(
            records,
            setup.root,
            input_cfg=cfg.input,
            pose_cfg=cfg.pose,
            keypoints=setup.keypoints,
            batch_size=max(privacy.batch_size, 1),
            num_workers=int(cfg.train.num_workers),
            on_bad_image=str(cfg.dataset.on_bad_image),
        ),
        num_modalities=len(MODALITIES),
        num_classes=setup.num_classes,
        clip=privacy.prototype_clip,
        noise=privacy.prototype_noise,
        device=setup.device,
        mean=tuple(cfg.input.mean),
        std=tuple(cfg.input.std),
        anonymizer=setup.anonymizer,
        correct_offsets=setup.objective.offsets,
        generator=generator,
    )
