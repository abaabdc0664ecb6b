"""Gradient types from LESS (Xia et al., 2024): ``sgd`` (the gradient), ``sign``, and ``adam``.

``adam`` turns a per-example gradient g into the Adam update direction it would cause from the
checkpoint's optimizer moments (m, v), without bias correction, exactly as LESS does:
``m' = b1*m + (1-b1)*g``, ``v' = b2*v + (1-b2)*g**2``, feature ``m' / sqrt(v' + eps)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

GRAD_TYPES = ("sgd", "sign", "adam")


@dataclass
class AdamState:
    """First and second moments per parameter name (flattened), with the optimizer's betas and eps."""

    m: dict[str, torch.Tensor]
    v: dict[str, torch.Tensor]
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    @classmethod
    def from_optimizer(cls, model: nn.Module, optimizer_state: dict, param_names: Sequence[str] | None = None,
                       eps: float | None = None) -> AdamState:
        """Read ``torch.optim.Adam(W)`` state; ``param_names`` lists the parameters in the order given to it
        (default: every parameter of ``model`` with ``requires_grad``, which is what ``Adam(model.parameters())``
        sees when all are trainable)."""
        if "state" not in optimizer_state or "param_groups" not in optimizer_state:
            raise ValueError("AdamState: optimizer_state must be an optimizer.state_dict() "
                             "with 'state' and 'param_groups'")
        if param_names is None:
            param_names = [n for n, _ in model.named_parameters()]
        group = optimizer_state["param_groups"][0]
        order = [i for g in optimizer_state["param_groups"] for i in g["params"]]
        if len(order) != len(param_names):
            raise ValueError(f"AdamState: the optimizer has {len(order)} parameters, "
                             f"param_names lists {len(param_names)}")
        m, v = {}, {}
        for idx, name in zip(order, param_names, strict=True):
            st = optimizer_state["state"].get(idx)
            if st is None or "exp_avg" not in st:
                continue
            m[name] = st["exp_avg"].detach().reshape(-1).float()
            v[name] = st["exp_avg_sq"].detach().reshape(-1).float()
        b1, b2 = group.get("betas", (0.9, 0.999))
        eps = float(eps if eps is not None else group.get("eps", 1e-8))
        return cls(m=m, v=v, beta1=float(b1), beta2=float(b2), eps=eps)


def check_grad_type(grad_type: str, adam: AdamState | None, names: Sequence[str]) -> None:
    if grad_type not in GRAD_TYPES:
        raise ValueError(f"grad_type must be one of {GRAD_TYPES}, got {grad_type!r}")
    if grad_type == "adam":
        if adam is None:
            raise ValueError("grad_type='adam' needs the checkpoint's optimizer moments (adam_state=AdamState...)")
        missing = [n for n in names if n not in adam.m]
        if missing:
            raise ValueError(f"grad_type='adam': no optimizer moments for parameters {missing[:5]} "
                             "(was the optimizer stepped, and are param_names in the optimizer's order?)")


def transform(grad_type: str, name: str, g: torch.Tensor, adam: AdamState | None) -> torch.Tensor:
    """Apply the gradient type to one parameter's per-example gradients ``g`` ``[B, numel]``."""
    if grad_type == "sgd":
        return g
    if grad_type == "sign":
        return torch.sign(g)
    assert adam is not None
    m = adam.m[name].to(g.device)
    v = adam.v[name].to(g.device)
    m2 = adam.beta1 * m + (1 - adam.beta1) * g
    v2 = adam.beta2 * v + (1 - adam.beta2) * g * g
    return m2 / torch.sqrt(v2 + adam.eps)
