"""Dataset loaders; each module registers its datasets on import."""

from leanml.data.loaders import sklearn_bundled  # noqa: F401
