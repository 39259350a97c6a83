"""Data: sources -> manifest -> cache -> loader, with augmentation, balancing and splits.

Nothing here imports models or training code.
"""

from attnscope.data.augment import AugmentConfig, BatchTransform
from attnscope.data.cache import DecodedSet, load_images
from attnscope.data.loader import BatchLoader
from attnscope.data.manifest import BadRow, BadRowsError, Manifest
from attnscope.data.module import DataConfig, DataModule
from attnscope.data.sources.registry import SOURCES, load_source

__all__ = [
    "SOURCES",
    "AugmentConfig",
    "BadRow",
    "BadRowsError",
    "BatchLoader",
    "BatchTransform",
    "DataConfig",
    "DataModule",
    "DecodedSet",
    "Manifest",
    "load_images",
    "load_source",
]
