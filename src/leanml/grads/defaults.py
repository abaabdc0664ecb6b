"""The defaults every gradient feature and score shares, set once here (docs/store.md "Defaults" lists them).

The selectors (`leanml.select.targeted`), the store's extraction (`leanml.grads.recipes.ExtractSpec`,
``leanml grads extract``), `GradientComputer`, the scoring module (`leanml.store.scoring`) and EK-FAC
all read these names, so features extracted into a store and features a selector computes itself are
the same features, and TRAK from either path is damped the same way.

- ``PROJECTION_DIM = 1024``: feature dimension k.
- ``PROJECTOR = "auto"``: LoGra's factorized projection where it applies (every selected parameter is an
  ``nn.Linear`` weight or bias, and the features, and those they are scored against, are plain "sgd"
  gradients), else a dense JL map over the full gradient (CNNs; LESS, whose Adam-preconditioned pool
  needs the full gradient, so its SGD targets must be dense too). `resolve_projector` is the rule.
- ``PROJECTION_KIND = "rademacher"``, ``PROJECTION_SEED = 0``.
- ``DAMPING = 0.1``: every damped inverse (TRAK's kernel ``Phi^T Phi + lambda I``, EK-FAC's
  ``Lambda + lambda``) uses ``lambda = DAMPING x mean eigenvalue`` (for TRAK, ``trace(Phi^T Phi) / d``).
  0.1 is kronfluence's heuristic damping (``HEURISTIC_DAMPING_SCALE``), adopted as is: it was not tuned
  on leanml's LDS evaluation (benchmarks/attribution_quality.py reports the LDS at this fixed value).
"""

from __future__ import annotations

from collections.abc import Iterable

PROJECTION_DIM = 1024
PROJECTOR = "auto"
PROJECTORS = ("auto", "dense", "factorized")
PROJECTION_KIND = "rademacher"
PROJECTION_SEED = 0
DAMPING = 0.1


def resolve_projector(projector: str, *, linear_only: bool, grad_types: Iterable[str]) -> str:
    """``"dense"`` or ``"factorized"`` for ``projector`` (``"auto"`` follows the rule in the module docstring).

    ``grad_types``: the gradient types of these features and of every feature set they are scored against."""
    if projector not in PROJECTORS:
        raise ValueError(f"projector must be one of {PROJECTORS}, got {projector!r}")
    if projector != "auto":
        return projector
    return "factorized" if linear_only and set(grad_types) <= {"sgd"} else "dense"
