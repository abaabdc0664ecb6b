"""Model variants: a callable model plus its profile, builders that derive them, and prototypes."""

from leanml.serve.variants.base import ClassifierModel, GeneratorModel, InputError, Model, Variant
from leanml.serve.variants.family import Family
from leanml.serve.variants.prototypes import build_family, get_prototype, list_prototypes

__all__ = [
    "ClassifierModel", "Family", "GeneratorModel", "InputError", "Model", "Variant",
    "build_family", "get_prototype", "list_prototypes",
]
