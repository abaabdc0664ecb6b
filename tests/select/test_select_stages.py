"""Selection costs split by stage ("train", "infer", "grads"; the rest is host work) for the study's projection."""

import numpy as np
import pytest
import torch
from select_fixtures import digits_pool

from leanml.select import Target, get_selector


def _walls(cost):
    return {k: v.wall_s for k, v in cost.stages.items()}


PARAMS = {"loss": {"warmup_epochs": 1}, "margin": {"warmup_epochs": 1}, "craig": {"warmup_epochs": 1},
          "less": {"warmup_epochs": 1, "dim": 64}, "rho-loss": {"il_epochs": 1}}


@pytest.fixture(scope="module")
def pool():
    return digits_pool(epochs=2)


@pytest.mark.parametrize(("method", "stages"), [
    ("loss", {"train", "infer"}),
    ("margin", {"train", "infer"}),
    ("craig", {"train", "infer"}),
    ("less", {"train", "grads"}),
    ("rho-loss", {"train", "infer"}),
    ("random", set()),
])
def test_selector_cost_carries_its_stages(pool, method, stages):
    params = PARAMS.get(method, {})
    target = Target(pool.holdout.X[:10], pool.holdout.y[:10]) if method == "less" else None
    sel = get_selector(method, seed=0, **params).select(pool, 0.1, target=target)
    assert set(sel.cost.stages) == stages
    assert all(w > 0 for w in _walls(sel.cost).values())
    assert sum(_walls(sel.cost).values()) <= sel.cost.wall_s  # the rest is host-side work


def test_cached_scores_keep_the_stage_split_for_every_budget(pool):
    s = get_selector("loss", seed=0, warmup_epochs=1)
    a, b = s.select(pool, 0.05), s.select(pool, 0.2)  # the second reuses the cached scores
    assert set(a.cost.stages) == set(b.cost.stages) == {"train", "infer"}
    assert b.cost.stages["train"].wall_s == a.cost.stages["train"].wall_s  # the same warm-up, charged again


def test_online_hook_cost_is_the_infer_stage(pool):
    sel = get_selector("dlis", seed=0).select(pool, 0.3)
    plan = sel.online
    model = pool.learner.new_model(0)
    xb = torch.as_tensor(pool.X[:plan.presample])
    yb = torch.as_tensor(pool.y[:plan.presample])
    plan.hook(model, xb, yb, np.arange(plan.presample))
    hook = plan.hook_cost()
    assert set(hook.stages) == {"infer"} and hook.stages["infer"].wall_s == hook.wall_s > 0
