"""EK-FAC preconditioning of factorized (LoGra) gradient features (George et al., 2018; Grosse et al., 2023).

Influence functions weight gradients by the inverse Fisher/Gauss-Newton matrix. For a linear
layer with (projected) inputs ``x'`` and output gradients ``g'``, K-FAC approximates the Fisher of
its weight gradient ``G = sum_t g'_t x'_t^T`` by ``S ⊗ A`` with ``A = E[x' x'^T]`` and ``S = E[g' g'^T]``.
EK-FAC keeps K-FAC's eigenbasis ``Q_S ⊗ Q_A`` but replaces its eigenvalues by the exact second
moment of the gradient in that basis, ``Λ[i, j] = E_n[(Q_S^T G_n Q_A)[i, j]^2]``, which is the best
diagonal fit in that basis. The damped inverse applied to one example's gradient is

    F^-1 G = Q_S [ (Q_S^T G Q_A) / (Λ + λ) ] Q_A^T,   λ = damping * mean(Λ) per layer.

This is done in the projected space of the factorized projector (as LogIX does): the factors are
``k_in x k_in`` and ``k_out x k_out``, never ``d x d``. A selected bias is the usual K-FAC
augmentation: ``x'`` gets a constant 1 appended, so the weight-and-bias gradient is one
``k_out x (k_in + 1)`` matrix. The Fisher here is the empirical one (gradients of the given
labels' loss), as in TRAK and LESS; kronfluence samples labels from the model instead.

`EKFAC.fit` takes two passes over the fitting batches (factors, then the eigenvalue correction);
`EKFAC.features` returns preconditioned features ``[B, dim]``, second JL stage included, whose
inner products with plain features (`GradientComputer.features`) estimate ``g_test^T F^-1 g_train``.
Cost per example and layer beyond the plain features: ``2*k_out*k_in*(k_out + k_in)`` FLOPs.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from leanml.grads.computer import GradientComputer
from leanml.grads.defaults import EKFAC_DAMPING
from leanml.grads.factorized import FactorizedProjector
from leanml.grads.losses import Batch


def _augment(xp: torch.Tensor, bias: bool) -> torch.Tensor:
    return torch.cat([xp, xp.new_ones(*xp.shape[:-1], 1)], -1) if bias else xp


class EKFAC:
    """EK-FAC for the factorized features of one `GradientComputer` (``projector="factorized"``).

    Args:
        computer: the feature extractor; its model, loss and projection define the features.
        damping: λ relative to each layer's mean corrected eigenvalue (default ``defaults.EKFAC_DAMPING``
            = 0.1, kronfluence's heuristic).
    """

    def __init__(self, computer: GradientComputer, damping: float = EKFAC_DAMPING) -> None:
        if not isinstance(computer.projector, FactorizedProjector):
            raise ValueError("EKFAC: the GradientComputer must use projector='factorized' "
                             "(EK-FAC factors are per linear layer)")
        if damping <= 0:
            raise ValueError(f"EKFAC: damping must be > 0, got {damping}")
        self.computer, self.damping = computer, float(damping)
        self.proj: FactorizedProjector = computer.projector
        self.basis: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> (Q_S, Q_A)
        self.eigen: dict[str, torch.Tensor] = {}  # name -> corrected eigenvalues [k_out, k_in(+1)]
        self.n_examples = 0

    @property
    def fitted(self) -> bool:
        return bool(self.eigen)

    def _matrices(self, name: str, feats: torch.Tensor) -> torch.Tensor:
        """First-stage features ``[B, k_out*k_in (+k_out)]`` -> gradients ``[B, k_out, k_in(+1)]``."""
        k_in, k_out = self.proj.dims[name]
        B = feats.shape[0]
        W = feats[:, : k_out * k_in].reshape(B, k_out, k_in)
        if self.proj.layers[name][2]:
            W = torch.cat([W, feats[:, k_out * k_in :].reshape(B, k_out, 1)], 2)
        return W

    def _flatten(self, name: str, M: torch.Tensor) -> torch.Tensor:
        k_in, _ = self.proj.dims[name]
        B = M.shape[0]
        flat = M[:, :, :k_in].reshape(B, -1)
        return torch.cat([flat, M[:, :, k_in]], 1) if self.proj.layers[name][2] else flat

    def fit(self, batches: Iterable[Batch]) -> EKFAC:
        """Fit the factors and the corrected eigenvalues on ``batches`` (iterated twice: give a list)."""
        batches = list(batches)
        if not batches:
            raise ValueError("EKFAC.fit: give at least one batch")
        names = list(self.proj.layers)
        A: dict[str, torch.Tensor] = {}
        S: dict[str, torch.Tensor] = {}
        n = 0
        for b in batches:  # pass 1: A = E[x' x'^T], S = E[g' g'^T] over tokens and examples
            for name, (_, calls) in zip(names, self.computer.factorized_layers(b, sides=True), strict=True):
                for xp, gp in calls or []:
                    xa = _augment(xp, self.proj.layers[name][2])
                    xa = xa.reshape(-1, xa.shape[-1])
                    g2 = gp.reshape(-1, gp.shape[-1])
                    A[name] = A.get(name, 0) + (xa.T.double() @ xa.double())
                    S[name] = S.get(name, 0) + (g2.T.double() @ g2.double())
        for name in names:
            _, qa = torch.linalg.eigh(A[name])
            _, qs = torch.linalg.eigh(S[name])
            self.basis[name] = (qs.float(), qa.float())
        lam: dict[str, torch.Tensor] = {}
        for b in batches:  # pass 2: Λ = E_n[(Q_S^T G_n Q_A)^2]
            for name, (f, _) in zip(names, self.computer.factorized_layers(b), strict=True):
                qs, qa = self.basis[name]
                rot = qs.T @ self._matrices(name, f.detach()) @ qa
                lam[name] = lam.get(name, 0) + (rot.double() ** 2).sum(0)
            n += next(iter(b.values())).shape[0]
        self.eigen = {name: (v / n).float() for name, v in lam.items()}
        self.n_examples = n
        return self

    def precondition_layer(self, name: str, feats: torch.Tensor) -> torch.Tensor:
        """``F^-1`` (damped EK-FAC) applied to one layer's first-stage features ``[B, k_out*k_in (+k_out)]``."""
        if not self.fitted:
            raise RuntimeError("EKFAC: call fit(batches) before preconditioning")
        qs, qa = (m.to(feats.device) for m in self.basis[name])
        ev = self.eigen[name].to(feats.device)
        rot = qs.T @ self._matrices(name, feats.float()) @ qa
        rot = rot / (ev + self.damping * ev.mean().clamp_min(1e-30))
        return self._flatten(name, qs @ rot @ qa.T)

    def features(self, batch: Batch) -> torch.Tensor:
        """EK-FAC-preconditioned features ``[B, dim]`` (through the projector's second stage, if any)."""
        per = [self.precondition_layer(name, f)
               for name, (f, _) in zip(self.proj.layers, self.computer.factorized_layers(batch), strict=True)]
        return self.proj.combine(per)
