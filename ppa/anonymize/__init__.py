"""Anonymisers (none, mosaic, blur, noise, learned) and KPR pose-guided composition."""

from ppa.anonymize.base import Anonymizer
from ppa.anonymize.factory import ANONYMIZER_NAMES, create_anonymizer, noise_keys_for
from ppa.anonymize.kpr import AnonymizationLevels, AnonymizedBatch, KprAnonymizer
from ppa.anonymize.learned import AnonymizationGenerator, GeneratorSettings, LearnedAnonymizer
from ppa.anonymize.pixel import (
    BlurAnonymizer,
    IdentityAnonymizer,
    MosaicAnonymizer,
    NoiseAnonymizer,
    mosaic,
)

__all__ = [
    "ANONYMIZER_NAMES",
    "AnonymizationGenerator",
    "AnonymizationLevels",
    "AnonymizedBatch",
    "Anonymizer",
    "BlurAnonymizer",
    "GeneratorSettings",
    "IdentityAnonymizer",
    "KprAnonymizer",
    "LearnedAnonymizer",
    "MosaicAnonymizer",
    "NoiseAnonymizer",
    "create_anonymizer",
    "mosaic",
    "noise_keys_for",
]
