"""`cfg.privacy` as a validated object (configs/privacy/dp.yaml)."""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf

from ppa.seeding import derive_seed

ACCOUNTANTS = ("rdp", "prv")
# stop: fixed noise, a site stops at its budget; noise: a site's noise fits the run in its
# budget (ppa.dp.budgets).
BUDGET_POLICIES = ("stop", "noise")


class PrivacyConfigError(ValueError):
    """A `privacy.*` setting that cannot give a DP guarantee."""


@dataclass(frozen=True)
class PrivacySettings:
    """DP-SGD, accounting and prototype-release settings of a run.

    noise_multiplier: sigma of DP-SGD (noise std = sigma * max_grad_norm on the summed
        clipped per-record gradients).
    max_grad_norm: C, the L2 clip of one record's gradient (both of its views together).
    clip_groups: parameter-name prefix -> its own clip C_k (`ppa.dp.clipping`); the
        parameters no prefix names are clipped at max_grad_norm.
    batch_size: expected Poisson batch size; the sample rate is batch_size / records.
    epsilon_budget: default per-site budget at `delta` (inf = unlimited); `site_budgets`
        overrides it per site name.
    prototype_clip / prototype_noise: the Gaussian mechanism on identity prototypes (sums
        noised with std prototype_noise * prototype_clip, counts with std prototype_noise).
    share_losses: send training losses to the server (not covered by the guarantee).
    budget_policy: how a site meets its own budget (`ppa.dp.budgets`): ``stop`` training at
        it, or pick its ``noise`` so the whole run fits.
    secret_seed: None draws the seeds of the noise and of Poisson sampling from the OS's
        entropy (the guarantee needs both to be unknown to the server); an integer makes them
        reproducible, for tests only: whoever knows it can subtract the noise.
    """

    noise_multiplier: float
    max_grad_norm: float
    delta: float
    batch_size: int
    accountant: str = "rdp"
    epsilon_budget: float = math.inf
    site_budgets: Mapping[str, float] = field(default_factory=dict)
    prototype_clip: float = 1.0
    prototype_noise: float = 10.0
    share_losses: bool = False
    secret_seed: int | None = None
    budget_policy: str = "stop"
    clip_groups: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = {
            "noise_multiplier": self.noise_multiplier > 0,
            "max_grad_norm": self.max_grad_norm > 0,
            "delta": 0 < self.delta < 1,
            "batch_size": self.batch_size >= 1,
            "epsilon_budget": self.epsilon_budget > 0,
            "prototype_clip": self.prototype_clip > 0,
            "prototype_noise": self.prototype_noise > 0,
        }
        for key, ok in checks.items():
            if not ok:
                raise PrivacyConfigError(
                    f"privacy.{key}={getattr(self, key)!r} is out of range "
                    "(noise, clip, budget and batch size must be positive, 0 < delta < 1)"
                )
        if self.accountant not in ACCOUNTANTS:
            raise PrivacyConfigError(
                f"privacy.accountant must be one of {ACCOUNTANTS}, got {self.accountant!r}"
            )
        if self.budget_policy not in BUDGET_POLICIES:
            raise PrivacyConfigError(
                f"privacy.budget_policy must be one of {BUDGET_POLICIES}, "
                f"got {self.budget_policy!r}"
            )
        for prefix, clip in self.clip_groups.items():
            if not clip > 0:
                raise PrivacyConfigError(f"privacy.clip_groups.{prefix}={clip!r} must be > 0")
        for site, budget in self.site_budgets.items():
            if not budget > 0:
                raise PrivacyConfigError(f"privacy.site_budgets.{site}={budget!r} must be > 0")

    @classmethod
    def from_config(cls, cfg: DictConfig) -> PrivacySettings:
        """Read `cfg.privacy` (and `cfg.train` for the default batch size)."""
        p = cfg.privacy
        if not p.get("enabled", False):
            raise PrivacyConfigError("privacy.enabled is false: no DP settings to read")
        missing = [k for k in ("noise_multiplier", "max_grad_norm", "delta") if p.get(k) is None]
        if missing:
            raise PrivacyConfigError(f"privacy=dp needs privacy.{missing[0]}")
        batch = p.get("batch_size")
        if batch is None:
            batch = int(cfg.train.num_ids) * int(cfg.train.num_instances)
        budget = p.get("epsilon_budget")
        sites = _mapping(p.get("site_budgets"))
        groups = _mapping(p.get("clip_groups"))
        return cls(
            noise_multiplier=float(p.noise_multiplier),
            max_grad_norm=float(p.max_grad_norm),
            delta=float(p.delta),
            batch_size=int(batch),
            accountant=str(p.get("accountant", "rdp")),
            epsilon_budget=math.inf if budget is None else float(budget),
            site_budgets={str(k): float(v) for k, v in sites.items()},
            prototype_clip=float(p.get("prototype_clip", 1.0)),
            prototype_noise=float(p.get("prototype_noise", 10.0)),
            share_losses=bool(p.get("share_losses", False)),
            secret_seed=None if p.get("secret_seed") is None else int(p.secret_seed),
            budget_policy=str(p.get("budget_policy", "stop")),
            clip_groups={str(k): float(v) for k, v in groups.items()},
        )

    def budget_for(self, site: str) -> float:
        """The epsilon budget of `site` (its override, else the default)."""
        return float(self.site_budgets.get(site, self.epsilon_budget))

    def seed(self, *parts: int | str) -> int:
        """A seed for noise or sampling: OS entropy, or derived from `secret_seed` (tests)."""
        if self.secret_seed is None:
            return secrets.randbits(63)
        return derive_seed(self.secret_seed, *parts)


def _mapping(value: DictConfig | Mapping | None) -> dict:
    if value is None:
        return {}
    if isinstance(value, DictConfig):
        return dict(OmegaConf.to_container(value, resolve=True))
    return dict(value)
