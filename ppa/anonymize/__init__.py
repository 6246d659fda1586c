"""Anonymisers (none, mosaic, blur, noise, learned, secure_reid) and KPR pose-guided
composition."""

from ppa.anonymize.base import Anonymizer
from ppa.anonymize.factory import (
    ANONYMIZER_NAMES,
    anonymizer_class,
    create_anonymizer,
    noise_keys_for,
)
from ppa.anonymize.kpr import AnonymizationLevels, AnonymizedBatch, KprAnonymizer
from ppa.anonymize.learned import AnonymizationGenerator, GeneratorSettings, LearnedAnonymizer
from ppa.anonymize.pixel import (
    BlurAnonymizer,
    IdentityAnonymizer,
    MosaicAnonymizer,
    NoiseAnonymizer,
    mosaic,
)
from ppa.anonymize.secure_reid import ReversibleSettings, SecureReIDAnonymizer

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
    "ReversibleSettings",
    "SecureReIDAnonymizer",
    "anonymizer_class",
    "create_anonymizer",
    "mosaic",
    "noise_keys_for",
]
