"""``create_anonymizer(cfg.anonymizer)``: the one place that maps config names to classes."""

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
