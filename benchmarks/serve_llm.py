"""LLM serving on this CPU: continuous batching against one-at-a-time, and every SmolLM2 variant's quality vs speed.

1. **Batching** (same model, SmolLM2-135M float32, same requests, the same runtime path: admission,
   queue, metrics): ``n`` requests (MMLU-dev questions as chat prompts, seeded; ``max_new_tokens`` drawn
   from a range, end-of-sequence suppressed until then so every system generates the same tokens) arrive
   at once, with the same SLO (no deadline: nothing is dropped; every figure counts every request):

   * ``one_at_a_time``: the iteration-level engine with one row (`batching.max_batch = 1`): each request
     prefills and decodes alone; it reports TTFT and TPOT like the CB run, so the two are comparable;
   * ``hf_sequential``: the runtime's classic path, transformers ``generate`` one request per call;
   * ``hf_static_R``: the classic path with dynamic batching (up to R requests per ``generate`` call,
     left-padded; the batch runs until its longest request is done): the strongest baseline available
     here (transformers' own generate; vLLM/TGI do not run on this CPU-only machine);
   * ``continuous_R``: continuous batching, R rows, a 128-token prefill budget per iteration.

   Full run: 32 requests, 16-64 new tokens, R = 16; ``--quick``: 4 requests, 3-6 tokens, R = 4.
   Tokens/s = generated tokens / (last answer - first arrival). TTFT and TPOT per request (CB engine
   runs; the ``generate`` paths only return whole answers: e2e latency only). ``cb_speedup`` =
   continuous_R tokens/s / one_at_a_time tokens/s (target >= 3x at equal or better p99 TTFT).
2. **Variants**: fp32; weight-only int8_wo (per-channel int8), int4_wo (int4, group 32, lm_head int8) and
   int4_wo_g64 (group 64), all with bf16 activations; int8_wo_f32 / int4_wo_f32 (the same int8 and int4 g32
   weights in a float32 model: bf16 only into each linear, lm_head bf16); torchao_int8wo (the peer's weight-only int8);
   bf16; int8 (dynamic, per-tensor); int8_sq (SmoothQuant + per-channel int8, down_proj and lm_head
   float); int8_sq_head (int8_sq with lm_head untied, smoothed and int8) and pruned (30% magnitude):
   perplexity and KL to fp32 on held-out Wikipedia passages, SST-2 accuracy by choice
   log-likelihood (n, 95% CI), greedy-text fidelity to fp32 (secondary), and decode speed (one decode
   step of the CB engine at 1 and 8 rows, median of 5 rounds that time every variant in turn;
   ``--section timing`` re-times the variants in the results file and keeps their quality;
   ``--section variants --variants A,B --keep-others`` measures A and B and keeps the file's other rows, each
   marked with ``quality_from``; re-time them all with ``--section timing`` after).
   ``best_variant`` = the fastest (8 rows) whose perplexity is within 2% of fp32's and SST-2 accuracy
   within 1 point; ``best_variant_speedup`` is its speedup, ``best_variant_ppl_increase_pct`` its
   perplexity increase, ``best_variant_sst2_delta_points`` its SST-2 change (paired CI over the same
   872 GLUE-dev sentences in the table). ``--quick`` tables fp32 and
   int4_wo_f32 only, on 4 passages and 8 sentences.

    OMP_NUM_THREADS=1 flock -w 900 /tmp/leanml-bench.lock python benchmarks/serve_llm.py --quick
    OMP_NUM_THREADS=1 flock -w 900 /tmp/leanml-bench.lock python benchmarks/serve_llm.py --section batching
    OMP_NUM_THREADS=1 flock -w 900 /tmp/leanml-bench.lock python benchmarks/serve_llm.py --section variants
    OMP_NUM_THREADS=1 flock -w 900 /tmp/leanml-bench.lock python benchmarks/serve_llm.py --section timing

One torch thread (``torch.set_num_threads(1)``): the machine's 2 cores are shared. The last line is the
headline JSON, also written (atomic) to benchmarks/results/serve_llm.json, or serve_llm_quick.json with
``--quick``; one ``--section`` keeps the other section's figures from that file. The load averages at the
start and end of each section are recorded. Replay keys (goodput_*, sim_p99_error) are added by the
replay benchmark, not here.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from leanml.io import atomic_write_text
from leanml.serve.variants.llm_quality import paired_delta

RESULTS = Path(__file__).parent / "results" / "serve_llm.json"
RESULTS_QUICK = Path(__file__).parent / "results" / "serve_llm_quick.json"
FULL_VARIANTS = ("fp32,int8_wo,int4_wo,int4_wo_g64,int8_wo_f32,int4_wo_f32,torchao_int8wo,bf16,int8,int8_sq,"
                 "int8_sq_head,pruned")
QUICK_VARIANTS = "fp32,int4_wo_f32"  # the reference and the best variant of the full run: --quick < ~1 min
PPL_BOUND_PCT, SST2_BOUND_POINTS = 2.0, 1.0  # the quality bar for best_variant


def _pct(x: list[float], q: float) -> float | None:
    return round(float(np.percentile(x, q)), 2) if x else None


def _requests(n: int, lo: int, hi: int, seed: int = 0) -> list[tuple[str, int]]:
    from leanml.data import load

    qs = [r["question"] for r in load("mmlu", "dev").records]
    rng = np.random.default_rng(seed)
    return [(qs[int(i)], int(m)) for i, m in zip(rng.integers(0, len(qs), n), rng.integers(lo, hi + 1, n),
                                                    strict=True)]


async def _serve(variant, batching, reqs) -> dict[str, Any]:
    from leanml.serve.dataplane.runtime import Runtime

    rt = Runtime(threads=1)
    rt.add_deployment("lm", {variant.name: variant}, "static", {"variant": variant.name}, batching=batching)
    await rt.start()
    t0 = time.perf_counter()
    outs = await asyncio.gather(*[rt.submit("lm", p, knobs={"max_new_tokens": m, "min_new_tokens": m})
                                  for p, m in reqs])
    wall = time.perf_counter() - t0
    await rt.stop()
    ok = [o for o in outs if o.status == 200]
    ttft = [o.output["ttft_ms"] for o in ok if "ttft_ms" in o.output]
    tpot = [o.output["tpot_ms"] for o in ok if o.output.get("tpot_ms") is not None]
    e2e = [o.queue_ms + o.model_ms for o in ok]
    toks = sum(m for (_, m), o in zip(reqs, outs, strict=True) if o.status == 200)
    return {"requests": len(reqs), "answered": len(ok), "tokens": toks, "wall_s": round(wall, 2),
            "tokens_per_s": round(toks / wall, 2), "ttft_p50_ms": _pct(ttft, 50), "ttft_p99_ms": _pct(ttft, 99),
            "tpot_p50_ms": _pct(tpot, 50), "tpot_p99_ms": _pct(tpot, 99), "e2e_p50_ms": _pct(e2e, 50),
            "e2e_p99_ms": _pct(e2e, 99), "max_batch_seen": max((o.batch_size for o in ok), default=0)}


def batching_section(fp32, n: int, lo: int, hi: int, rows: int, chunk: int) -> dict[str, dict[str, Any]]:
    from leanml.serve.config import Batching

    reqs = _requests(n, lo, hi)
    setups = {"one_at_a_time": Batching(max_batch=1, continuous=True, prefill_chunk=chunk, max_queue=4096),
              "hf_sequential": Batching(max_batch=1, max_queue=4096),
              f"hf_static_{rows}": Batching(max_batch=rows, max_queue=4096),
              f"continuous_{rows}": Batching(max_batch=rows, continuous=True, prefill_chunk=chunk, max_queue=4096)}
    out = {}
    for name, b in setups.items():
        out[name] = asyncio.run(_serve(fp32, b, reqs))
        print(f"  {name}: {out[name]}", file=sys.stderr, flush=True)
    return out


def decode_step_ms(lm, rows: int, tokens: int = 12) -> float:
    """Mean time of one decode step of the CB engine with ``rows`` running sequences (after their prefill)."""
    from leanml.serve.dataplane.generation import ContinuousBatcher

    cb = ContinuousBatcher(lm, max_batch=rows, prefill_chunk=512)
    ids = lm._ids("Tell me about the history of Rome and its emperors.")
    cb.add([cb.sequence(ids, tokens, min_new_tokens=tokens) for _ in range(rows)])
    while len(cb.rows) < rows:
        cb.step()
    t0, k = time.perf_counter(), 0
    while not cb.idle:
        cb.step()
        k += 1
    return (time.perf_counter() - t0) / k * 1000.0


def variants_section(fam, partial: dict[str, Any], path: Path, tokens: int, rounds: int) -> dict[str, dict[str, Any]]:
    """Quality of every variant (the results so far are saved after each one: a long variant never costs the
    others' figures), then their decode speed (`timing_rounds`)."""
    rows: dict[str, dict[str, Any]] = {}
    partial["variants"] = rows
    for name, v in fam.variants.items():
        t0 = time.perf_counter()
        fam.evaluate(v, None)
        d = dict(fam.info["eval_details"][name])
        d["technique"], d["params"] = v.technique, v.params
        d["size_mb"] = round((v.model.size_bytes() or 0) / 2**20, 1)
        d["measure_s"] = round(time.perf_counter() - t0, 1)
        rows[name] = d
        atomic_write_text(path, json.dumps(partial, indent=1, default=float) + "\n")
        print(f"  {name}: {({k: x for k, x in d.items() if k != 'sst2_correct'})}", file=sys.stderr, flush=True)
    timing_rounds(fam, rows, tokens, rounds)
    return derive(rows)


def timing_rounds(fam, rows: dict[str, dict[str, Any]], tokens: int, rounds: int) -> None:
    """Decode-step time of each variant at 1 and 8 rows, in place: ``rounds`` rounds that each time every variant
    once, in turn, and the median over rounds. Interleaving puts the machine's drift (load, cache and frequency
    state) on every variant alike; timing each variant once, in sequence, put up to 20% on whichever ran first."""
    ts: dict[str, dict[int, list[float]]] = {k: {1: [], 8: []} for k in rows}
    for r in range(rounds):
        for name in rows:
            for b in (1, 8):
                ts[name][b].append(decode_step_ms(fam.variants[name].model, b, tokens))
        print(f"  timing round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[1][-1]:.1f}/{v[8][-1]:.1f}"
                                                             for k, v in ts.items()), file=sys.stderr, flush=True)
    for name, d in rows.items():
        d["decode_step_ms_b1"] = round(float(np.median(ts[name][1])), 2)
        d["decode_step_ms_b8"] = round(float(np.median(ts[name][8])), 2)
        d["decode_step_rounds"] = rounds
        d["tokens_per_s_b8"] = round(8000.0 / d["decode_step_ms_b8"], 1)


def derive(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each variant's speedups, perplexity change and SST-2 change against fp32 (in place; returns ``rows``)."""
    base = rows["fp32"]
    for d in rows.values():
        d["speedup_b1"] = round(base["decode_step_ms_b1"] / d["decode_step_ms_b1"], 3)
        d["speedup_b8"] = round(base["decode_step_ms_b8"] / d["decode_step_ms_b8"], 3)
        d["ppl_increase_pct"] = round(100.0 * (d["perplexity"] / base["perplexity"] - 1.0), 3)
        d["sst2_delta_points"] = round(100.0 * (d["sst2_accuracy"] - base["sst2_accuracy"]), 2)
        if "sst2_correct" in d and "sst2_correct" in base:  # rows of older runs lack the per-sentence answers
            pd = paired_delta(d["sst2_correct"], base["sst2_correct"])
            d.update(sst2_delta_ci_points=pd["delta_ci_points"], sst2_gained=pd["gained"], sst2_lost=pd["lost"])
    return rows


def cpu_model() -> str:
    """The CPU's model name and widest vector ISA (`leanml.hw.sysinfo`), with its core count."""
    from leanml.hw.sysinfo import cpu_model_name, cpu_vector_isa

    return f"{cpu_model_name()} ({cpu_vector_isa()}), {os.cpu_count()} cores"


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, same code path (under about a minute)")
    ap.add_argument("--section", choices=("all", "batching", "variants", "timing", "report"), default="all",
                    help="run one section; the other's figures are kept from the results file. 'timing' re-times "
                         "the variants already in the file (their quality kept); 'report' measures nothing: it "
                         "rebuilds the tables and headline from the file (also from a variants run cut short, "
                         "which saves each row)")
    ap.add_argument("--variants", default=None,
                    help=f"SmolLM2 variants to table (default {FULL_VARIANTS}; with --quick {QUICK_VARIANTS})")
    ap.add_argument("--keep-others", action="store_true",
                    help="with --section variants: keep the results file's rows of variants not measured now "
                         "(their quality marked with quality_from); run --section timing after, to re-time all")
    ap.add_argument("--results", type=Path, default=None,
                    help=f"where the JSON goes (default {RESULTS.name}, with --quick {RESULTS_QUICK.name})")
    a = ap.parse_args(argv)
    import torch

    from leanml.serve.variants import build_family

    torch.set_num_threads(1)
    q = a.quick
    path = a.results or (RESULTS_QUICK if q else RESULTS)
    params = {"eval_metric": "sst2", "eval_sst2_n": 8 if q else 872, "eval_ppl_n": 4 if q else 24,
              "eval_n": 2 if q else 16, "eval_split": "test", "default_max_new_tokens": 4 if q else 32,
              "calib_n": 4 if q else 32}
    names = a.variants or (QUICK_VARIANTS if q else FULL_VARIANTS)
    skipped = []
    if a.variants is None and importlib.util.find_spec("torchao") is None:  # the peer row needs `make peer-envs`
        names, skipped = ",".join(v for v in names.split(",") if v != "torchao_int8wo"), ["torchao_int8wo"]
        print("torchao_int8wo skipped: torchao is not installed (`make peer-envs`)", file=sys.stderr)
    wanted = [v for v in names.split(",") if v] if a.section != "batching" else ["fp32"]
    rounds = 2 if q else 5
    if "fp32" not in wanted:
        ap.error("--variants: must include fp32 (the reference)")
    if a.keep_others and a.section != "variants":
        ap.error("--keep-others: only with --section variants (timing keeps every row's quality already)")
    prev: dict[str, Any] = {}
    if a.section != "all" and path.exists():
        prev = json.loads(path.read_text())
        if prev.get("quick") != q:
            prev = {}
    if a.section in ("report", "timing") and not prev.get("variants"):
        ap.error(f"--section {a.section}: no {'quick ' if q else ''}variant results in {path}")
    if a.section == "timing":
        wanted = [v for v in prev["variants"] if (v in wanted or a.variants is None) and v not in skipped]
    if a.section != "report":
        t0 = time.perf_counter()
        fam = build_family("smollm2", params, wanted)
        print(f"built {wanted} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    n, lo, hi, rows, chunk = (4, 3, 6, 4, 128) if q else (32, 16, 64, 16, 128)
    load: dict[str, Any] = dict(prev.get("load_avg_1_5_15", {}))
    if a.section in ("all", "batching"):
        print("batching:", file=sys.stderr)
        l0 = _load()
        bat = batching_section(fam.variants["fp32"], n, lo, hi, rows, chunk)
        load["batching"] = {"start": l0, "end": _load()}
        work = {"requests": n, "new_tokens": [lo, hi], "max_batch": rows, "prefill_budget_tokens": chunk}
    else:
        bat, work = prev.get("batching", {}), prev.get("batching_workload")
    if a.section in ("all", "variants"):
        print("variants:", file=sys.stderr)
        l0 = _load()
        partial = {"benchmark": "serve_llm", "quick": q, "partial": True, "batching": bat,
                   "batching_workload": work, "load_avg_1_5_15": load}
        var = variants_section(fam, partial, path, 3 if q else 12, rounds)
        load["variants"] = {"start": l0, "end": _load()}
        if a.keep_others:
            run_at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            for k, d in prev.get("variants", {}).items():
                if k not in var:
                    var[k] = {**d, "quality_from": d.get("quality_from") or f"a variants run before {run_at}"}
            var = derive(var)
    elif a.section == "timing":
        print("timing:", file=sys.stderr)
        l0 = _load()
        var = {k: prev["variants"][k] for k in wanted}
        timing_rounds(fam, var, 3 if q else 12, rounds)
        var = derive(var)
        load["variants_timing"] = {"start": l0, "end": _load()}
    else:
        var = derive(prev["variants"]) if prev.get("variants") else {}

    if bat:
        print("\n| system | tokens/s | TTFT p50 / p99 ms | TPOT p50 / p99 ms | e2e p50 / p99 ms | largest batch |")
        print("| --- | --- | --- | --- | --- | --- |")
        for k, r in bat.items():
            print(f"| {k} | {r['tokens_per_s']} | {r['ttft_p50_ms']} / {r['ttft_p99_ms']} | {r['tpot_p50_ms']} / "
                  f"{r['tpot_p99_ms']} | {r['e2e_p50_ms']} / {r['e2e_p99_ms']} | {r['max_batch_seen']} |")
    if var:
        print("\n| variant | perplexity (95% CI) | KL to fp32 | SST-2 acc (95% CI, n) | SST-2 change, points "
              "(paired CI; lost / gained) | fidelity | step ms b1 / b8 | speedup b1 / b8 | size MB |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for k, d in var.items():
            pair = (f"{d['sst2_delta_points']:+.2f} ({d['sst2_delta_ci_points'][0]:+.2f} to "
                    f"{d['sst2_delta_ci_points'][1]:+.2f}; {d['sst2_lost']} / {d['sst2_gained']})"
                    if "sst2_delta_ci_points" in d else f"{d['sst2_delta_points']:+.2f}")
            print(f"| {k} | {d['perplexity']:.3f} ({d['perplexity_ci'][0]:.3f}-{d['perplexity_ci'][1]:.3f}) | "
                  f"{d['kl_to_fp32']:.4f} | {d['sst2_accuracy']:.3f} ({d['sst2_accuracy_ci'][0]:.3f}-"
                  f"{d['sst2_accuracy_ci'][1]:.3f}, {d['sst2_n']}) | {pair} | {d.get('fp32_token_agreement')} | "
                  f"{d['decode_step_ms_b1']} / {d['decode_step_ms_b8']} | {d['speedup_b1']} / {d['speedup_b8']} | "
                  f"{d['size_mb']} |")
    ok = [k for k, d in var.items() if k != "fp32" and d["ppl_increase_pct"] <= PPL_BOUND_PCT
          and d["sst2_delta_points"] >= -SST2_BOUND_POINTS]
    best = max(ok, key=lambda k: var[k]["speedup_b8"]) if ok else None
    cb = next((r for k, r in bat.items() if k.startswith("continuous_")), None)
    hf = next((r for k, r in bat.items() if k.startswith("hf_static_")), None)
    seq = bat.get("one_at_a_time")
    result = {
        "benchmark": "serve_llm", "quick": q, "machine": cpu_model(),
        "torch_threads": 1, "load_avg_1_5_15": load, "batching_workload": work,
        "cb_speedup": round(cb["tokens_per_s"] / seq["tokens_per_s"], 3) if cb else None,
        "cb_speedup_vs_hf_static": round(cb["tokens_per_s"] / hf["tokens_per_s"], 3) if cb else None,
        "cb_ttft_p99_ms": cb["ttft_p99_ms"] if cb else None,
        "one_at_a_time_ttft_p99_ms": seq["ttft_p99_ms"] if seq else None,
        "best_variant": best,
        "best_variant_rule": f"fastest at 8 rows with perplexity within {PPL_BOUND_PCT:g}% of fp32 and SST-2 "
                             f"within {SST2_BOUND_POINTS:g} point",
        "best_variant_speedup": var[best]["speedup_b8"] if best else None,
        "best_variant_ppl_increase_pct": var[best]["ppl_increase_pct"] if best else None,
        "best_variant_sst2_delta_points": var[best]["sst2_delta_points"] if best else None,
        "variants_skipped": skipped, "batching": bat, "variants": var,
        "gpu": None, "gpu_note": "no GPU on this machine",
    }
    line = json.dumps({k: v for k, v in result.items() if k not in ("batching", "variants")}, default=float)
    atomic_write_text(path, json.dumps(result, indent=1, default=float) + "\n")
    print(line)
    return result


if __name__ == "__main__":
    main()
