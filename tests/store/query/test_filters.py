"""A filter's cached IVF state (`filters.filter_state`) and the per-SQL cache of `where` (`ops.where_positions`):
reused only for the very read-only array, never for rows that could have changed, and the answers equal the
uncached ones on real features."""

import numpy as np
import pyarrow as pa
import pytest

from leanml.store import GradientStore
from leanml.store.query import IVF, ArraySource, Query, as_source
from leanml.store.query.filters import MAX_ENTRIES, filter_state, frozen
from leanml.store.query.ops import where_positions


@pytest.fixture(scope="module")
def ivf(digits_store):
    return IVF.build(as_source(digits_store), nprobe=8)


def _ro(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.int64)
    a.setflags(write=False)
    return a


def test_state_equals_a_fresh_count_and_bitmap(ivf):
    n = len(ivf.list_of)
    pos = _ro(np.flatnonzero(np.random.default_rng(0).random(n) < 0.1))
    fs = filter_state(ivf, pos)
    assert fs.mask_lists.tolist() == np.bincount(ivf.list_of[pos], minlength=ivf.index.nlist).tolist()
    assert fs.holding == int(np.count_nonzero(fs.mask_lists))
    inside = np.zeros(n, bool)
    inside[pos] = True
    rows = np.array([[-1, 0, 1, 2], [n - 1, int(pos[0]), int(pos[-1]), 5]])
    want = np.where(rows >= 0, inside[np.maximum(rows, 0)], False)
    assert fs.contains(rows).tolist() == want.tolist()
    assert fs.contains(np.arange(n)).tolist() == inside.tolist()


def test_read_only_array_is_reused_writable_is_not(ivf):
    n = len(ivf.list_of)
    ro = _ro(np.arange(0, n, 3))
    assert filter_state(ivf, ro) is filter_state(ivf, ro)
    assert filter_state(ivf, None) is filter_state(ivf, None)
    w = np.arange(0, n, 3)
    first = filter_state(ivf, w)
    assert filter_state(ivf, w) is not first  # writable: its rows could change between calls
    w[:] = 0  # and they do: the next state must describe the new rows
    assert filter_state(ivf, w).mask_lists.sum() == len(w) and filter_state(ivf, w).holding == 1
    # an equal but distinct array is a different key: never answered by another array's entry
    assert filter_state(ivf, _ro(np.arange(0, n, 3))) is not filter_state(ivf, ro)


def test_read_only_view_of_writable_array_is_not_cached(ivf):
    base = np.arange(0, len(ivf.list_of), 2)
    view = base[:]
    view.setflags(write=False)
    assert not frozen(view) and frozen(_ro(base))
    assert filter_state(ivf, view) is not filter_state(ivf, view)


def test_cache_is_bounded(ivf):
    keep = [_ro(np.arange(i, len(ivf.list_of), 7)) for i in range(MAX_ENTRIES + 3)]
    for a in keep:
        filter_state(ivf, a)
    assert len(ivf._filters) <= MAX_ENTRIES
    assert any(s.positions is keep[-1] for s in ivf._filters.values())  # the newest kept, the oldest dropped
    assert not any(s.positions is keep[0] for s in ivf._filters.values())


def test_where_positions_cached_per_sql_and_read_only(digits_feats):
    ids, X = digits_feats
    src = ArraySource(X, ids, metadata={"id": ids, "even": ids % 2 == 0})
    a, hit_a = where_positions(src, "even", "1 where")
    b, hit_b = where_positions(src, "even", "1 where")
    assert (hit_a, hit_b) == (False, True) and a is b and not a.flags.writeable
    assert src.ids()[a].tolist() == sorted(int(i) for i in ids if i % 2 == 0)
    c, _ = where_positions(src, "not even", "1 where")
    assert len(np.intersect1d(a, c)) == 0 and len(a) + len(c) == len(ids)


def test_repeated_filtered_queries_equal_the_uncached_answer(digits_store, digits_feats, ivf):
    """A Query reused with one filter answers from the cached state exactly as a first call does."""
    ids, X = digits_feats
    Q = X[[3, 30, 300]] + 0.01
    fresh = as_source(digits_store)
    fresh.__dict__.pop("_where_cache", None)
    ivf.__dict__.pop("_filters", None)
    for plan in ("ivf-bitmap", "ivf-postfilter"):  # forced: the IVF plans are the ones that use the state
        ivf.__dict__.pop("_filters", None)
        runs = [Query(digits_store, index=ivf).where("u < 0.5").nearest(Q, 10, recall=0.95, plan=plan).run()
                for _ in range(3)]
        assert len(ivf._filters) == 1
        for t in runs[1:]:
            assert t.column("id").to_pylist() == runs[0].column("id").to_pylist()
        text = Query(digits_store, index=ivf).where("u < 0.5").nearest(Q, 10, recall=0.95, plan=plan).explain()
        assert "cache of this SQL" in text and "reused from an earlier query" in text


def test_metadata_change_is_seen_by_where(tmp_path, digits_feats):
    """The where cache lives on the source, and a store's source is rebuilt when its generation changes."""
    ids, X = digits_feats
    st = GradientStore.create(tmp_path / "s", dim=X.shape[1], codec="fp16", spec={"p": 1}, model="m",
                              checkpoints=[("c0", 1.0)])
    st.append(ids, X, "c0")
    st.add_metadata(pa.table({"id": ids, "flag": ids < 100}))
    assert Query(st).where("flag").run().num_rows == int((ids < 100).sum())
    st.add_metadata(pa.table({"id": ids, "flag": ids < 10}))
    assert Query(st).where("flag").run().num_rows == int((ids < 10).sum())


def test_planner_adds_the_filter_state_cost_only_while_it_is_not_built(digits_store, ivf):
    from leanml.store.query.calibration import operator_costs
    from leanml.store.query.physical import plan_nearest

    src = as_source(digits_store)
    cal = operator_costs(src, ivf, "dev_vm")
    ro = _ro(np.flatnonzero(np.random.default_rng(3).random(len(src.ids())) < 0.5))
    qs = [src.read(c, np.array([3])) + 1e-3 for c in src.checkpoint_names()]

    def plan() -> tuple[dict, dict]:
        cands, facts = plan_nearest(src, ro, qs, 10, host="dev_vm", recall=0.95, ivf=ivf, calibration=cal,
                                    cost_all=True)
        return {c.name: c.predicted_s for c in cands}, facts

    first, f1 = plan()
    filter_state(ivf, ro).build()  # what the first query's IVF run leaves behind
    again, f2 = plan()
    assert f1["filter_state"] == "built in this call" and f1["filter_state_s"] > 0
    assert f2["filter_state"] == "cached" and f2["filter_state_s"] == 0
    for name in ("ivf-bitmap", "ivf-postfilter"):
        assert first[name] == pytest.approx(again[name] + f1["filter_state_s"])
    assert first["exact-filtered"] == again["exact-filtered"]  # the exact scan needs no filter state
