"""One scoring path: the selectors and the store return the same LESS, balanced, TRAK and DsDM scores, and
TRAK without projection equals the closed-form influence on least squares."""

import warnings

import numpy as np
import pytest

from leanml.select import Pool, Target, get_selector
from leanml.select.features import MatrixFeatures, StoreFeatures
from leanml.store import GradientStore, scoring
from leanml.store.search import dsdm_scores, less_balanced, less_scores, trak_scores

SPEC = {"projection": {"type": "synthetic", "dim": 24, "seed": 0}}
N, D, T, C = 400, 24, 18, 2


@pytest.fixture(scope="module")
def feats():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((3, D))
    lab = rng.integers(0, 3, N)
    pool = [(centers[lab] + rng.standard_normal((N, D))).astype(np.float32) for _ in range(C)]
    tl = np.repeat([0, 1, 2], T // 3)
    tgt = [(centers[tl] + rng.standard_normal((T, D))).astype(np.float32) for _ in range(C)]
    q = rng.uniform(0.05, 0.95, (C, N)).astype(np.float32)
    return pool, tgt, tl.astype(str), q, np.array([0.7, 0.3])


@pytest.fixture(scope="module")
def store(feats, tmp_path_factory):
    pool, _, _, q, w = feats
    st = GradientStore.create(tmp_path_factory.mktemp("st") / "s", dim=D, spec=SPEC, model="m",
                              checkpoints=[("c0", w[0]), ("c1", w[1])], one_minus_p=True)
    ids = np.arange(N) + 5000
    for a in range(0, N, 150):  # several shards; the scans below use block sizes that cross them
        for c in range(C):
            st.append(ids[a : a + 150], pool[c][a : a + 150], f"c{c}", one_minus_p=q[c, a : a + 150])
    return GradientStore.open(st.root)


def _selector_scores(method, make_pool_features, feats, ids):
    _, tgt, tl, _, w = feats
    pool_features = make_pool_features("adam" if method.startswith("less") else "sgd")  # the kind each expects
    pool = Pool(np.zeros((N, 1)), np.zeros(N, dtype=int), ids=ids, features=pool_features)
    target = Target(np.zeros((T, 1)), tasks=tl, features=MatrixFeatures(tgt, w))
    return get_selector(method).select(pool, 40, target=target)


@pytest.mark.parametrize("source", ["matrix", "store-streamed", "store-reordered"])
def test_selector_and_store_scores_agree(feats, store, source):
    """Selector on in-memory features, on a store streamed (pool = store order) and on store rows reordered to
    a shuffled pool, against the store's own queries: within 1e-5 (TRAK/DsDM relative to their largest score)."""
    pool_f, tgt, tl, q, w = feats
    perm = np.random.default_rng(5).permutation(N) if source == "store-reordered" else np.arange(N)
    ids = perm + 5000

    def pf(kind):
        if source == "matrix":
            return MatrixFeatures(pool_f, w, q=q, kind=kind)
        return StoreFeatures(store, ids, kind=kind)
    # LESS (reference, max over subtasks)
    _, s_store = less_scores(store, tgt, tl, block_rows=77)
    np.testing.assert_allclose(_selector_scores("less", pf, feats, ids).scores, s_store[perm], rtol=0, atol=1e-5)
    # balanced: the same examples in the same take order
    ids_b, _ = less_balanced(store, tgt, tl, 40, block_rows=64)
    np.testing.assert_array_equal(ids[_selector_scores("less-balanced", pf, feats, ids).indices], ids_b)
    # TRAK, with the stored 1 - p
    _, a_store = trak_scores(store, tgt, block_rows=91)
    t_store = a_store.mean(1)[perm]
    scale = np.abs(t_store).max()
    np.testing.assert_allclose(_selector_scores("trak", pf, feats, ids).scores / scale, t_store / scale,
                               rtol=0, atol=1e-5)
    # DsDM
    _, d_store = dsdm_scores(store, tgt, block_rows=200)
    np.testing.assert_allclose(_selector_scores("dsdm", pf, feats, ids).scores / scale, d_store[perm] / scale,
                               rtol=0, atol=1e-5)


def test_trak_uses_stored_one_minus_p_and_warns_without(feats, store, tmp_path):
    pool_f, tgt, _, q, w = feats
    _, with_q = trak_scores(store, tgt)
    plain = GradientStore.create(tmp_path / "plain", dim=D, spec=SPEC, model="m", checkpoints=[("c0", w[0]),
                                                                                              ("c1", w[1])])
    for c in range(C):
        plain.append(np.arange(N) + 5000, pool_f[c], f"c{c}")
    with pytest.warns(scoring.MissingQWarning, match="Q = 1"):
        _, no_q = trak_scores(plain, tgt)
    np.testing.assert_allclose(with_q, no_q * q.astype(np.float64).mean(0)[:, None], rtol=1e-9)


def test_one_minus_p_is_required_checked_and_survives_reopen(feats, store, tmp_path):
    _, _, _, q, _ = feats
    assert store.has_one_minus_p()
    np.testing.assert_allclose(GradientStore.open(store.root).one_minus_p("c1"), q[1], rtol=1e-7)
    with pytest.raises(ValueError, match="one_minus_p"):
        GradientStore.create(tmp_path / "q", dim=4, spec=SPEC, model="m", one_minus_p=True).append(
            np.arange(3), np.ones((3, 4)))
    with pytest.raises(ValueError, match="created without it"):
        GradientStore.create(tmp_path / "nq", dim=4, spec=SPEC, model="m").append(
            np.arange(3), np.ones((3, 4)), one_minus_p=np.full(3, 0.5))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        GradientStore.create(tmp_path / "q", dim=4, spec=SPEC, model="m", one_minus_p=True).append(
            np.arange(3), np.ones((3, 4)), one_minus_p=np.full(3, 1.5))


def test_version1_store_without_q_opens(feats, tmp_path):
    import json

    st = GradientStore.create(tmp_path / "v1", dim=4, spec=SPEC, model="m")
    st.append(np.arange(5), np.ones((5, 4)))
    m = json.loads((st.root / "manifest.json").read_text())
    m["version"] = 1
    del m["one_minus_p"]
    (st.root / "manifest.json").write_text(json.dumps(m))
    old = GradientStore.open(st.root)
    assert not old.has_one_minus_p() and old.one_minus_p() is None


def test_damaged_manifest_claiming_q_is_refused(tmp_path):
    import json

    from leanml.store import StoreError

    st = GradientStore.create(tmp_path / "d", dim=4, spec=SPEC, model="m", one_minus_p=True)
    st.append(np.arange(5), np.ones((5, 4)), one_minus_p=np.full(5, 0.2))
    m = json.loads((st.root / "manifest.json").read_text())
    del m["shards"][0]["files"]["q"]
    (st.root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreError, match="1 - p"):
        GradientStore.open(st.root)


def test_trak_exact_equals_least_squares_influence_and_leave_one_out():
    """Least squares f(x) = theta.x: the gradient of the output is x, the loss's output derivative is the
    residual r_i, and the loss curvature is 1, so TRAK with phi = x (no projection), exact inversion
    (ridge 0) and Q_ii = r_i is the influence function z^T (X^T X)^-1 x_i r_i exactly, and dividing by
    1 - h_ii (leverage) gives the refit leave-one-out change of f(z). Tolerance 1e-8 (float64 rounding)."""
    rng = np.random.default_rng(1)
    n, d = 60, 5
    X = rng.standard_normal((n, d))
    y = X @ rng.standard_normal(d) + 0.3 * rng.standard_normal(n)
    Z = rng.standard_normal((4, d))
    theta = np.linalg.lstsq(X, y, rcond=None)[0]
    r = y - X @ theta
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, tau = scoring.trak(scoring.ArrayBlocks([X], q=r), [Z], ridge=0.0, block_rows=7)
    influence = (Z @ np.linalg.solve(X.T @ X, X.T * r)).T  # [n, T]
    np.testing.assert_allclose(tau, influence, rtol=1e-8, atol=1e-12)
    h = np.einsum("ij,ji->i", X, np.linalg.solve(X.T @ X, X.T))
    loo = np.stack([Z @ (theta - np.linalg.lstsq(np.delete(X, i, 0), np.delete(y, i), rcond=None)[0])
                    for i in range(n)])
    np.testing.assert_allclose(tau / (1 - h)[:, None], loo, rtol=1e-8, atol=1e-10)


def test_round_robin_takes_each_subtask_in_turn_without_repeats():
    per = np.array([[9.0, 8.0], [8.0, 9.0], [7.0, 1.0], [6.0, 0.0], [0.0, 5.0]])
    # subtask 0 best = row 0, subtask 1 best = row 1, then 0 -> row 2, 1 -> row 4 (row 0 taken)
    np.testing.assert_array_equal(scoring.round_robin(per, 4), [0, 1, 2, 4])
    assert sorted(scoring.round_robin(per, 5)) == [0, 1, 2, 3, 4]
    with pytest.raises(scoring.ScoringError, match="budget"):
        scoring.round_robin(per, 6)


def test_zmax_standardizes_each_subtask():
    per = np.array([[10.0, 0.1], [11.0, 0.3], [12.0, 0.2]])
    assert scoring.reduce_subtasks(per, "max").argmax() == 2
    z = scoring.reduce_subtasks(per, "zmax")  # subtask 1's best row (1) ties subtask 0's best (2)
    np.testing.assert_allclose(z[1], z[2])
    with pytest.raises(scoring.ScoringError, match="reduce"):
        scoring.reduce_subtasks(per, "median")


def test_store_select_runs_every_less_variant(feats, store):
    _, tgt, tl, _, _ = feats
    st = GradientStore.open(store.root)
    st.add_task("t", np.stack(tgt), subtasks=tl)
    ids, _ = st.select("t", 30, method="less-balanced")
    np.testing.assert_array_equal(ids, less_balanced(st, tgt, tl, 30)[0])
    ref, _ = st.select("t", 30)
    single, _ = st.select("t", 30, method="less-single")
    assert len(set(ref) | set(single)) > 30  # one task vs the max over three: different picks
    assert len(st.select("t", 0.1, method="less-zmax")[0]) == 40
    with pytest.raises(ValueError, match="method must be one of"):
        st.select("t", 30, method="trak")


def test_default_path_selector_equals_store_extraction(tmp_path):
    """The default path end to end: each selector computes its own features with the library defaults
    (`leanml.grads.defaults`: k, the "auto" projector, seed), and the store is filled by its own extraction
    recipe (`ExtractSpec` with the same defaults) from the selector's warm-up checkpoints; the store's scores
    equal the selector's within 1e-5 for less, less-balanced, trak and dsdm (TRAK/DsDM relative to the largest)."""
    import torch

    from leanml.data import load
    from leanml.grads import defaults
    from leanml.grads.recipes import ExtractSpec
    from leanml.models import build_mlp
    from leanml.select.learner import TorchClassifierLearner, TrainConfig
    from leanml.store.extract import extract

    n, t, hidden = 240, 30, (16,)
    tr, te = load("digits", "train"), load("digits", "test")
    learner = TorchClassifierLearner(lambda s: build_mlp(64, 10, hidden=hidden, seed=0), 10,
                                     TrainConfig(epochs=2, batch_size=64, lr=0.01))
    pool = Pool(tr.X[:n], tr.y[:n], learner=learner, ids=np.asarray(tr.ids[:n]))
    target = Target(X=te.X[:t], y=te.y[:t], tasks=te.y[:t])
    warm = dict(warmup_fraction=0.5, warmup_epochs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", scoring.MissingQWarning)
        sel = {m: get_selector(m, **warm) for m in ("less", "less-balanced", "trak", "dsdm")}
        picks = {m: s.select(pool, 25, target=target) for m, s in sel.items()}
    (cks,) = [v["checkpoints"] for v in pool.cache.values() if isinstance(v, dict) and "checkpoints" in v]
    paths = []
    for i, ck in enumerate(cks):
        paths.append(str(tmp_path / f"ck{i}.pt"))
        torch.save({"model": ck.model_state, "optimizer": ck.optimizer_state}, paths[-1])
    base = dict(dataset="digits", model="mlp", hidden=hidden, checkpoints=paths, weights=[c.lr for c in cks])

    def store_of(name, **kw):
        spec = ExtractSpec(**base, **kw)
        assert (spec.projector, spec.dim) == (defaults.PROJECTOR, defaults.PROJECTION_DIM)
        return extract(spec, tmp_path / name)

    def rows(st):
        return [st.features(c)[1] for c in st.checkpoint_names()]
    # TRAK / DsDM: margin-gradient pool store (factorized by the auto rule) with its 1 - p
    pool_m = store_of("pool-margin", limit=n, output="margin")
    assert pool_m.manifest.spec["projection"]["type"] == "factorized" and pool_m.has_one_minus_p()
    _, a = trak_scores(pool_m, rows(store_of("t-margin", split="test", limit=t, output="margin")))
    scale = np.abs(a.mean(1)).max()
    np.testing.assert_allclose(picks["trak"].scores / scale, a.mean(1) / scale, rtol=0, atol=1e-5)
    _, d = dsdm_scores(pool_m, rows(store_of("t-loss", split="test", limit=t)))
    np.testing.assert_allclose(picks["dsdm"].scores / np.abs(d).max(), d / np.abs(d).max(), rtol=0, atol=1e-5)
    # LESS: Adam pool store (dense by the auto rule), SGD targets paired with it
    pool_a = store_of("pool-adam", limit=n, grad_type="adam")
    assert pool_a.manifest.spec["projection"]["type"] == "dense"
    tgt = rows(store_of("t-sgd", split="test", limit=t, pair_grad_type="adam"))
    _, s = less_scores(pool_a, tgt, te.y[:t])
    np.testing.assert_allclose(picks["less"].scores, s, rtol=0, atol=1e-5)
    ids_b, _ = less_balanced(pool_a, tgt, te.y[:t], 25)
    np.testing.assert_array_equal(np.asarray(tr.ids[:n])[picks["less-balanced"].indices], ids_b)
