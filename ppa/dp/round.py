"""The one DP round, shared by a federated site and centralised DP training.

A round (a site's federated round, or one epoch of central DP training) is: plan its Gaussian
releases and commit them to the ledger before any data is read (`commit_releases`), DP-SGD
epochs on Poisson batches (`private_epochs`), then, when the objective aligns to identity
prototypes, their DP release (`release_private_prototypes`). The fine-tuning recipe
(``privacy.finetune``: augmentation multiplicity, physical batches, parameter averaging) and a
site's own noise (``privacy.budget_policy``) enter the round here, so a site and central DP
training run the same round.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ppa.data.records import MODALITIES, TrainRecord
from ppa.dp.accounting import PrivacyLedger, Release, plan_round
from ppa.dp.averaging import ParameterAverage
from ppa.dp.budgets import noise_for_round, with_noise
from ppa.dp.prototypes import PrototypeRelease, release_prototypes
from ppa.dp.sampling import create_poisson_loader, create_release_loader
from ppa.dp.settings import PrivacySettings
from ppa.dp.sgd import PerSampleGradients, PrivateStep
from ppa.model.finetune import FinetuneSettings
from ppa.prototypes import IdentityPrototypes
from ppa.training.loop import train_epoch
from ppa.training.setup import TrainingSetup


def poisson_loader(
    setup: TrainingSetup,
    records: Sequence[TrainRecord],
    *,
    expected_batch_size: int,
    seed: int,
    multiplicity: int = 1,
):
    """Poisson-sampled batches over `records`: what the accounting assumes (with
    `multiplicity` K, each drawn record comes K times, differently augmented)."""
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
        multiplicity=multiplicity,
        noise_keys=setup.noise_keys,
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
    total_rounds: int | None = None,
) -> tuple[list[Release], float]:
    """Plan the round's releases (`epochs` passes of `sampler`, plus prototypes), check them
    against the site's budget and record them. Returns (planned, projected epsilon); raises
    `PrivacyBudgetExhaustedError` (nothing recorded) when the round does not fit.

    With `total_rounds` (the run's length) the site's ``privacy.budget_policy`` picks the
    round's DP-SGD noise multiplier (`ppa.dp.budgets.noise_for_round`); without it the round
    uses ``privacy.noise_multiplier``. The planned DP-SGD release (``planned[0]``) carries the
    multiplier that `private_epochs` must use."""
    planned = plan_round(
        privacy,
        round_number,
        sample_rate=sampler.sample_rate,
        steps=epochs * sampler.steps,
        prototypes=prototypes,
        run=run,
    )
    if total_rounds is not None:
        noise = noise_for_round(
            privacy.budget_policy,
            ledger,
            planned,
            default_noise=privacy.noise_multiplier,
            server_round=round_number,
            total_rounds=total_rounds,
            budget=privacy.budget_for(site),
            delta=privacy.delta,
            site=site,
        )
        planned = with_noise(planned, noise)
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
    noise_multiplier: float | None = None,
    finetune: FinetuneSettings | None = None,
    progress: bool = True,
    desc: str = "train",
) -> tuple[PrivateStep, list[tuple[float, dict[str, float]]]]:
    """DP-SGD over the global epochs `epochs`; returns the step (its counts of steps and
    clipped records) and each epoch's (lr factor, metrics).

    `noise_multiplier` is the one the round was accounted at (``planned[0].noise`` of
    `commit_releases`; None: ``privacy.noise_multiplier``). `finetune` shapes the step
    (augmentation multiplicity, physical batches) and, with ``ema_decay``, averages the
    parameters over the round's steps; the average replaces the weights at the end."""
    finetune = finetune or FinetuneSettings()
    sampler = loader.batch_sampler
    average = (
        ParameterAverage(setup.model, finetune.ema_decay)
        if finetune.ema_decay is not None
        else None
    )
    step = PrivateStep(
        per_sample,
        noise_multiplier=privacy.noise_multiplier if noise_multiplier is None else noise_multiplier,
        max_grad_norm=privacy.max_grad_norm,
        clip_groups=privacy.clip_groups,
        expected_batch_size=sampler.sample_rate * sampler.num_records,
        seed=noise_seed,
        multiplicity=finetune.augmentation_multiplicity,
        physical_batch=finetune.physical_batch,
        after_step=None if average is None else average.update,
    )
    ctx = setup.step_context(prototypes=prototypes, private_step=step)
    results = [
        train_epoch(ctx, loader, optimizer, setup.cfg.train, epoch, progress=progress, desc=desc)
        for epoch in epochs
    ]
    if average is not None:
        average.apply()  # post-processing: the averaged weights are what the round releases
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
            noise_keys=setup.noise_keys,
        ),
        num_modalities=len(MODALITIES),
        num_classes=setup.num_classes,
        clip=privacy.prototype_clip,
        noise=privacy.prototype_noise,
        device=setup.device,
        mean=tuple(cfg.input.mean),
        std=tuple(cfg.input.std),
        # The views of ppa.prototype_views, as the non-DP accumulator takes them.
        anonymizer=None if setup.objective.prototype_views == "raw" else setup.anonymizer,
        correct_offsets=setup.objective.offsets,
        include_raw=setup.objective.prototype_views != "corrected",
        generator=generator,
    )
