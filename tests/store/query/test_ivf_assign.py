"""`ivf.assign` (the list walk every IVF plan runs) against a per-query loop over fully sorted lists."""

import numpy as np
import pytest

from leanml.store.query import IVF, as_source
from leanml.store.query.ivf import assign, combined_queries


def _walk(ivf: IVF, q: np.ndarray, match_lists: np.ndarray, k: int, nprobe: int) -> list[int]:
    """Lists holding matches, nearest centroid first; take until nprobe are taken and they hold >= k matches."""
    held = [int(i) for i in np.flatnonzero(match_lists)]
    held.sort(key=lambda i: -float(ivf.centroids()[i] @ q))
    taken, got = [], 0
    for i in held:
        if len(taken) >= nprobe and got >= k:
            break
        taken.append(i)
        got += int(match_lists[i])
    return taken


@pytest.mark.parametrize("m,k,nprobe", [(1, 10, 4), (40, 10, 1), (400, 100, 2), (400, 1000, 4), (1348, 10, 200)])
def test_assign_takes_the_nearest_lists_holding_matches_until_k(digits_store, digits_feats, m, k, nprobe):
    src = as_source(digits_store)
    ivf = IVF.build(src, nprobe=8)
    n = len(src.ids())
    rng = np.random.default_rng(m + k)
    pos = np.sort(rng.choice(n, min(m, n), replace=False))
    ml = np.bincount(ivf.list_of[pos], minlength=ivf.index.nlist)
    _, X = digits_feats
    Q = combined_queries(src, [X[rng.choice(len(X), 5)] + 0.01])
    Iq, visited, matched = assign(ivf, Q, ml, k, nprobe)
    sizes = ivf.sizes()
    for qi in range(len(Q)):
        want = _walk(ivf, Q[qi], ml, k, nprobe)
        got = [int(i) for i in Iq[qi] if i >= 0]
        assert got == want
        assert visited[qi] == sizes[want].sum() and matched[qi] == ml[want].sum()
