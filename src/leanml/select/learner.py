"""`Learner`: what selectors need from the model family a study trains (warm-up, scores, gradients).

A selector never owns a training loop: it asks the pool's learner to train briefly (warm-ups,
proxies, irreducible-loss models), to score examples, and for per-example gradients. The study
uses the same learner to train on the selection, so selection and training share one model family.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from leanml.grads import ClassificationLoss
from leanml.grads.losses import MarginLoss  # noqa: F401  (re-exported: select's name for it)
from leanml.models import FitResult, fit, predict_logits


class Learner(ABC):
    """Trains and scores one model family on inputs ``X`` (rows or records) and labels ``y``."""

    n_classes: int | None = None
    metric: str = "accuracy"
    grad_chunk: int | None = None  # most examples per per-example-gradient batch (`Featurizer`); None: its own

    @abstractmethod
    def new_model(self, seed: int = 0) -> nn.Module:
        """A freshly initialised model (seeded)."""

    @abstractmethod
    def fit(self, model: nn.Module, X: Any, y: Any, *, weights: np.ndarray | None = None,
            epochs: int | None = None, batch_size: int | None = None, seed: int = 0,
            batch_hook: Callable | None = None, keep_checkpoints: bool = False,
            loss_norm: str = "weights", max_steps: int | None = None, drop_last: bool = False) -> FitResult:
        """Train ``model`` (metered); checkpoints carry model and optimizer state and the lr.

        ``loss_norm``, ``max_steps`` and ``drop_last`` are `leanml.models.fit`'s: "weights" (weighted
        mean) or "mean" (unbiased IS); stop after that many steps; skip each epoch's short last batch.
        """

    @abstractmethod
    def per_example_loss(self, model: nn.Module, X: Any, y: Any) -> np.ndarray:
        """Training loss of each example under ``model``."""

    @abstractmethod
    def evaluate(self, model: nn.Module, X: Any, y: Any) -> float:
        """The suite's quality metric (named by ``metric``) on held-out data."""

    def proxy(self) -> Learner:
        """The small proxy model family for selection via proxy (Coleman et al.); itself when it has none."""
        return self

    def probs(self, model: nn.Module, X: Any) -> np.ndarray:
        """Class probabilities (classifiers only)."""
        raise NotImplementedError(f"{type(self).__name__} is not a classifier")

    def last_layer(self, model: nn.Module, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """(softmax - onehot, input of the last linear layer) per example: the last-layer gradient
        is their outer product, and its norm their norms' product."""
        raise NotImplementedError(f"{type(self).__name__} has no last-layer access")

    def grad_batch(self, X: Any, y: Any) -> dict[str, torch.Tensor]:
        """A `leanml.grads` batch (dict of tensors) for per-example gradients of (X, y)."""
        raise NotImplementedError(f"{type(self).__name__} has no per-example gradients")

    def loss_adapter(self, output: str = "loss") -> Any:
        """The `leanml.grads.LossAdapter` for ``output``: "loss" or TRAK's "margin"."""
        raise NotImplementedError(f"{type(self).__name__} has no per-example gradients")


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "constant"  # or "cosine" (see leanml.models.fit)


class TorchClassifierLearner(Learner):
    """A PyTorch classifier on array inputs, trained with `leanml.models.fit` (Adam, cross-entropy)."""

    def __init__(self, factory: Callable[[int], nn.Module], n_classes: int,
                 config: TrainConfig | None = None, *, eval_batch: int = 1024,
                 proxy_factory: Callable[[int], nn.Module] | None = None) -> None:
        if n_classes < 2:
            raise ValueError(f"TorchClassifierLearner: n_classes must be >= 2, got {n_classes}")
        self.factory, self.proxy_factory = factory, proxy_factory
        self.n_classes = int(n_classes)
        self.config = config or TrainConfig()
        self.eval_batch = eval_batch

    def new_model(self, seed: int = 0) -> nn.Module:
        return self.factory(seed)

    def proxy(self) -> TorchClassifierLearner:
        """The small proxy model family (``proxy_factory``) for selection via proxy; itself when none was given."""
        if self.proxy_factory is None:
            return self
        return TorchClassifierLearner(self.proxy_factory, self.n_classes, self.config, eval_batch=self.eval_batch)

    def fit(self, model, X, y, *, weights=None, epochs=None, batch_size=None, seed=0,
            batch_hook=None, keep_checkpoints=False, loss_norm="weights", max_steps=None,
            drop_last=False) -> FitResult:
        c = self.config
        return fit(model, X, y, weights=weights, epochs=epochs or c.epochs,
                   batch_size=batch_size or c.batch_size, lr=c.lr, weight_decay=c.weight_decay,
                   seed=seed, batch_hook=batch_hook, keep_checkpoints=keep_checkpoints, loss_norm=loss_norm,
                   schedule=c.schedule, max_steps=max_steps, drop_last=drop_last)

    def logits(self, model: nn.Module, X: Any) -> torch.Tensor:
        return predict_logits(model, np.asarray(X) if not torch.is_tensor(X) else X.numpy(),
                              batch_size=self.eval_batch)

    def probs(self, model, X) -> np.ndarray:
        return torch.softmax(self.logits(model, X).double(), 1).numpy()

    def per_example_loss(self, model, X, y) -> np.ndarray:
        lg = self.logits(model, X)
        return F.cross_entropy(lg, torch.as_tensor(np.asarray(y)), reduction="none").double().numpy()

    def evaluate(self, model, X, y) -> float:
        return float((self.logits(model, X).argmax(1).numpy() == np.asarray(y)).mean())

    @torch.no_grad()
    def last_layer(self, model, X, y) -> tuple[np.ndarray, np.ndarray]:
        head = _last_linear(model)
        seen: list[torch.Tensor] = []
        handle = head.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
        try:
            lg = self.logits(model, X)
        finally:
            handle.remove()
        h = torch.cat(seen).flatten(1).double()
        err = torch.softmax(lg.double(), 1) - F.one_hot(torch.as_tensor(np.asarray(y)), lg.shape[1]).double()
        return err.numpy(), h.numpy()

    def grad_batch(self, X, y) -> dict[str, torch.Tensor]:
        return {"x": torch.as_tensor(np.asarray(X)), "y": torch.as_tensor(np.asarray(y))}

    def loss_adapter(self, output: str = "loss"):
        if output == "loss":
            return ClassificationLoss()
        if output == "margin":
            return MarginLoss()
        raise ValueError(f"loss_adapter: output must be 'loss' or 'margin', got {output!r}")


def _last_linear(model: nn.Module) -> nn.Linear:
    lin = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not lin:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to take last-layer gradients from")
    return lin[-1]


def last_layer_param_names(model: nn.Module) -> list[str]:
    """Parameter names of the model's last linear layer (weight, bias)."""
    head = _last_linear(model)
    ids = {id(p) for p in head.parameters()}
    return [n for n, p in model.named_parameters() if id(p) in ids]


def last_layer_grad_features(err: np.ndarray, h: np.ndarray, *, include_weight: bool = True) -> np.ndarray:
    """Exact per-example gradient of cross-entropy w.r.t. the last linear layer: [err (x) h, err].

    This is the last-layer approximation CRAIG and GRAD-MATCH use for deep networks; with
    ``include_weight=False`` only the bias part (softmax - onehot) is kept.
    """
    if not include_weight:
        return err.astype(np.float32)
    outer = (err[:, :, None] * h[:, None, :]).reshape(len(err), -1)
    return np.concatenate([outer, err], 1).astype(np.float32)
