"""Per-example gradient features: batched per-example gradients, dense/factorized projections, LESS grad types."""

from leanml.grads.computer import BACKENDS, GradientComputer
from leanml.grads.ekfac import EKFAC
from leanml.grads.factorized import FactorizedProjector, split_dim
from leanml.grads.gradtypes import GRAD_TYPES, AdamState
from leanml.grads.losses import Batch, CausalLMLoss, ClassificationLoss, LossAdapter, batch_size
from leanml.grads.params import architecture_fingerprint, select_params, weights_fingerprint
from leanml.grads.projectors import PROJECTION_KINDS, DenseProjector, Projector, SparseProjector, random_block

__all__ = [
    "BACKENDS", "GRAD_TYPES", "PROJECTION_KINDS", "AdamState", "Batch", "CausalLMLoss", "ClassificationLoss",
    "DenseProjector", "EKFAC", "FactorizedProjector", "GradientComputer", "LossAdapter", "Projector", "SparseProjector",
    "architecture_fingerprint", "batch_size", "random_block", "select_params", "split_dim", "weights_fingerprint",
]
