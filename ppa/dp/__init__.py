"""Per-site differential privacy: DP-SGD with opacus, private prototypes, accounting.

See docs/privacy.md for the mechanisms and their guarantee. The pieces:

- `PrivacySettings` (``cfg.privacy``), `PrivacyLedger` / `Release` (the composed accountant
  state of one site), `PrivacyBudgetExhaustedError`;
- `PerSampleGradients` + `PrivateStep` (the DP-SGD step hook of
  `ppa.training.loop.train_one_epoch`),
  `per_record_losses`, `clip_and_sum` / `ClipGroups` (per-record clipping, whole or per
  group), `freeze_other_modalities`, `check_private_model`;
- `create_poisson_loader` (Poisson sampling), `create_release_loader`;
- `release_prototypes` (clipped + Gaussian-noised identity prototypes);
- `ppa.dp.round`: the one DP round (commit the releases, DP-SGD epochs, private prototypes),
  used by a federated site and by `train_central_private` (centralised DP-SGD).
"""

from __future__ import annotations

from ppa.dp.accounting import (
    PROTOTYPES,
    SGD,
    LedgerError,
    PrivacyBudgetExhaustedError,
    PrivacyLedger,
    Release,
    epsilon_of,
    plan_round,
    release_noise_multiplier,
)
from ppa.dp.central import train_central_private
from ppa.dp.clipping import ClipGroups, clip_and_sum
from ppa.dp.prototypes import (
    PrototypeRelease,
    add_gaussian_noise,
    clip_rows,
    clipped_sums,
    release_prototypes,
)
from ppa.dp.sampling import (
    PoissonBatchSampler,
    collate_or_empty,
    create_poisson_loader,
    create_release_loader,
    steps_per_epoch,
)
from ppa.dp.settings import ACCOUNTANTS, PrivacyConfigError, PrivacySettings
from ppa.dp.sgd import (
    PerSampleGradients,
    PrivateModelError,
    PrivateStep,
    check_private_model,
    freeze_other_modalities,
    per_record_losses,
)

__all__ = [
    "ACCOUNTANTS",
    "PROTOTYPES",
    "SGD",
    "ClipGroups",
    "LedgerError",
    "PerSampleGradients",
    "PoissonBatchSampler",
    "PrivacyBudgetExhaustedError",
    "PrivacyConfigError",
    "PrivacyLedger",
    "PrivacySettings",
    "PrivateModelError",
    "PrivateStep",
    "PrototypeRelease",
    "Release",
    "add_gaussian_noise",
    "check_private_model",
    "clip_and_sum",
    "clip_rows",
    "clipped_sums",
    "collate_or_empty",
    "create_poisson_loader",
    "create_release_loader",
    "epsilon_of",
    "freeze_other_modalities",
    "per_record_losses",
    "plan_round",
    "release_noise_multiplier",
    "release_prototypes",
    "steps_per_epoch",
    "train_central_private",
]
