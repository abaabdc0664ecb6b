"""Data selection cost study as a benchmark: run a suite's grid, print its table and headline JSON.

    python benchmarks/selection_study.py --quick            # quick suite, 10 epochs (< 1 min on 2 cores)
    python benchmarks/selection_study.py --suite quick      # the full quick suite (what `make demo` runs)
    python benchmarks/selection_study.py --suite cifar10 --size pool_size=10000 --size epochs=5
    python benchmarks/selection_study.py --suite quick --codec int4 --methods random,less-balanced,trak

Headline (last stdout line, also benchmarks/results/selection_study.json, or selection_study-<suite>.json for
other suites): per budget, the best method's accuracy and total cost against random's, the full-data reference,
and each LESS variant's accuracy against random's with 95% intervals (t over seeds; the difference is paired by
seed, the same pool and test set for both). ``--codec`` holds the gradient selectors' pool features as a store of
that codec would (`leanml.store.codecs` round trip; LESS variants, TRAK, DsDM); its results go to
selection_study-<suite>-<codec>.json. ``--compare-codecs DIR_A,DIR_B`` (two finished ``--out`` directories, the first
the reference, e.g. fp32's) prints each method's accuracy under both and the seed-paired difference B - A with its
95% interval, and saves it to selection_study-<suite>-compare-<A>-<B>.json (A, B: the directories' names).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console

from leanml.bench import plan_study, run_study, summarize, write_report
from leanml.bench.suites import LESS_VARIANTS, VARIANTS
from leanml.cli.study_cmd import summary_table
from leanml.io import atomic_write_text

GRADIENT_METHODS = (*LESS_VARIANTS, "trak", "dsdm")  # the selectors that score stored gradient features


def headline(rows: list[dict]) -> dict:
    summ = summarize(rows)
    full = next((r for r in summ if r["method"] == "full"), None)
    out: dict = {"suite": rows[0]["suite"], "full_accuracy": full and full["accuracy"],
                 "full_total_wall_s": full and full["total_wall_s"], "budgets": {}}
    for b in sorted({r["budget"] for r in summ if r["method"] != "full"}):
        at = [r for r in summ if r["budget"] == b and r["method"] != "full"]
        best = max(at, key=lambda r: r["accuracy"])
        rnd = next((r for r in at if r["method"] == "random"), None)
        out["budgets"][str(b)] = {
            "best_method": best["method"], "best_accuracy": best["accuracy"],
            "best_select_wall_s": best["select_wall_s"], "best_total_wall_s": best["total_wall_s"],
            "random_accuracy": rnd and rnd["accuracy"], "random_total_wall_s": rnd and rnd["total_wall_s"],
            "methods_beating_random": sorted(r["method"] for r in at if rnd and r["accuracy"] > rnd["accuracy"]),
        }
    out["less_variants"] = less_vs_random(rows)
    return out


def _mean_ci(v: list[float]) -> dict:
    """Mean and 95% t-interval half-width over seeds (None with one seed)."""
    from scipy import stats

    a = np.asarray(v, dtype=float)
    hw = None if len(a) < 2 else float(stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / np.sqrt(len(a)))
    return {"mean": float(a.mean()), "ci95": hw, "seeds": len(a)}


def less_vs_random(rows: list[dict]) -> dict:
    """Per budget and LESS variant: accuracy, random's, and the seed-paired difference, each with its 95% interval."""
    out: dict = {}
    for b in sorted({r["budget"] for r in rows if r["method"] == "random"}):
        rnd = {r["seed"]: r["accuracy"] for r in rows if r["method"] == "random" and r["budget"] == b}
        for m in VARIANTS:
            acc = {r["seed"]: r["accuracy"] for r in rows if r["method"] == m and r["budget"] == b}
            seeds = sorted(set(acc) & set(rnd))
            if not seeds:
                continue
            out.setdefault(str(b), {})[m] = {
                "variant": VARIANTS[m], "accuracy": _mean_ci([acc[s] for s in seeds]),
                "random": _mean_ci([rnd[s] for s in seeds]),
                "minus_random": _mean_ci([acc[s] - rnd[s] for s in seeds])}
    return out


def compare_codecs(suite: str, dirs: list[Path]) -> None:
    """Per method and budget: accuracy under codec A and B, and B - A paired by seed (95% t-intervals)."""
    from leanml.bench.results import ResultTable

    if len(dirs) != 2:
        raise SystemExit("--compare-codecs: give exactly two --out directories, DIR_A,DIR_B")
    runs = []
    for d in dirs:
        files = sorted(d.glob("*.parquet")) + sorted(d.glob("**/results.parquet"))
        if not files:
            raise SystemExit(f"--compare-codecs: no results in {d}; run --codec ... --out {d} first")
        runs.append({(r["method"], r["budget"], r["seed"]): r["accuracy"] for r in ResultTable(files[0]).rows()})
    names = [d.name for d in dirs]
    out: dict = {"suite": suite, "reference": names[0], "other": names[1], "budgets": {}}
    print(f"{'budget':>6} | {'method':>14} | {names[0]:>22} | {names[1]:>22} | {'difference (paired)':>24}")
    for key in sorted({(m, b) for m, b, _ in runs[0]} & {(m, b) for m, b, _ in runs[1]}, key=lambda k: (k[1], k[0])):
        m, b = key
        seeds = sorted(set.intersection(*({s for mm, bb, s in r if (mm, bb) == key} for r in runs)))
        A = [runs[0][(m, b, s)] for s in seeds]
        B = [runs[1][(m, b, s)] for s in seeds]
        cell = {"a": _mean_ci(A), "b": _mean_ci(B), "b_minus_a": _mean_ci([y - x for x, y in zip(A, B, strict=True)])}
        out["budgets"].setdefault(str(b), {})[m] = cell

        def f(c: dict) -> str:
            return f"{c['mean']:.3f}" + ("" if c["ci95"] is None else f" ± {c['ci95']:.3f}") + f" (n={c['seeds']})"
        print(f"{b:>6g} | {m:>14} | {f(cell['a']):>22} | {f(cell['b']):>22} | {f(cell['b_minus_a']):>24}")
    name = f"selection_study-{suite}-compare-{names[0]}-{names[1]}.json"
    atomic_write_text(Path(__file__).parent / "results" / name, json.dumps(out, indent=1))
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="quick suite with 10 epochs (same code path)")
    ap.add_argument("--suite", default="quick")
    ap.add_argument("--size", action="append", default=[], help="KEY=VALUE suite size parameter")
    ap.add_argument("--seeds", default="", help="comma-separated seeds (default: the suite's)")
    ap.add_argument("--methods", default="", help="comma-separated method ids (default: the suite's)")
    ap.add_argument("--codec", default=None, help="store codec the gradient selectors' pool features pass through "
                    "(fp32, int8, int4, int2, ...; default: none, float32 as computed)")
    ap.add_argument("--compare-codecs", default=None, metavar="DIR_A,DIR_B",
                    help="compare two finished --codec runs (their --out directories) instead of running")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    if a.compare_codecs:
        compare_codecs(a.suite, [Path(d) for d in a.compare_codecs.split(",")])
        return
    sizes = dict(s.split("=", 1) for s in a.size)
    if a.quick:
        sizes.setdefault("epochs", "10")
    out = a.out or Path(tempfile.mkdtemp(prefix="leanml-selection-study-"))
    plan = plan_study(a.suite, sizes=sizes, out=out, seeds=[int(x) for x in a.seeds.split(",") if x] or None,
                      methods=[m for m in a.methods.split(",") if m] or None)
    if a.codec:
        from leanml.store.codecs import get_codec

        try:
            get_codec(a.codec)
        except ValueError as e:
            raise SystemExit(f"--codec: {e}") from None
        mp = {m: ({**p, "codec": a.codec} if m in GRADIENT_METHODS else p)
              for m, p in plan.suite.method_params.items()}
        plan = dataclasses.replace(plan, suite=dataclasses.replace(plan.suite, method_params=mp))
    console = Console()
    rows = run_study(plan, log=lambda s: console.print(s, markup=False, highlight=False))
    console.print(summary_table(rows, f"selection study: {a.suite}"))
    write_report(rows, out, title=a.suite, command="python benchmarks/selection_study.py " +
                 (" --quick" if a.quick else "") + f" --suite {a.suite}")
    h = headline(rows)
    h["results"] = str(plan.results_path)
    name = "selection_study.json" if a.suite == "quick" else f"selection_study-{a.suite}.json"
    if a.codec:
        h["codec"] = a.codec
        name = f"selection_study-{a.suite}-{a.codec}.json"
    atomic_write_text(Path(__file__).parent / "results" / name, json.dumps(h, indent=1))
    print(json.dumps(h))


if __name__ == "__main__":
    main()
