"""LanceDB as a filtered-search contender for query_bench.py, run in its own environment (LanceDB is not a
leanml dependency): ``python lance_contender.py IN.npz OUT.json``.

IN holds ``X`` (the decoded rows), metadata columns ``u`` and ``v`` and, per cell ``{kind}_{sel}``, the
query rows and the filter column. Table: id, u, v, vector; index IVF_PQ (cosine, num_partitions
= sqrt(n), num_sub_vectors = d / 8: LanceDB's documented defaults for this size); each query is run with
``where(col < sel, prefilter=False)`` (post-filter) and ``prefilter=True``, limit 10, one at a time, at
LanceDB's defaults, and pre-filtered once more tuned for recall (``nprobes(32).refine_factor(10)``: PQ codes
alone cap recall well below 0.95, and refining re-ranks 10 k candidates on the stored vectors).
"""

import json
import sys
import tempfile
import time

import lancedb
import numpy as np
import pyarrow as pa

NPROBES, REFINE = 32, 10


def main() -> None:
    data = np.load(sys.argv[1])
    X = data["X"].astype(np.float32)
    n, d = X.shape
    db = lancedb.connect(tempfile.mkdtemp())
    t = pa.table({"id": np.arange(n), "u": data["u"], "v": data["v"],
                  "vector": pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), d)})
    tbl = db.create_table("t", t)
    t0 = time.perf_counter()
    tbl.create_index(metric="cosine", num_partitions=max(1, int(np.sqrt(n))), num_sub_vectors=max(1, d // 8))
    out = {"build_s": time.perf_counter() - t0, "cells": {}}
    for key in [k for k in data.files if k.startswith("q_")]:
        _, kind, sel = key.split("_")
        col = "u" if kind == "uncorrelated" else "v"
        for mode, pre, tuned in (("lancedb-postfilter", False, False), ("lancedb-prefilter", True, False),
                                 ("lancedb-prefilter-refine", True, True)):
            ids, ts = [], []
            for q in data[key]:
                t0 = time.perf_counter()
                s = tbl.search(q).metric("cosine").where(f"{col} < {sel}", prefilter=pre)
                if tuned:  # tuned for recall: more partitions, and PQ's candidates re-ranked on the full vectors
                    s = s.nprobes(NPROBES).refine_factor(REFINE)
                r = s.limit(10).to_arrow()
                ts.append(time.perf_counter() - t0)
                ids.append(r.column("id").to_pylist())
            out["cells"][f"{mode}|{kind}|{sel}"] = {"ids": ids, "t": ts}
    with open(sys.argv[2], "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
