"""dedup-random and less-dedup: built from store.query, metered, and doing what their rule says on data
where the answer is known (planted duplicates; a target domain)."""

import numpy as np
from select_fixtures import digits_split, mlp_learner

from leanml.select import MatrixFeatures, Pool, Target, get_selector, list_methods


def _dup_pool(seed=0):
    """120 distinct directions, 40 of them copied 5 more times (tiny noise): 320 rows, 120 distinct."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((120, 32))
    copies = np.repeat(base[:40], 5, axis=0) + 1e-3 * rng.standard_normal((200, 32))
    P = np.concatenate([base, copies])
    group = np.concatenate([np.arange(120), np.repeat(np.arange(40), 5)])
    return Pool(np.zeros((len(P), 1)), features=MatrixFeatures([P], kind="sgd")), group


def test_registered():
    assert {"dedup-random", "less-dedup"} <= set(list_methods())


def test_dedup_random_picks_distinct_rows_only():
    pool, group = _dup_pool()
    s = get_selector("dedup-random", seed=0, threshold=0.99)
    sel = s.select(pool, 100)
    assert s.kept_after_dedup == 120
    assert len(np.unique(group[sel.indices])) == 100  # no two picks are copies of each other
    assert sel.cost.wall_s is not None and sel.cost.wall_s > 0
    rnd = get_selector("random", seed=0).select(pool, 100)
    assert len(np.unique(group[rnd.indices])) < 100  # plain random does pick copies here
    # more than the distinct rows: the rest comes from the duplicates
    assert len(get_selector("dedup-random", seed=0, threshold=0.99).select(pool, 150)) == 150


def test_less_dedup_diversifies_less():
    pool, group = _dup_pool()
    rng = np.random.default_rng(1)
    P = pool.features.rows(0)
    target = P[:40].mean(0) + 0.1 * rng.standard_normal((4, 32))  # aligned with the duplicated directions
    pool = Pool(np.zeros((len(P), 1)), features=MatrixFeatures([P], kind="adam"))
    tgt = Target(texts=["t"] * 4, features=MatrixFeatures([target]))
    less = get_selector("less").select(pool, 30, target=tgt)
    ld = get_selector("less-dedup", threshold=0.99).select(pool, 30, target=tgt)
    top = np.argsort(-less.scores, kind="stable")[:90]  # the pool_factor * k best candidates
    distinct_top = len(np.unique(group[top]))
    assert len(ld) == 30 and set(ld.indices.tolist()) <= set(top.tolist())
    # one per component first: as many distinct directions as the candidates hold (up to k)
    assert len(np.unique(group[ld.indices])) == min(30, distinct_top)
    assert len(np.unique(group[less.indices])) < min(30, distinct_top)  # LESS alone takes copies


def test_dedup_random_on_real_gradients_with_warmup():
    X, y, _, _ = digits_split()
    pool = Pool(X[:400], y[:400], learner=mlp_learner(epochs=2))
    sel = get_selector("dedup-random", seed=0, warmup_epochs=1, dim=64, threshold=0.9).select(pool, 0.1)
    assert len(sel) == 40 and sel.cost.stages  # warm-up and gradients metered in its cost


def test_less_dedup_auto_threshold_changes_the_selection_on_real_gradients():
    """Digits MLP gradients, an in-distribution target: a fixed 0.95 joins (almost) nothing among LESS's best
    rows, so less-dedup would equal less; the auto threshold (median nearest-neighbour cosine of the
    candidates) joins the redundant half and the round robin swaps picks for rows of other components."""
    X, y, Xh, yh = digits_split()
    pool = Pool(X[:400], y[:400], learner=mlp_learner(epochs=2))
    tgt = Target(X=Xh[:60], y=yh[:60])
    kw = {"warmup_epochs": 1, "dim": 64, "seed": 0}
    less = get_selector("less", **kw).select(pool, 40, target=tgt)
    auto = get_selector("less-dedup", **kw)
    ld = auto.select(pool, 40, target=tgt)
    fixed = get_selector("less-dedup", threshold=0.95, **kw).select(pool, 40, target=tgt)
    assert -1 < auto.threshold_used < 0.95  # read off the candidates' similarities, a cosine
    assert len(set(fixed.indices.tolist()) - set(less.indices.tolist())) <= 2  # 0.95: about the same as LESS
    assert len(set(ld.indices.tolist()) - set(less.indices.tolist())) >= 8  # auto: a different selection
    assert len(np.unique(y[:400][ld.indices])) >= len(np.unique(y[:400][less.indices]))  # no fewer classes
