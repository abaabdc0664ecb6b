"""The `Selector` contract, run for every registered selector (read from the registry at collection time).

A newly registered method is tested here with no new test code. For each one:

- it respects the budget: an offline selection holds exactly k pool rows (k from a count or a fraction),
  a budget-free method (``uses_budget = False``) the whole pool; an online plan's hook, given one
  presample, trains on ``plan.batch_size`` of its rows;
- it is deterministic for a seed (fresh selector, fresh pool caches);
- it names the parameter on bad input (budget out of range or not a number, an unknown option);
- it reports its cost: wall and CPU seconds measured, and every field either measured or "unavailable"
  with the reason in ``cost.notes``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from select_fixtures import digits_split, mlp_learner

from leanml.meter import Cost
from leanml.select import Pool, Selection, SelectionError, Target, get_selector, list_methods
from leanml.select.base import _REGISTRY

METHODS = list_methods()
N_POOL, K = 240, 24
_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _texts(X: np.ndarray, y: np.ndarray) -> list[str]:
    """Short texts that follow the label (for the text baselines), with the ink level as a second word."""
    ink = np.where(X.mean(1) > np.median(X.mean(1)), "bold", "thin")
    return [f"a {ink[i]} handwritten {_NAMES[int(y[i])]}" for i in range(len(y))]


_SPLIT = digits_split(seed=0, holdout=60)


def contract_pool() -> tuple[Pool, Target]:
    """A fresh pool (empty caches) of 240 digits, a 60-row holdout, and a 12-example target with texts."""
    X, y, Xh, yh = _SPLIT
    X, y = X[:N_POOL], y[:N_POOL]
    learner = mlp_learner(hidden=(16,), epochs=2, batch_size=16)
    holdout = Pool(Xh, yh, learner=learner, texts=_texts(Xh, yh), name="holdout")
    pool = Pool(X, y, learner=learner, holdout=holdout, texts=_texts(X, y), name="contract")
    target = Target(Xh[:12], yh[:12], texts=_texts(Xh[:12], yh[:12]), name="target")
    return pool, target


def _select(method: str, budget, seed: int = 0) -> tuple[Selection, Pool]:
    pool, target = contract_pool()
    sel = get_selector(method, seed=seed)
    why = sel.applicable(pool, target)
    assert why is None, f"{method} does not apply to the contract pool: {why}"
    try:
        return sel.select(pool, budget, target=target), pool
    except SelectionError as e:
        if "not installed" in str(e) or "extra" in str(e):
            pytest.skip(f"{method}: {e}")
        raise


def _hook_step(sel: Selection, pool: Pool, seed: int = 0):
    """One online step: the plan's hook on the first presample of the pool, under a fresh model."""
    plan = sel.online
    torch.manual_seed(seed)
    model = pool.learner.new_model(seed)
    idx = np.arange(plan.presample) % len(pool)
    xb = torch.as_tensor(pool.X[idx], dtype=torch.float32)
    yb = torch.as_tensor(pool.y[idx])
    return plan.hook(model, xb, yb, torch.as_tensor(idx))


def test_the_contract_covers_every_registered_selector():
    assert sorted(METHODS) == sorted(_REGISTRY) and len(METHODS) >= 17


@pytest.mark.parametrize("method", METHODS)
def test_respects_the_budget(method):
    cls = _REGISTRY[method]
    for budget in (K, K / N_POOL):
        sel, pool = _select(method, budget)
        assert sel.method == method
        assert np.all((sel.indices >= 0) & (sel.indices < len(pool)))
        if sel.online is not None:
            assert cls.online
            x, y, w = _hook_step(sel, pool)
            assert len(x) == len(y) == len(w) == sel.online.batch_size, (
                f"{method}: one step trains on {len(x)} rows, the plan says batch_size={sel.online.batch_size}")
            assert torch.all(torch.isfinite(w)) and torch.all(w > 0)
        elif not cls.uses_budget:
            assert len(sel) == len(pool)
        else:
            assert len(sel) == K, f"{method}: budget {budget!r} gave {len(sel)} rows, expected {K}"
            if sel.weights is not None:
                assert np.all(np.isfinite(sel.weights)) and np.all(sel.weights >= 0)


@pytest.mark.parametrize("method", METHODS)
def test_deterministic_for_a_seed(method):
    a, pa = _select(method, K, seed=3)
    b, pb = _select(method, K, seed=3)
    np.testing.assert_array_equal(a.indices, b.indices)
    for x, y in ((a.weights, b.weights), (a.scores, b.scores)):
        assert (x is None) == (y is None)
        if x is not None:
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-9)
    if a.online is not None:
        (xa, ya, wa), (xb, yb, wb) = _hook_step(a, pa, 3), _hook_step(b, pb, 3)
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.allclose(wa, wb)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("budget", [0, 0.0, -0.5, -3, N_POOL + 1, 2.5, math.nan, math.inf, "0.1", True, None])
def test_bad_budget_names_the_parameter(method, budget):
    pool, target = contract_pool()
    with pytest.raises(SelectionError, match="budget"):
        get_selector(method).select(pool, budget, target=target)


@pytest.mark.parametrize("method", METHODS)
def test_unknown_option_is_named(method):
    with pytest.raises(SelectionError, match=rf"method '{method}'.*no_such_option"):
        get_selector(method, no_such_option=1)


@pytest.mark.parametrize("method", METHODS)
def test_missing_input_is_named(method):
    """Without the target, texts, holdout or learner a method needs: a SelectionError that says which."""
    cls = _REGISTRY[method]
    bare = Pool(_SPLIT[0][:N_POOL], None, name="bare")  # no labels, learner, texts, holdout or target
    if not cls.needs and not cls.needs_target and get_selector(method).applicable(bare, None) is None:
        return  # needs nothing a bare pool lacks; one that needs "features or a learner" must say so below
    with pytest.raises(SelectionError) as e:
        get_selector(method).select(bare, K)
    msg = str(e.value)
    assert method in msg and any(w in msg for w in ("target", "learner", "texts", "holdout", "labels")), msg


@pytest.mark.parametrize("method", METHODS)
def test_reports_its_cost(method):
    sel, pool = _select(method, K)
    costs = {"select": sel.cost}
    if sel.online is not None:
        _hook_step(sel, pool)
        costs["hook"] = sel.online.hook_cost()
    for what, c in costs.items():
        assert isinstance(c, Cost), f"{method} {what}: cost is {type(c).__name__}"
        assert c.wall_s is not None and c.wall_s > 0, f"{method} {what}: wall_s {c.wall_s}"
        assert c.cpu_s is not None and c.cpu_s >= 0, f"{method} {what}: cpu_s {c.cpu_s}"
        for f in dataclasses.fields(Cost):
            if f.name in ("notes", "stages"):
                continue
            assert getattr(c, f.name) is not None or f.name in c.notes, (
                f"{method} {what}: {f.name} is None with no reason in cost.notes")
