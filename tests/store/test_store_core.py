"""Store: append/resume without duplicates, verify catches corruption, mismatches are refused, queries are exact."""

import json

import numpy as np
import pytest

from leanml.store import FaissIndex, GradientStore, StoreError, StoreMismatchError, recall_at_k
from leanml.store.search import less_scores, topk, trak_scores

SPEC = {"projection": {"type": "dense", "kind": "rademacher", "dim": 32, "seed": 0}}


def make(tmp_path, codec="fp32", ckpts=(("c0", 1.0),), dim=32, **kw):
    return GradientStore.create(tmp_path / "s", dim=dim, codec=codec, spec=SPEC, model="m1", checkpoints=ckpts, **kw)


def test_append_skips_committed_and_reads_back(tmp_path):
    st = make(tmp_path)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 32)).astype(np.float32)
    assert st.append(np.arange(30), x[:30]) == 30
    assert st.append(np.arange(20, 50), x[20:]) == 20  # 20..29 already committed
    st2 = GradientStore.open(tmp_path / "s")
    ids, feats = st2.features()
    np.testing.assert_array_equal(ids, np.arange(50))
    np.testing.assert_array_equal(feats, x)
    assert st2.verify() == []
    with pytest.raises(ValueError, match="NaN"):
        st.append([99], np.full((1, 32), np.nan, np.float32))


def test_reader_sees_only_committed(tmp_path):
    st = make(tmp_path)
    st.append(np.arange(10), np.ones((10, 32), np.float32))
    reader = GradientStore.open(tmp_path / "s")
    st.append(np.arange(10, 20), np.ones((10, 32), np.float32))
    assert reader.n_rows() == 10  # its snapshot
    assert reader.refresh().n_rows() == 20


def test_verify_catches_corruption(tmp_path):
    st = make(tmp_path, codec="int8")
    st.append(np.arange(40), np.random.default_rng(1).standard_normal((40, 32)).astype(np.float32))
    assert st.verify() == []
    f = tmp_path / "s" / st.manifest.shards[0].files["codes"]
    b = bytearray(f.read_bytes())
    b[-5] ^= 0xFF
    f.write_bytes(bytes(b))
    problems = GradientStore.open(tmp_path / "s").verify()
    assert len(problems) == 1 and "checksum mismatch" in problems[0]


def test_mismatch_refused(tmp_path):
    st = make(tmp_path)
    with pytest.raises(StoreMismatchError, match="dim"):
        st.append([1], np.zeros((1, 16), np.float32))
    with pytest.raises(StoreMismatchError, match="model fingerprint"):
        GradientStore.create(tmp_path / "s", dim=32, spec=SPEC, model="other")
    other = {"projection": {**SPEC["projection"], "seed": 1}}
    with pytest.raises(StoreMismatchError, match="projection"):
        GradientStore.create(tmp_path / "s", dim=32, spec=other, model="m1")
    st.set_fingerprint("c0", "w-a")
    st.append([1], np.zeros((1, 32), np.float32))
    st2 = GradientStore.open(tmp_path / "s")
    with pytest.raises(StoreMismatchError, match="weights"):
        st2.set_fingerprint("c0", "w-b")
    with pytest.raises(StoreMismatchError, match="weights"):
        st2.add_task("t", np.zeros((2, 32), np.float32), fingerprints=["w-b"])
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    m["version"] = 99
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreError, match="version"):
        GradientStore.open(tmp_path / "s")


def _two_ckpt_store(tmp_path, n=500, d=32, codec="fp32"):
    rng = np.random.default_rng(2)
    st = make(tmp_path, codec=codec, ckpts=(("c0", 0.7), ("c1", 0.3)), dim=d)
    X = rng.standard_normal((2, n, d)).astype(np.float32)
    for a in range(0, n, 128):
        st.append(np.arange(a, min(n, a + 128)) + 1000, X[0, a : a + 128], "c0")
        st.append(np.arange(a, min(n, a + 128)) + 1000, X[1, a : a + 128], "c1")
    return st, X


def _cos(a, b):
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)) @ (b / np.linalg.norm(b, axis=-1, keepdims=True)).T


def test_topk_and_less_match_brute_force(tmp_path):
    st, X = _two_ckpt_store(tmp_path)
    Q = np.random.default_rng(3).standard_normal((2, 6, 32)).astype(np.float32)
    full = 0.7 * _cos(X[0], Q[0]) + 0.3 * _cos(X[1], Q[1])  # [N, 6]
    ids, scores = topk(st, Q, 5, block_rows=77)  # odd block size crosses shard boundaries
    want = np.argsort(-full, axis=0)[:5].T + 1000
    np.testing.assert_array_equal(ids, want)
    np.testing.assert_allclose(scores, -np.sort(-full, axis=0)[:5].T, rtol=1e-5)
    sub = np.array([0, 0, 1, 1, 1, 2])
    lid, ls = less_scores(st, Q, sub, block_rows=100)
    naive = np.stack([full[:, sub == s].mean(1) for s in range(3)], 1).max(1)
    np.testing.assert_array_equal(lid, np.arange(500) + 1000)
    np.testing.assert_allclose(ls, naive, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("small", [True, False], ids=["numpy-small", "torch-blocks"])
@pytest.mark.parametrize("metric,excl,k", [("cosine", None, 5), ("ip", None, 5), ("cosine", [1003, 1010], 7),
                                          ("cosine", None, 600)])
def test_both_topk_paths_match_brute_force(tmp_path, monkeypatch, small, metric, excl, k):
    """`topk` scores a few rows in NumPy and more through the torch block scan: both give brute force's answer."""
    from leanml.store import search

    monkeypatch.setattr(search, "SMALL_ROWS", 10**9 if small else 0)
    st, X = _two_ckpt_store(tmp_path)
    Q = np.random.default_rng(5).standard_normal((2, 4, 32)).astype(np.float32)
    sim = _cos if metric == "cosine" else (lambda a, b: a @ b.T)
    full = 0.7 * sim(X[0], Q[0]) + 0.3 * sim(X[1], Q[1])  # [N, 4]
    if excl is not None:
        full[np.array(excl) - 1000] = -np.inf
    ids, scores = topk(st, Q, k, metric=metric, block_rows=77, exclude_ids=excl)
    kk = min(k, len(full))
    want = np.argsort(-full, axis=0, kind="stable")[:kk].T + 1000
    assert ids.shape == (4, kk)
    finite = np.isfinite(-np.sort(-full, axis=0)[:kk].T)
    np.testing.assert_array_equal(ids[finite], want[finite])
    np.testing.assert_allclose(scores, -np.sort(-full, axis=0)[:kk].T, rtol=1e-5, atol=1e-6)


def test_trak_matches_closed_form(tmp_path):
    st, X = _two_ckpt_store(tmp_path, n=300, d=16)
    Q = np.random.default_rng(4).standard_normal((2, 3, 16)).astype(np.float32)
    _, s = trak_scores(st, Q, ridge=1e-3)
    want = 0
    for c in range(2):
        K = X[c].astype(np.float64).T @ X[c]
        lam = 1e-3 * np.trace(K) / 16
        want = want + 0.5 * X[c] @ np.linalg.solve(K + lam * np.eye(16), Q[c].T.astype(np.float64))
    np.testing.assert_allclose(s, want, rtol=1e-3, atol=1e-5)


def test_tasks_explain_nshot(tmp_path):
    st, X = _two_ckpt_store(tmp_path)
    st.add_metadata({"id": np.arange(500) + 1000, "text": [f"ex{i}" for i in range(500)]})
    # a task whose examples are exact copies of stored rows 7 and 9
    st.add_task("copy", X[:, [7, 9]], ids=[1007, 1009], subtasks=["a", "b"])
    st2 = GradientStore.open(tmp_path / "s")
    ex = st2.explain(("copy", 0), k=3)
    assert ex[0]["id"] == 1007 and ex[0]["text"] == "ex7" and ex[0]["score"] == pytest.approx(1.0, abs=1e-5)
    shots = st2.nshot(("copy", 1), k=3)
    assert len(shots) == 3 and 1009 not in [s["id"] for s in shots]  # own id excluded
    assert shots[-1]["score"] >= shots[0]["score"]  # most similar last
    sel, _ = st2.select("copy", 10)
    assert {1007, 1009} <= set(sel.tolist())  # LESS: each subtask's own example scores 1 * (weights sum 1)
    assert st2.sql("select count(*) as n from metadata where text like 'ex1%'").column("n")[0].as_py() == 111
    assert st2.verify() == []


def test_faiss_recall(tmp_path):
    st, X = _two_ckpt_store(tmp_path, n=2000)
    Q = np.random.default_rng(5).standard_normal((2, 20, 32)).astype(np.float32)
    exact, _ = topk(st, Q, 10)
    flat, _ = FaissIndex(st, "flat").search(Q, 10)
    assert recall_at_k(flat, exact) == 1.0  # the combined-vector construction is exact
    ivf, _ = FaissIndex(st, "ivf", nprobe=32).search(Q, 10)
    assert recall_at_k(ivf, exact) >= 0.8


def test_parts_merge_without_copy(tmp_path):
    st = make(tmp_path)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((60, 32)).astype(np.float32)
    a = GradientStore.open(tmp_path / "s", part="w000")
    b = GradientStore.open(tmp_path / "s", part="w001")
    a.append(np.arange(30), x[:30])
    b.append(np.arange(30, 60), x[30:])
    assert GradientStore.open(tmp_path / "s").n_rows() == 0  # not merged yet
    files_before = {p.name for p in (tmp_path / "s" / "shards").rglob("*.npy")}
    assert st.merge_parts() == 2
    assert {p.name for p in (tmp_path / "s" / "shards").rglob("*.npy")} == files_before
    ids, feats = GradientStore.open(tmp_path / "s").features()
    np.testing.assert_array_equal(ids, np.arange(60))
    np.testing.assert_array_equal(feats, x)
    c = GradientStore.open(tmp_path / "s", part="w002")
    c.append([5], x[5:6])  # overlaps the merged rows
    assert c.n_rows() == 60  # skipped: id 5 is committed
