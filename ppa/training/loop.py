"""The epoch loop: one pass over a loader, and local epochs on the global-epoch schedule."""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch
from omegaconf import DictConfig, OmegaConf

from ppa.data.loader import Batch
from ppa.device import check_amp_mode
from ppa.progress_bar import ProgressBar  # log lines, not a bar, when not on a terminal
from ppa.training.optim import lr_factor, set_epoch_lr
from ppa.training.step import StepContext, ppa_step


def train_one_epoch(
    ctx: StepContext,
    loader: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    *,
    max_batches: int | None = None,
    progress: bool = True,
    desc: str = "train",
) -> dict[str, float]:
    """One pass over `loader`; returns mean losses, examples seen and timing."""
    model = ctx.model
    model.train()
    sums: dict[str, float] = {}
    batches = examples = 0
    start = time.perf_counter()
    total_batches = len(loader) if hasattr(loader, "__len__") else None
    if max_batches is not None and total_batches is not None:
        total_batches = min(total_batches, max_batches)
    bar = ProgressBar(loader, total=total_batches, desc=desc, disable=not progress, leave=False)
    for batch in bar:
        if max_batches is not None and batches >= max_batches:
            break
        batch = batch.to(ctx.device.device, non_blocking=ctx.device.non_blocking)
        if ctx.batch_views is not None:
            batch = ctx.batch_views(batch)
        if ctx.private_step is not None:
            # DP-SGD: per-record losses, clipping, noise and the step happen in the hook.
            loss, terms = ctx.private_step(ctx, batch, optimizer)
        else:
            loss, terms = ppa_step(ctx, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss {float(loss)} ({terms})")
            optimizers = [optimizer]
            if ctx.anonymizer_optimizer is not None:  # a trainable anonymiser, same backward
                optimizers.append(ctx.anonymizer_optimizer)
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in optimizers:
                opt.step()
        batches += 1
        examples += batch.images.shape[0]
        sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
        for k, v in terms.items():
            sums[f"loss_{k}"] = sums.get(f"loss_{k}", 0.0) + v
        bar.set_postfix(loss=f"{sums['loss'] / batches:.3f}")
    seconds = time.perf_counter() - start
    metrics = {k: v / max(batches, 1) for k, v in sums.items()}
    metrics.update(
        batches=float(batches),
        num_examples=float(examples),
        seconds=seconds,
        images_per_second=examples / seconds if seconds > 0 else 0.0,
    )
    return metrics


def global_epoch(server_round: int, local_epochs: int, local_epoch: int) -> int:
    """The 0-based epoch count the schedule sees for local epoch `local_epoch` of a round:
    round r's epochs follow round r-1's, so warm-up and step decay span the whole run."""
    return (server_round - 1) * local_epochs + local_epoch


def federated_train_config(cfg: DictConfig) -> DictConfig:
    """The run's config as the federation trains with it: `federation.lr_step_fractions`,
    `federation.lr_gamma`, `federation.warmup_epochs` and `federation.amp`, when set, replace
    `train.lr_steps` (the sites' schedule steps at these fractions of the run's global epochs,
    `rounds x local_epochs`, rounded), `train.lr_gamma` (its step decay), `train.warmup_epochs`
    (its linear warm-up, in global epochs) and `train.amp` (the precision of the sites'
    training and statistics rounds and of the server's central evaluation).

    A federation can want a later step than centralised training (averaged sites move the
    model less per epoch, so it is further from done when the rate drops), another decay at
    the step (a site keeps moving toward its own camera's optimum at the smaller rate, the
    aggregate only averages that drift), a longer warm-up (from random weights a site's first
    round at the full rate barely lowers its loss, docs/results.md), and another precision
    (bf16 speeds up a site on hardware with bf16 kernels without moving the federation's
    numbers, where it costs centralised training a little); the centralised run of the same
    config keeps `train.*`.
    """
    updates: dict[str, object] = {}
    fractions = cfg.federation.get("lr_step_fractions")
    if fractions is not None:
        if not OmegaConf.is_list(fractions) or not all(
            isinstance(f, (int, float)) and not isinstance(f, bool) and 0.0 < f <= 1.0
            for f in fractions
        ):
            raise ValueError(
                f"federation.lr_step_fractions={fractions} must be a list of fractions in "
                "(0, 1] of the run's global epochs (null: train.lr_steps)"
            )
        epochs = int(cfg.federation.rounds) * int(cfg.federation.local_epochs)
        updates["lr_steps"] = sorted(round(float(f) * epochs) for f in fractions)
    gamma = cfg.federation.get("lr_gamma")
    if gamma is not None:
        if not 0.0 < float(gamma) <= 1.0:
            raise ValueError(
                f"federation.lr_gamma={gamma} must lie in (0, 1] (null: train.lr_gamma)"
            )
        updates["lr_gamma"] = float(gamma)
    warmup = cfg.federation.get("warmup_epochs")
    if warmup is not None:
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(
                f"federation.warmup_epochs={warmup} must be a whole number >= 0 "
                "(null: train.warmup_epochs)"
            )
        updates["warmup_epochs"] = int(warmup)
    amp = cfg.federation.get("amp")
    if amp is not None:
        check_amp_mode(amp, "federation.amp")
        updates["amp"] = amp
    if not updates:
        return cfg
    return OmegaConf.merge(cfg, {"train": updates})


def round_lr_factor(server_round: int, local_epochs: int, train_cfg: DictConfig) -> float:
    """The sites' learning-rate factor of round `server_round`: the schedule's factor
    averaged over the round's local epochs (what a round's update is scaled by)."""
    factors = [
        lr_factor(
            global_epoch(server_round, local_epochs, e),
            int(train_cfg.warmup_epochs),
            list(train_cfg.lr_steps),
            float(train_cfg.lr_gamma),
        )
        for e in range(local_epochs)
    ]
    return sum(factors) / len(factors)


def train_epoch(
    ctx: StepContext,
    loader,
    optimizer: torch.optim.Optimizer,
    train_cfg: DictConfig,
    epoch: int,
    *,
    max_batches: int | None = None,
    progress: bool = True,
    desc: str = "train",
) -> tuple[float, dict[str, float]]:
    """Epoch `epoch` (0-based, global) of the schedule: its learning rate, the sampler's
    epoch, one pass. Returns (lr factor, the pass's metrics)."""
    factor = set_epoch_lr(optimizer, epoch, train_cfg)
    loader.batch_sampler.set_epoch(epoch)
    metrics = train_one_epoch(
        ctx, loader, optimizer, max_batches=max_batches, progress=progress, desc=desc
    )
    return factor, metrics


def train_round_epochs(
    ctx: StepContext,
    loader,
    optimizer: torch.optim.Optimizer,
    train_cfg: DictConfig,
    *,
    server_round: int,
    local_epochs: int,
    max_batches: int | None = None,
    progress: bool = False,
    desc: str = "train",
) -> list[dict[str, float]]:
    """`local_epochs` epochs of federated round `server_round` on the global-epoch schedule."""
    return [
        train_epoch(
            ctx,
            loader,
            optimizer,
            train_cfg,
            global_epoch(server_round, local_epochs, e),
            max_batches=max_batches,
            progress=progress,
            desc=desc,
        )[1]
        for e in range(local_epochs)
    ]
