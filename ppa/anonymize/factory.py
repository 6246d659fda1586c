"""``create_anonymizer(cfg.anonymizer)``: the one place that maps config names to classes (and
`noise_keys_for`: whose keys a configured anonymiser needs)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ppa.anonymize.base import Anonymizer
from ppa.anonymize.learned import GeneratorSettings, LearnedAnonymizer
from ppa.anonymize.pixel import (
    BlurAnonymizer,
    IdentityAnonymizer,
    MosaicAnonymizer,
    NoiseAnonymizer,
)
from ppa.data.noise_keys import NoiseKeys, key_file

_FIXED: dict[str, type[Anonymizer]] = {
    cls.name: cls for cls in (IdentityAnonymizer, MosaicAnonymizer, BlurAnonymizer, NoiseAnonymizer)
}
ANONYMIZER_NAMES: tuple[str, ...] = (*_FIXED, LearnedAnonymizer.name)


def create_anonymizer(cfg: Mapping[str, Any]) -> Anonymizer:
    """Build the anonymiser described by the ``anonymizer`` config group.

    Reads ``name``, ``strength``, ``reference_height`` and, for ``learned``, ``generator``.
    """
    for key in ("name", "strength", "reference_height"):
        if key not in cfg:
            raise KeyError(f"missing config key anonymizer.{key}")
    name = str(cfg["name"])
    strength, reference_height = float(cfg["strength"]), int(cfg["reference_height"])
    if name in _FIXED:
        return _FIXED[name](strength, reference_height)
    if name == LearnedAnonymizer.name:
        if "generator" not in cfg:
            raise KeyError("missing config key anonymizer.generator (needed by name=learned)")
        settings = GeneratorSettings.from_config(cfg["generator"])
        return LearnedAnonymizer(strength, reference_height, settings)
    raise ValueError(f"unknown anonymizer.name {name!r}; choose one of {list(ANONYMIZER_NAMES)}")


def noise_keys_for(cfg: Any, owner: str) -> NoiseKeys | None:
    """`owner`'s NoiseKeys (a site's name, `ppa.data.noise_keys.EVALUATOR` or `CENTRAL`) when
    the configured anonymiser draws noise, else None, and then no key file is made. `cfg` is
    the run's whole configuration."""
    anonymizer_cfg = cfg.anonymizer
    if str(anonymizer_cfg.get("name")) != NoiseAnonymizer.name:
        return None
    return NoiseKeys.from_file(key_file(anonymizer_cfg, owner))
