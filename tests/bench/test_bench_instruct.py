"""The instruct suite's data plumbing and metrics (no model: the LM run is a benchmark, not a test)."""

import numpy as np

from leanml.bench.instruct import _f1, _norm, pool_records, target_and_eval


def test_pool_is_a_seeded_mix_of_the_three_sources():
    sizes = {"n_t0": 6, "n_gsm8k": 3, "n_codealpaca": 2}
    a, b = pool_records(sizes, 0), pool_records(sizes, 0)
    assert a == b and pool_records(sizes, 1) != a
    assert [r["source"] for r in a].count("gsm8k") == 3 and len(a) == 11
    assert all(r["prompt"] and r["completion"] for r in a)


def test_targets_and_eval_items_are_disjoint_per_subtask():
    sizes = {"n_tasks": 2, "per_task": 2, "eval_per_task": 3}
    tgt, tasks, ev = target_and_eval(sizes, 0)
    names, counts = np.unique(tasks, return_counts=True)
    assert len(names) == 6 and set(counts) == {2}  # 2 subtasks x 3 benchmarks, 2 targets each
    assert {n.split("/")[0] for n in names} == {"mmlu", "bbh", "tydiqa"}
    assert len(ev) == 18 and {e["kind"] for e in ev} == {"mmlu", "bbh", "tydiqa"}
    assert not {t["prompt"] for t in tgt} & {e["prompt"] for e in ev}  # evaluation never sees a target example


def test_metrics():
    assert _norm("  The Answer!! ") == "the answer"
    assert _f1("Paris, France", "paris") == 2 * (0.5 * 1) / 1.5
    assert _f1("", "x") == 0.0 and _f1("a b", "a b") == 1.0
