"""Datasets: SYSU-MM01 and RegDB readers, test protocols, site partitioning, sampler, loaders.

Only the light record/split/error types are re-exported here, so importing a record type does
not pull in torch; import the readers and loaders from their modules (`ppa.data.sysu`,
`ppa.data.loader`, ...).
"""

from ppa.data.errors import CorruptImageError, DatasetLayoutError
from ppa.data.records import MODALITIES, ImageRecord, Modality, TrainRecord
from ppa.data.splits import TestSplit, TrainSet

__all__ = [
    "MODALITIES",
    "CorruptImageError",
    "DatasetLayoutError",
    "ImageRecord",
    "Modality",
    "TestSplit",
    "TrainRecord",
    "TrainSet",
]
