"""rtlab datasets: prepared once into a cache with a manifest, sampled by a pure `batch` function.

from rtlab.data import load_dataset
ds = load_dataset("shakespeare_char", {"size": "tiny"})
x, y = ds.batch("train", index=step, batch_size=64, block_size=256, seed=1337)
"""

from rtlab.data.base import DataError, Dataset, TokenDataset
from rtlab.data.cache import default_data_dir
from rtlab.data.registry import DATASETS, load_data_section, load_dataset

__all__ = [
    "DATASETS", "DataError", "Dataset", "TokenDataset", "default_data_dir", "load_data_section",
    "load_dataset",
]
