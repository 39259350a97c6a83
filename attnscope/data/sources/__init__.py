"""Sources: each turns what a user has on disk (or a generator) into a Manifest."""

from attnscope.data.sources.arrays import FASHION_MNIST_DIR, from_idx, from_medmnist, read_idx
from attnscope.data.sources.chest import synthetic_chest_xrays
from attnscope.data.sources.chest_files import write_chest_xray_set
from attnscope.data.sources.files import IMAGE_EXTENSIONS, from_csv, from_folder
from attnscope.data.sources.synthetic import best_possible_auc, cluttered, synthetic_lesions

__all__ = [
    "FASHION_MNIST_DIR",
    "IMAGE_EXTENSIONS",
    "best_possible_auc",
    "cluttered",
    "from_csv",
    "from_folder",
    "from_idx",
    "from_medmnist",
    "read_idx",
    "synthetic_chest_xrays",
    "synthetic_lesions",
    "write_chest_xray_set",
]
