"""`make demo`'s store section: build a small real gradient store, run one cross-algebra query, print its plan.

Digits MLP per-example gradients (dense projection to d = 64, int8) go into ``OUT/store``; the test
split's gradients are the target task, in 10 subtasks (one per digit). The query joins all four algebras:
relational (``where`` over the Parquet metadata, DuckDB), tensor (LESS scores), graph (near-duplicates
collapsed) and relational again (``join`` with the metadata), then ``explain`` shows each operator's
predicted and measured time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def build_demo_store(out: Path) -> Any:
    """The demo's store (reused if present): digits train gradients plus a ``digits-test`` task."""
    import torch

    from leanml.grads.recipes import ExtractSpec
    from leanml.store.extract import extract

    spec = ExtractSpec(dataset="digits", model="mlp", projector="dense", dim=64, batch_size=128, hidden=(32,),
                       grad_type="sgd")
    st = extract(spec, out / "store", codec="int8")
    if "digits-test" not in st.manifest.tasks:
        tspec = ExtractSpec(**{**spec.__dict__, "split": "test", "limit": 200})
        model, _ = tspec.build_model()
        labels = np.asarray(tspec.load_split().y[:200])
        feats = np.stack([torch.cat([gc.features(b) for _, b in tspec.batches()]).numpy()
                          for _, _, gc in tspec.computers(model)])
        st.add_task("digits-test", feats, subtasks=[f"digit-{int(v)}" for v in labels])
    return st


def query_section(out: Path, console: Any) -> None:
    from leanml.store.query import Query

    st = build_demo_store(out)
    q = (Query(st).score("less", target="digits-test").where("label IN (1, 7)")
         .top_fraction(0.2).dedup(0.95).join("metadata", on="id"))
    console.print("Query: LESS scores for the digits test task, only digits 1 and 7, best 20%, near-duplicates "
                  "(cosine > 0.95) collapsed, with their metadata. The plan before running:")
    console.print(q.explain(), markup=False, highlight=False, soft_wrap=True)
    t = q.run()
    console.print("After running (predicted and measured per operator):")
    console.print(q.explain(), markup=False, highlight=False, soft_wrap=True)
    rows = t.sort_by([("score", "descending")]).slice(0, 8).to_pylist()
    console.print(f"{t.num_rows} examples picked; the best 8 (id, label, LESS score, duplicates collapsed into it):")
    for r in rows:
        console.print(f"  id {r['id']:>5}  label {r['label']}  score {r['score']:.4f}  "
                      f"component size {r['component_size']}", markup=False, highlight=False)
