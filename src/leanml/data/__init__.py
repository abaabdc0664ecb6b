"""Dataset registry: named datasets, stable example ids, data root lookup."""

# The assembler: importing the loaders registers their datasets (the registry module does not import them).
from leanml.data import loaders  # noqa: F401
from leanml.data.errors import DatasetError, UnknownDatasetError
from leanml.data.registry import get_spec, list_specs, load, register
from leanml.data.root import cache_dir, data_root
from leanml.data.types import DatasetSpec, Split

__all__ = [
    "DatasetError", "DatasetSpec", "Split", "UnknownDatasetError",
    "cache_dir", "data_root", "get_spec", "list_specs", "load", "register",
]
