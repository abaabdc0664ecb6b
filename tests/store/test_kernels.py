"""`leanml.store.kernels` (compiled planning loops) against plain NumPy references, ties included."""

import numpy as np
import pytest

from leanml.store import kernels

RNG = np.random.default_rng(0)


def _lists(L: int) -> tuple[np.ndarray, np.ndarray]:
    sizes = RNG.integers(1, 40, L)
    return sizes, np.where(RNG.random(L) < 0.3, 0, np.minimum(sizes, RNG.integers(0, 12, L)))


def _walk_ref(s: np.ndarray, match_lists: np.ndarray, k: int, nprobe: int) -> list[int]:
    """The walk by whole-array NumPy: the lists holding matches in (similarity desc, list number) order, a
    prefix of max(nprobe, lists to reach k matches) of them (all, if they hold fewer than k)."""
    held = np.flatnonzero(match_lists)
    order = held[np.lexsort((held, -s[held]))]
    reach = np.cumsum(match_lists[order])
    width = max(min(nprobe, len(order)), min(int(np.searchsorted(reach, k)) + 1, len(order)))
    return order[:width].tolist()


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("k,nprobe", [(5, 1), (40, 2), (400, 4), (10, 100)])
def test_walk_takes_the_nearest_lists_holding_matches_until_k(ties, k, nprobe):
    L = 300
    sizes, ml = _lists(L)
    S = RNG.standard_normal((6, L)).astype(np.float32)
    if ties:
        S = np.round(S, 1)  # many equal similarities: the order falls back to the list number
    Iq, visited, matched, mixed, k_prime, short, v_tot, m_tot = kernels.walk(S, sizes, ml, k, nprobe, k)
    for i in range(len(S)):
        want = _walk_ref(S[i], ml, k, nprobe)
        assert [j for j in Iq[i].tolist() if j >= 0] == want
        assert visited[i] == sizes[want].sum() and matched[i] == ml[want].sum()
    walked = [j for j in Iq.ravel().tolist() if j >= 0]
    assert mixed == sum(min(ml[j], sizes[j] - ml[j]) for j in walked)
    assert short == int((matched < k).sum()) and (v_tot, m_tot) == (visited.sum(), matched.sum())
    frac = np.maximum(matched, 1) / np.maximum(visited, 1)
    assert k_prime.tolist() == np.minimum(visited, np.ceil(1.5 * k / frac)).astype(np.int64).tolist()


@pytest.mark.parametrize("ties", [False, True])
def test_coarse_stats_equal_the_numpy_local_selectivity_and_difficulty_bands(ties):
    L, tie_share, edges = 200, 0.1, np.array([3.0, 8.0, 20.0])
    sizes, ml = _lists(L)
    S = RNG.standard_normal((16, L)).astype(np.float32)
    if ties:
        S = np.round(S, 1)
    sel, counts = kernels.coarse_stats(S, sizes, ml, 4, tie_share, edges)
    glob = ml.sum() / sizes.sum()
    local = []
    for s in S:
        near = np.lexsort((np.arange(L), -s))[:4]  # the 4 nearest, ties by list number
        rows, got = sizes[near].sum(), ml[near].sum()
        expect = glob * rows
        local.append(got / max(rows, 1) if got < expect - 3 * np.sqrt(expect * (1 - glob)) else glob)
    assert sel == pytest.approx(min(local), abs=1e-12)
    top, med = S.max(1), np.partition(S, L // 2, axis=1)[:, L // 2]
    diff = ((top - np.float32(tie_share) * (top - med))[:, None] <= S).sum(1)
    assert kernels.difficulty(S, tie_share).tolist() == diff.tolist()
    assert counts.tolist() == np.bincount(np.searchsorted(edges, diff, side="right"), minlength=4).tolist()
    Q, C = RNG.standard_normal((3, 24)).astype(np.float32), RNG.standard_normal((L, 24)).astype(np.float32)
    S2, sel2, counts2 = kernels.coarse(Q, C, sizes, ml, 4, tie_share, edges)
    np.testing.assert_allclose(S2, Q @ C.T, rtol=1e-5, atol=1e-5)
    sel3, counts3 = kernels.coarse_stats(S2, sizes, ml, 4, tie_share, edges)
    assert sel2 == sel3 and counts2.tolist() == counts3.tolist()


@pytest.mark.parametrize("nq", [1, kernels.SMALL_BATCH + 1])
def test_centroid_sims_is_the_matmul_on_both_paths(nq):
    Q, C = RNG.standard_normal((nq, 40)).astype(np.float32), RNG.standard_normal((70, 40)).astype(np.float32)
    np.testing.assert_allclose(kernels.centroid_sims(Q, C), Q @ C.T, rtol=1e-5, atol=1e-5)


def test_first_kept_equals_the_stable_numpy_selection():
    n, kp, kk = 500, 30, 10
    keep = RNG.random(n) < 0.2
    bits = np.packbits(keep, bitorder="little")
    pos = RNG.integers(-1, n, (5, kp))
    sc = -np.sort(RNG.random((5, kp)), axis=1).astype(np.float32)
    ids = RNG.permutation(n) + 1000
    s, p, out, short = kernels.first_kept(sc, pos, bits, kk, ids)
    ok = (pos >= 0) & keep[np.maximum(pos, 0)]
    first = np.argsort(~ok, axis=1, kind="stable")[:, :kk]
    hit = np.take_along_axis(ok, first, 1)
    assert p.tolist() == np.where(hit, np.take_along_axis(pos, first, 1), -1).tolist()
    assert s.tolist() == np.where(hit, np.take_along_axis(sc, first, 1), -np.inf).tolist()
    assert out.tolist() == np.where(p >= 0, ids[np.maximum(p, 0)], -1).tolist()
    assert short == int((~hit).any(1).sum())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unit_rows_into_writes_scaled_unit_rows_at_the_column(dtype):
    x = RNG.standard_normal((7, 5)).astype(dtype)
    x[3] = 0  # a zero row stays zero
    out = np.full((7, 9), 9.0, np.float32)
    kernels.unit_rows_into(x, 2.0, out, 3)
    want = 2.0 * x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
    np.testing.assert_allclose(out[:, 3:8], want, rtol=1e-6, atol=1e-7)
    assert (out[:, :3] == 9).all() and (out[:, 8:] == 9).all()
