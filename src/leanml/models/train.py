"""A metered, seeded training loop with optional per-example weights (for weighted subsets)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from leanml.meter import Cost, Meter

# Called once per batch with (model, X_batch, y_batch, idx_batch); returns (X, y, weights) to train on.
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
BatchHook = Callable[[nn.Module, torch.Tensor, torch.Tensor, np.ndarray], Batch]


SCHEDULES = ("constant", "cosine")


@dataclass
class FitResult:
    model: nn.Module
    cost: Cost
    losses: list[float] = field(default_factory=list)
    checkpoints: list[dict] = field(default_factory=list)  # state dicts saved at epoch ends if asked
    steps: int = 0  # optimizer steps taken
    examples: int = 0  # examples back-propagated (after any batch hook's pick)


def fit(
    model: nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    batch_hook: BatchHook | None = None,
    keep_checkpoints: bool = False,
    count_flops: bool = False,
    loss_norm: str = "weights",
    schedule: str = "constant",
    max_steps: int | None = None,
    drop_last: bool = False,
) -> FitResult:
    """Train ``model`` with Adam on (X, y), metered.

    ``weights`` scale each example's loss (CRAIG/GRAD-MATCH subsets). ``batch_hook`` lets an
    online selector (DLIS, RHO-LOSS) replace each batch with the examples it picks.
    ``loss_norm`` divides each batch's weighted loss by the sum of its weights ("weights": a
    weighted mean, for weighted subsets) or by the batch size ("mean": the unbiased
    importance-sampling estimate, for DLIS's 1/(N p) weights). ``schedule`` is the learning rate
    over training: "constant", or "cosine" decay from ``lr`` to 0 over all steps (stabler final
    weights for short from-scratch runs). A checkpoint's ``lr`` is the mean rate of its epoch, the
    weight LESS gives it. ``max_steps`` stops training after that many optimizer steps;
    ``drop_last`` skips each epoch's short last batch (when X holds at least one full batch), so that
    every step sees ``batch_size`` examples: what an online selector's budget counts on.
    """
    X, y = np.asarray(X), np.asarray(y)
    if len(X) != len(y):
        raise ValueError(f"fit: X has {len(X)} rows but y has {len(y)}")
    if len(X) == 0:
        raise ValueError("fit: no training examples")
    if weights is not None and len(weights) != len(X):
        raise ValueError(f"fit: weights has {len(weights)} entries, X has {len(X)} rows")
    if loss_norm not in ("weights", "mean"):
        raise ValueError(f"fit: loss_norm must be 'weights' or 'mean', got {loss_norm!r}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"fit: epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"fit: max_steps must be >= 1 when given, got {max_steps}")
    if schedule not in SCHEDULES:
        raise ValueError(f"fit: schedule must be one of {SCHEDULES}, got {schedule!r}")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y)
    wt = torch.as_tensor(weights, dtype=torch.float32) if weights is not None else torch.ones(len(X))
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss(reduction="none")
    out = FitResult(model=model, cost=Cost())
    drop_last = drop_last and len(X) >= batch_size
    steps_per_epoch = len(X) // batch_size if drop_last else -(-len(X) // batch_size)
    total, step, n_seen = epochs * steps_per_epoch, 0, 0
    if max_steps is not None:
        total = min(total, int(max_steps))
    with Meter(count_flops=count_flops) as m:
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(len(X), generator=gen)
            epoch_lrs = []
            for start in range(0, steps_per_epoch * batch_size, batch_size):  # drop_last: the short batch is skipped
                if step >= total:
                    break
                rate = lr if schedule == "constant" else 0.5 * lr * (1 + math.cos(math.pi * step / total))
                for group in opt.param_groups:
                    group["lr"] = rate
                epoch_lrs.append(rate)
                step += 1
                idx = perm[start : start + batch_size]
                xb, yb, wb = Xt[idx], yt[idx], wt[idx]
                if batch_hook is not None:
                    xb, yb, wb = batch_hook(model, xb, yb, idx.numpy())
                    model.train()
                denom = wb.sum().clamp_min(1e-12) if loss_norm == "weights" else len(wb)
                loss = (loss_fn(model(xb), yb) * wb).sum() / denom
                n_seen += len(yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                out.losses.append(loss.item())
            if keep_checkpoints and epoch_lrs:
                out.checkpoints.append({
                    "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
                    "optimizer": opt.state_dict(),
                    "lr": float(np.mean(epoch_lrs)),
                })
            if step >= total:
                break
    out.cost, out.steps, out.examples = m.cost, step, n_seen
    return out
    return out


@torch.no_grad()
def predict_logits(model: nn.Module, X: np.ndarray, batch_size: int = 1024) -> torch.Tensor:
    model.eval()
    Xt = torch.as_tensor(np.asarray(X))
    return torch.cat([model(Xt[i : i + batch_size]) for i in range(0, len(Xt), batch_size)])


def evaluate(model: nn.Module, X: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy."""
    pred = predict_logits(model, X).argmax(1).numpy()
    return float((pred == np.asarray(y)).mean())
