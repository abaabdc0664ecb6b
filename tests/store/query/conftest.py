"""A real gradient store for the query tests: digits MLP per-example gradients (dense projection, d = 64,
int8), extracted once per session, with metadata columns for controlled selectivity."""

import numpy as np
import pyarrow as pa
import pytest

from leanml.grads.recipes import ExtractSpec
from leanml.store.extract import extract


@pytest.fixture(scope="session")
def digits_store(tmp_path_factory):
    spec = ExtractSpec(dataset="digits", model="mlp", projector="dense", dim=64, batch_size=128, hidden=(32,),
                       grad_type="sgd")
    st = extract(spec, tmp_path_factory.mktemp("q") / "digits", codec="int8")
    meta = st.sql("select * from metadata")
    rng = np.random.default_rng(0)
    # u: uniform in [0, 1) per row, so "u < p" has selectivity ~p (uncorrelated with the vectors)
    meta = meta.append_column("u", pa.array(rng.random(meta.num_rows)))
    meta = meta.append_column("length", pa.array(rng.integers(10, 1000, meta.num_rows)))
    st.add_metadata(meta)
    return st


@pytest.fixture(scope="session")
def digits_feats(digits_store):
    """(ids, decoded float32 rows) in store order: the brute-force reference's input."""
    return digits_store.features()


@pytest.fixture(scope="session")
def brute_topk():
    return _brute_topk


def _brute_topk(ids, X, Q, k, mask=None):
    """Reference: cosine top-k by numpy over all rows (or the masked ones), ties to the lower position."""
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    S = Qn @ Xn.T
    if mask is not None:
        S[:, ~mask] = -np.inf
    order = np.argsort(-S, axis=1, kind="stable")[:, :k]
    return ids[order], np.take_along_axis(S, order, 1)
