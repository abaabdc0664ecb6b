"""The dataset registry: every named dataset, looked up by name.

This base module holds the registry only; it never imports the loaders that register into it. The
package (``leanml/data/__init__.py``) assembles them, and since importing ``leanml.data.registry``
initialises ``leanml.data`` first, every loader has registered before a lookup can run.
"""

from __future__ import annotations

import os
from pathlib import Path

from leanml.data.errors import DatasetError, UnknownDatasetError
from leanml.data.root import ENV_VAR, data_root
from leanml.data.types import DatasetSpec, Split

_REGISTRY: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"dataset '{spec.name}' is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> DatasetSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownDatasetError(name, list(_REGISTRY)) from None


def list_specs() -> list[DatasetSpec]:
    return list(_REGISTRY.values())


def load(name: str, split: str = "train", *, root: Path | None = None) -> Split:
    """Load one split of a named dataset from ``root`` (default: the data root)."""
    spec = get_spec(name)
    if split not in spec.splits:
        raise ValueError(f"dataset '{name}' has no split '{split}'; its splits are {sorted(spec.splits)}")
    base = Path(root) if root is not None else data_root()
    if not spec.bundled and not base.is_dir():
        origin = ("the root argument" if root is not None else f"${ENV_VAR}" if os.environ.get(ENV_VAR)
                  else f"the default; set ${ENV_VAR} to the folder holding the data")
        raise DatasetError(
            name, base, f"the data root does not exist (from {origin})",
            f"a folder holding {', '.join(spec.files)}", spec.source,
        )
    return spec.loader(base, split)

