"""Online selection inside training, per batch: DLIS importance sampling and RHO-LOSS.

Both return a `Selection` whose ``online`` plan tells the trainer to presample large batches and
let the plan's ``hook`` (a `leanml.models.fit` ``batch_hook``) pick what is trained on. Every hook
call is metered; the study charges it to selection, not training.

Budget: a budget b trains on b x (pool size) x (base epochs) examples in total, the same number of
backward passes as training on a b-fraction subset: the trainer stops after
``round(b * pool * epochs / plan.batch_size)`` steps (``max_steps`` of `leanml.models.fit`), each on a
full presample (``drop_last``: a short last presample would let a step pick fewer than its batch).
"""

from __future__ import annotations

import numpy as np
import torch

from leanml.meter import Cost, Meter, stage
from leanml.select.base import (
    OnlinePlan,
    Pool,
    Selection,
    SelectionError,
    Selector,
    Target,
    check_finite,
    register,
)
from leanml.select.warmup import warm_up


class _HookMeter:
    """Sums the metered cost of every hook call; the total is one stage, "infer": a hook is a forward
    pass over the presampled batch plus a little host-side picking (not metered apart per batch)."""

    def __init__(self) -> None:
        self.total = Cost.zero()
        self.calls = 0

    def __call__(self) -> Cost:
        return Cost.of_stages({"infer": self.total})

    def add(self, c: Cost) -> None:
        self.total = self.total + c.without_stages()
        self.calls += 1


# ---- DLIS ---------------------------------------------------------------------------------------

def dlis_sample(bounds: np.ndarray, b: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``b`` of the ``B`` presampled points with p_i proportional to ``bounds`` (with
    replacement) and return (indices, weights 1 / (B p_i)): (1/b) sum_j w_j g_j is unbiased for the
    mean gradient of the B points."""
    bounds = np.asarray(bounds, dtype=np.float64)
    B = len(bounds)
    s = bounds.sum()
    p = np.full(B, 1.0 / B) if not s > 0 else bounds / s
    idx = rng.choice(B, size=b, replace=True, p=p)
    return idx, 1.0 / (B * p[idx])


def dlis_tau(bounds: np.ndarray) -> float:
    """Katharopoulos & Fleuret's variance-reduction measure tau = (1 - ||g - u||^2 / ||g||^2)^(-1/2),
    g the normalised bounds and u uniform; it simplifies to sqrt(B * sum g_i^2) (1 = no gain)."""
    bounds = np.asarray(bounds, dtype=np.float64)
    s = bounds.sum()
    if not s > 0:
        return 1.0
    g = bounds / s
    return float(np.sqrt(len(g) * np.square(g).sum()))


def gradnorm_bound(learner, model, X, y) -> np.ndarray:
    """Per-example norm of the last linear layer's gradient, ||softmax - onehot|| * sqrt(||h||^2 + 1)
    (weight and bias parts; h = the last layer's input): the paper's upper bound up to a constant."""
    err, h = learner.last_layer(model, X, y)
    return np.linalg.norm(err, axis=1) * np.sqrt(np.square(h).sum(1) + 1.0)


@register
class DLISSelector(Selector):
    """DLIS (Katharopoulos & Fleuret, 2018): online importance sampling by the gradient-norm bound.

    Each step presamples ``presample_factor`` x batch points. While the variance-reduction estimate
    tau (an exponential moving average, rate ``a_tau``) is at most ``tau_th``, it trains on a
    uniform batch (and updates tau from that batch's bounds); once tau > tau_th it samples the batch
    with p proportional to the bound and weights 1/(B p). ``tau_th=None`` uses the paper's
    break-even (B + 3b) / (3b), a forward pass costing a third of forward+backward.
    """

    method = "dlis"
    needs = ("learner", "labels")
    online = True

    def __init__(self, *, seed: int = 0, presample_factor: int = 3, tau_th: float | None = None,
                 a_tau: float = 0.9, batch_size: int | None = None) -> None:
        super().__init__(seed=seed)
        if presample_factor < 1:
            raise SelectionError(f"dlis: presample_factor must be >= 1, got {presample_factor}")
        if not 0 <= a_tau < 1:
            raise SelectionError(f"dlis: a_tau must be in [0, 1), got {a_tau}")
        self.presample_factor, self.tau_th, self.a_tau = int(presample_factor), tau_th, float(a_tau)
        self.batch_size = batch_size

    def _select(self, pool: Pool, k: int, target: Target | None) -> Selection:
        learner = pool.learner
        b = int(self.batch_size or learner.config.batch_size)
        B = b * self.presample_factor
        tau_th = self.tau_th if self.tau_th is not None else (B + 3 * b) / (3 * b)
        rng = np.random.default_rng(self.seed)
        meter = _HookMeter()
        state = {"tau": 0.0, "is_steps": 0, "steps": 0}

        def hook(model, xb, yb, idx):
            with Meter(gpu=False) as m:
                n = len(xb)
                bb = max(1, int(round(n / self.presample_factor)))
                state["steps"] += 1
                if state["tau"] > tau_th:
                    bounds = gradnorm_bound(learner, model, xb, yb)
                    pick, w = dlis_sample(bounds, bb, rng)
                    state["is_steps"] += 1
                else:  # uniform step; its bounds feed the tau estimate
                    pick, w = np.arange(bb), np.ones(bb)
                    bounds = gradnorm_bound(learner, model, xb[:bb], yb[:bb])
                state["tau"] = self.a_tau * state["tau"] + (1 - self.a_tau) * dlis_tau(bounds)
            meter.add(m.cost)
            t = torch.as_tensor(pick)
            return xb[t], yb[t], torch.as_tensor(w, dtype=torch.float32)

        # loss_norm="mean": (1/b) sum_j w_j l_j with w_j = 1/(B p_j) is the unbiased estimate.
        plan = OnlinePlan(presample=B, batch_size=b, hook=hook, hook_cost=meter, loss_norm="mean")
        return Selection(np.arange(len(pool)), None, None, Cost.zero(), online=plan,
                         info={"tau_th": tau_th, "state": state})


# ---- RHO-LOSS -----------------------------------------------------------------------------------

def reducible_top(train_loss: np.ndarray, irreducible: np.ndarray, nb: int) -> np.ndarray:
    """Indices of the ``nb`` largest reducible losses (training loss - irreducible loss)."""
    red = np.asarray(train_loss, dtype=np.float64) - np.asarray(irreducible, dtype=np.float64)
    return np.argsort(-red, kind="stable")[:nb]


@register
class RhoLossSelector(Selector):
    """RHO-LOSS (Mindermann et al., 2022): from each large batch of n_B points, train on the
    n_b = ``ratio`` x n_B with the highest reducible loss, L(y|x; current model) - L(y|x; IL model).

    The irreducible-loss (IL) model is the pool's learner trained on the holdout split
    (``il_epochs``); its losses on the pool are computed once, before training, as in the paper.
    """

    method = "rho-loss"
    needs = ("learner", "labels", "holdout")
    online = True

    def __init__(self, *, seed: int = 0, ratio: float = 0.1, il_epochs: int | None = None,
                 batch_size: int | None = None) -> None:
        super().__init__(seed=seed)
        if not 0 < ratio <= 1:
            raise SelectionError(f"rho-loss: ratio (n_b / n_B) must be in (0, 1], got {ratio}")
        self.ratio, self.il_epochs, self.batch_size = float(ratio), il_epochs, batch_size

    def irreducible_losses(self, pool: Pool) -> np.ndarray:
        """Train the IL model on the holdout split and score the pool with it."""
        learner = pool.learner
        il_model, _, _ = warm_up(pool.holdout, epochs=int(self.il_epochs or learner.config.epochs),
                                 seed=self.seed + 1, learner=learner)
        with stage("infer"):
            il = learner.per_example_loss(il_model, pool.X, pool.y)
        return check_finite("rho-loss irreducible loss", il)

    def _select(self, pool: Pool, k: int, target: Target | None) -> Selection:
        learner = pool.learner
        il = self.irreducible_losses(pool)
        b = int(self.batch_size or learner.config.batch_size)
        nB = int(np.ceil(b / self.ratio))
        meter = _HookMeter()
        state: dict = {"steps": 0, "last_rows": None}

        def hook(model, xb, yb, idx):
            with Meter(gpu=False) as m:
                nb = max(1, int(round(len(xb) * self.ratio)))
                loss = learner.per_example_loss(model, xb, yb)
                pick = reducible_top(loss, il[np.asarray(idx)], nb)
            meter.add(m.cost)
            state["steps"] += 1
            state["last_rows"] = np.asarray(idx)[pick]  # pool rows trained on at this step
            t = torch.as_tensor(pick)
            return xb[t], yb[t], torch.ones(len(pick))

        plan = OnlinePlan(presample=nB, batch_size=b, hook=hook, hook_cost=meter)
        return Selection(np.arange(len(pool)), None, il, Cost.zero(), online=plan, info={"state": state})
