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
from ppa.anonymize.secure_reid import ReversibleSettings, SecureReIDAnonymizer
from ppa.data.noise_keys import NoiseKeys, key_file

_FIXED: dict[str, type[Anonymizer]] = {
    cls.name: cls for cls in (IdentityAnonymizer, MosaicAnonymizer, BlurAnonymizer, NoiseAnonymizer)
}
_CLASSES: dict[str, type[Anonymizer]] = {
    **_FIXED,
    LearnedAnonymizer.name: LearnedAnonymizer,
    SecureReIDAnonymizer.name: SecureReIDAnonymizer,
}
ANONYMIZER_NAMES: tuple[str, ...] = tuple(_CLASSES)
# The settings (``anonymizer.generator``) of each anonymiser with trained networks.
_SETTINGS = {
    LearnedAnonymizer.name: GeneratorSettings,
    SecureReIDAnonymizer.name: ReversibleSettings,
}


def anonymizer_class(cfg: Mapping[str, Any]) -> type[Anonymizer]:
    """The class the ``anonymizer`` config group names (its ``trainable`` / ``needs_keys``)."""
    name = str(cfg.get("name"))
    if name not in _CLASSES:
        raise ValueError(
            f"unknown anonymizer.name {name!r}; choose one of {list(ANONYMIZER_NAMES)}"
        )
    return _CLASSES[name]


def create_anonymizer(cfg: Mapping[str, Any]) -> Anonymizer:
    """Build the anonymiser described by the ``anonymizer`` config group.

    Reads ``name``, ``strength``, ``reference_height`` and, for ``learned`` and
    ``secure_reid``, ``generator``.
    """
    for key in ("name", "strength", "reference_height"):
        if key not in cfg:
            raise KeyError(f"missing config key anonymizer.{key}")
    name = str(cfg["name"])
    cls = anonymizer_class(cfg)
    strength, reference_height = float(cfg["strength"]), int(cfg["reference_height"])
    if name in _FIXED:
        return cls(strength, reference_height)
    if "generator" not in cfg:
        raise KeyError(f"missing config key anonymizer.generator (needed by name={name})")
    return cls(strength, reference_height, _SETTINGS[name].from_config(cfg["generator"]))


def noise_keys_for(cfg: Any, owner: str) -> NoiseKeys | None:
    """`owner`'s NoiseKeys (a site's name, `ppa.data.noise_keys.EVALUATOR` or `CENTRAL`) when
    the configured anonymiser reads keys (noise, secure_reid), else None, and then no key file
    is made. `cfg` is the run's whole configuration."""
    anonymizer_cfg = cfg.anonymizer
    if not anonymizer_class(anonymizer_cfg).needs_keys:
        return None
    return NoiseKeys.from_file(key_file(anonymizer_cfg, owner))
