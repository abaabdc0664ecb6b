"""The LLM planner's p99 TPOT and TTFT predictions against the continuous-batching simulator, on measured costs.

    OMP_NUM_THREADS=1 python benchmarks/diagnostics/llm_tpot_model_check.py     # ~10 s

Backs docs/planner.md ("The TPOT row replaced an average"). One class (600-token prompts, 30-token outputs),
one engine of SmolLM2 ``--variant`` (default `int8_wo`) from the committed profile, batch cap 16, gamma
inter-arrivals of CV 1 and 3 at the rate that makes the option's engine time a fraction u busy, 3,000
requests per cell, simulated by `leanml.serve.sim.llm_sim` with a static policy (no refusals). Per cell it
prints the simulated p99 TPOT and TTFT, the planner's predictions (`llm_planner.fit`), and the average-prefill
TPOT the planner used before (step(n90) + prefill(n90 P / O)); the last line is one JSON object of ratios.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", type=Path, default=ROOT / "benchmarks/results/llm_profiles/smollm2.llm_profile.json")
    ap.add_argument("--variant", default="int8_wo")
    ap.add_argument("--requests", type=int, default=3000)
    a = ap.parse_args(argv)

    from leanml.serve.control.llm_planner import LLMClass, LLMOption, LLMPlannerConfig, fit
    from leanml.serve.control.llm_profiles import load_llm_profiles
    from leanml.serve.sim.llm_policies import LLMStaticPolicy, PolicySettings
    from leanml.serve.sim.llm_sim import LLMRequest, LLMSimulator

    p = load_llm_profiles(a.profiles)[a.variant]
    prompt, out, batch = 600, 30, 16
    rows = []
    print("| CV | chunk | u | sim TPOT p99 | predicted | average model | sim TTFT p99 s | predicted s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for cv in (1.0, 3.0):
        for chunk in (16, 32, 128, 512):
            for rho in (0.3, 0.5, 0.7):
                k = LLMClass("k", 1.0, prompt, out, ttft_ms=1e9, tpot_ms=1e9, output_max=out, cv=cv)
                f = fit(k, p, LLMOption(a.variant, 0, batch, chunk, rho), 1e12)
                if f is None:
                    print(f"| {cv} | {chunk} | {rho} | infeasible (prefill queue saturated) | | | | |")
                    continue
                rate = rho * 1000 / f.cost_ms
                rng = np.random.default_rng(0)
                t = np.cumsum(rng.gamma(1 / cv**2, cv**2 / rate, a.requests))
                reqs = [LLMRequest(i, float(x), prompt, out, 1e9, 1e9) for i, x in enumerate(t)]
                pol = LLMStaticPolicy([a.variant], profiles={a.variant: p},
                                      settings=PolicySettings(0.0, LLMPlannerConfig(), k), batching=(batch, chunk))
                outs = LLMSimulator({a.variant: p}, engines=1, kv_budget_bytes=1e12, seed=0).run(pol, reqs)
                tp = float(np.percentile([o.tpot_ms for o in outs if o.status == "ok"], 99))
                tt = float(np.percentile([o.ttft_ms for o in outs if o.status == "ok"], 99))
                n90 = min(batch, max(1, math.ceil(math.log(0.1) / math.log(rho))))
                avg = p.step_ms(n90, prompt + out / 2) + p.prefill_time_ms(n90 * prompt / out)
                rows.append({"cv": cv, "chunk": chunk, "u": rho, "sim_tpot_p99": round(tp, 1),
                             "pred_tpot": round(f.tpot_ms, 1), "avg_tpot": round(avg, 1),
                             "sim_ttft_p99": round(tt), "pred_ttft": round(f.ttft_ms)})
                print(f"| {cv} | {chunk} | {rho} | {tp:.1f} | {f.tpot_ms:.1f} | {avg:.1f} | {tt / 1000:.1f} | "
                      f"{f.ttft_ms / 1000:.1f} |")

    def span(key: str, den: str, chunks: tuple[int, ...]) -> list[float]:
        r = [x[key] / x[den] for x in rows if x["chunk"] in chunks]
        return [round(min(r), 2), round(max(r), 2)] if r else []

    head = {"variant": a.variant, "pred_over_sim_tpot_chunks_16_128": span("pred_tpot", "sim_tpot_p99", (16, 32, 128)),
            "pred_over_sim_tpot_chunk_512": span("pred_tpot", "sim_tpot_p99", (512,)),
            "avg_over_sim_tpot_chunk_128": span("avg_tpot", "sim_tpot_p99", (128,)),
            "pred_over_sim_ttft": span("pred_ttft", "sim_ttft_p99", (16, 32, 128, 512)), "cells": len(rows)}
    print(json.dumps(head))
    return head


if __name__ == "__main__":
    main()
