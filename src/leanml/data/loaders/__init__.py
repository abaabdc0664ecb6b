"""Dataset loaders; each module registers its datasets on import."""

from leanml.data.loaders import (  # noqa: F401
    adult,
    azure_trace,
    cifar10,
    eval_sets,
    instruct,
    sklearn_bundled,
    sst2,
)
