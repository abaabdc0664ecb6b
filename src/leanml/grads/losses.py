"""Per-example losses: one small `LossAdapter` base so MLP/CNN, text classifiers and causal LMs share one interface.

A batch is a dict of tensors whose first dimension is the example. ``loss(call, batch)`` runs the
model through ``call`` (the module itself, or a ``functional_call`` closure under ``vmap``) and
returns one loss per example, so the sum over the batch has each example's gradient as its own term.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

Batch = dict[str, torch.Tensor]


class LossAdapter(ABC):
    """How to compute one loss per example from a batch."""

    @abstractmethod
    def loss(self, call: Callable[..., Any], batch: Batch) -> torch.Tensor:
        """Per-example losses ``[B]``."""

    def tokens(self, batch: Batch) -> torch.Tensor | None:
        """Per-example count of tokens that carry loss (None for non-sequence models)."""
        return None


def batch_size(batch: Batch) -> int:
    return int(next(iter(batch.values())).shape[0])


def to_device(batch: Batch, device: torch.device | str) -> Batch:
    return {k: v.to(device) for k, v in batch.items()}


class ClassificationLoss(LossAdapter):
    """Cross-entropy of ``call(x)`` (key ``x``) or ``call(**inputs)`` (every key but ``y``) against ``y``."""

    def loss(self, call: Callable[..., Any], batch: Batch) -> torch.Tensor:
        if "y" not in batch:
            raise ValueError("ClassificationLoss: the batch needs a 'y' tensor of class indices")
        out = call(batch["x"]) if "x" in batch else call(**{k: v for k, v in batch.items() if k != "y"})
        logits = out.logits if hasattr(out, "logits") else out
        return F.cross_entropy(logits, batch["y"], reduction="none")

    def one_minus_p(self, call: Callable[..., Any], batch: Batch) -> torch.Tensor:
        """``1 - p(label)`` per example (TRAK's Q), float64; ``p = exp(-cross-entropy)``."""
        return (1.0 - torch.exp(-ClassificationLoss.loss(self, call, batch).double())).clamp(0.0, 1.0)


class MarginLoss(ClassificationLoss):
    """TRAK's model output for classifiers, f = log(p / (1 - p)) of the labelled class, per example.

    `leanml.grads` differentiates what ``loss`` returns, so this yields gradients of the margin (the
    cross-entropy is ``log(1 + exp(-f))``, so its gradient is ``-(1 - p)`` times this one)."""

    def loss(self, call: Callable[..., Any], batch: Batch) -> torch.Tensor:
        lp = -super().loss(call, batch)  # log p of the label
        return lp - torch.log1p(-torch.exp(lp).clamp(max=1 - 1e-7))


class CausalLMLoss(LossAdapter):
    """Mean next-token cross-entropy over the completion tokens (``labels`` != -100), per example, as in LESS."""

    def loss(self, call: Callable[..., Any], batch: Batch) -> torch.Tensor:
        for key in ("input_ids", "attention_mask", "labels"):
            if key not in batch:
                raise ValueError(f"CausalLMLoss: the batch needs '{key}' (see leanml.models.text.encode_completions)")
        out = call(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logits = (out.logits if hasattr(out, "logits") else out)[:, :-1]
        labels = batch["labels"][:, 1:]
        mask = labels != -100
        tok = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.clamp_min(0).reshape(-1),
                              reduction="none").view(labels.shape)
        return (tok * mask).sum(1) / mask.sum(1).clamp_min(1)

    def tokens(self, batch: Batch) -> torch.Tensor:
        return (batch["labels"][:, 1:] != -100).sum(1)
