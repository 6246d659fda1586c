"""Per-record clipping, over the whole gradient or per parameter group.

One clip over every trained parameter lets the part with the largest per-record gradients
take the whole budget: a fresh identity classifier's per-record gradient is ~60 times the
features' (docs/privacy.md), so clipped to C the features keep ~2 % of it. Group-wise
clipping (``privacy.clip_groups``) clips each group to its own C_k and noises it with
std ``sigma * sqrt(K) * C_k``, K groups. Divided by C_k (a fixed, public rescaling) each
group's clipped gradient has norm <= 1, so one record moves the rescaled sum by at most
sqrt(K), and the noise in the rescaled space is sigma * sqrt(K): a Gaussian mechanism of
noise multiplier sigma, what the accountant counts. One group is plain clipping.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

# Keeps a zero gradient's clip factor finite (opacus uses the same constant).
_NORM_EPS = 1e-6
# The group of parameters no `privacy.clip_groups` prefix names.
DEFAULT_GROUP = "*"


@dataclass(frozen=True)
class ClipGroups:
    """Which clip each trained parameter's group has (name -> group, group -> C_k)."""

    group_of: Mapping[str, str]
    clips: Mapping[str, float]

    @classmethod
    def build(
        cls, names: Iterable[str], default_clip: float, prefixes: Mapping[str, float] | None = None
    ) -> ClipGroups:
        """Group `names` by the first prefix of `prefixes` they fall under (the prefix or a
        dotted child of it); the rest form the default group, clipped at `default_clip`."""
        prefixes = dict(prefixes or {})
        group_of = {}
        for name in names:
            hit = [p for p in prefixes if name == p or name.startswith(p + ".")]
            group_of[name] = hit[0] if hit else DEFAULT_GROUP
        unused = [p for p in prefixes if p not in group_of.values()]
        if unused:
            raise ValueError(f"privacy.clip_groups names {unused}, which hold no trained parameter")
        clips = {DEFAULT_GROUP: float(default_clip), **{p: float(c) for p, c in prefixes.items()}}
        used = set(group_of.values())
        return cls(group_of, {g: c for g, c in clips.items() if g in used})

    @property
    def count(self) -> int:
        """K, the number of groups that hold a trained parameter."""
        return len(self.clips)

    def clip_of(self, name: str) -> float:
        return self.clips[self.group_of[name]]

    def scaled_down(self, norms: torch.Tensor) -> torch.Tensor:
        """Which records (rows of `clip_and_sum`'s norms) were clipped in any group."""
        limits = norms.new_tensor(list(self.clips.values()))
        return (norms > limits).any(dim=1)

    def noise_std(self, name: str, noise_multiplier: float) -> float:
        """The noise std on the summed clipped gradient of parameter `name`."""
        return noise_multiplier * math.sqrt(self.count) * self.clip_of(name)


def clip_and_sum(
    per_record: Mapping[str, torch.Tensor], groups: ClipGroups | float
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Scale each record's gradient, group by group, to L2 norm <= the group's clip and sum.

    `groups` may be a single clip (one group over all parameters). Returns ({name: summed
    clipped gradient}, per-record norms before clipping (n, K), one column per group in the
    order of ``groups.clips``).
    """
    if not isinstance(groups, ClipGroups):
        groups = ClipGroups.build(per_record, float(groups))
    first = next(iter(per_record.values()))
    order = list(groups.clips)
    sq = {g: first.new_zeros(first.shape[0]) for g in order}
    for name, grad in per_record.items():
        g = groups.group_of[name]
        sq[g] = sq[g] + grad.flatten(1).pow(2).sum(dim=1)
    norms = {g: sq[g].sqrt() for g in order}
    factors = {g: (groups.clips[g] / (norms[g] + _NORM_EPS)).clamp(max=1.0) for g in order}
    summed = {
        name: torch.einsum("r,r...->...", factors[groups.group_of[name]], grad)
        for name, grad in per_record.items()
    }
    return summed, torch.stack([norms[g] for g in order], dim=1)
