"""LLM replay: the Azure LLM code trace at its real time scale through five policies, in the CB simulator.

    python benchmarks/serve_llm_replay.py --quick      # one load, a 10-minute window (< 1 min)
    python benchmarks/serve_llm_replay.py              # 20-minute window, loads 0.5/1/2 x targets best-1/-3 points

Setting, fixed before the run:

* Profiles: SmolLM2-135M variants measured on this CPU (`benchmarks/llm_profiles_measure.py`: prefill and
  decode step times by batch and context, one thread; next-token accuracy and perplexity on held-out news
  text, full context and KV caps 128/256/512). ``--profiles`` takes another file (e.g. i13a's).
* Deployment: ``--engines`` continuous-batching engines (one per core), KV budget ``--kv-gib`` each.
* Trace: `leanml.serve.workload.timescale.real_timescale`: the 20-minute window (10 with --quick) of the
  trace with the largest 2-minute rate swing, its clock kept, thinned to ``load`` x the capacity of the
  most accurate variant (its engine time per request at the window's mean prompt and output, a batch of
  4, on all engines). Each request prefills its trace ``ContextTokens`` and generates ``GeneratedTokens``.
* SLOs per request: TTFT <= max(1 s, 3 x the most accurate variant's lone prefill of its prompt); TPOT <=
  3 x its decode step at batch 1 and 1,024 tokens of context (``--slo-x`` changes the 3).
  Accuracy: best variant's next-token accuracy - 1 point, a per-request floor for INFaaS, a mean
  for Proteus and adaptive.
* Goodput: requests per second (of trace time) answered within both SLOs.

Live replay: the continuous-batching HTTP server is i13a's part and is not in this branch, so only the
simulator runs and ``sim_p99_error`` is null with the reason. Baselines: INFaaS-style greedy and
Proteus-style planning, the strongest published policies for this decision (`leanml.serve.sim.llm_policies`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_PROFILES = RESULTS / "llm_profiles" / "smollm2.llm_profile.json"
NOT_LIVE = ("no live continuous-batching LLM server in this branch (i13a builds dataplane/generation.py); "
            "simulator only")


def setting(profiles, trace, load: float, engines: int, kv_bytes: float, window_s: float, seed: int, slo_x: float):
    from leanml.serve.control.llm_planner import LLMClass, LLMPlannerConfig
    from leanml.serve.control.llm_profiles import FULL
    from leanml.serve.sim.llm_policies import PolicySettings, most_accurate, request_cost_ms
    from leanml.serve.sim.llm_sim import LLMRequest
    from leanml.serve.workload.timescale import drift_window, real_timescale

    best = most_accurate(profiles)
    pb = profiles[best]
    start = drift_window(trace, window_s, 120.0)
    w = trace.window(start, window_s)
    p_mean, o_mean = float(np.mean(w.context_tokens)), float(np.mean(np.maximum(w.generated_tokens, 1)))
    capacity = engines * 1000.0 / request_cost_ms(pb, p_mean, o_mean, batch=4)
    scaled, rep = real_timescale(trace, load * capacity, window_s=window_s, bin_s=120.0, start_s=start, seed=seed)
    tpot = slo_x * pb.step_ms(1, 1024)
    reqs = [LLMRequest(i, float(t), int(p), int(max(o, 1)), max(1000.0, slo_x * pb.prefill_time_ms(int(p))), tpot)
            for i, (t, p, o) in enumerate(zip(scaled.arrival_s, scaled.context_tokens, scaled.generated_tokens,
                                              strict=True))]
    target = pb.accuracy(FULL) - 0.01
    prior = LLMClass("prior", load * capacity, p_mean, o_mean, ttft_ms=max(1000.0, slo_x * pb.prefill_time_ms(p_mean)),
                     tpot_ms=tpot, prompt_p99=float(np.percentile(w.context_tokens, 99)),
                     output_max=int(np.max(w.generated_tokens)))
    cfg = LLMPlannerConfig(engines=engines, kv_budget_bytes=kv_bytes, time_limit_s=1.0)
    return reqs, rep, PolicySettings(target, cfg, prior, period_s=60.0), capacity


def run_setting(profiles, reqs, s, engines: int, kv_bytes: float, seed: int, duration_s: float):
    from leanml.serve.sim.llm_policies import make_policies
    from leanml.serve.sim.llm_sim import LLMSimulator, summarize

    out = {}
    for pol in make_policies(profiles, s):
        t0 = time.perf_counter()
        sim = LLMSimulator(profiles, engines=engines, kv_budget_bytes=kv_bytes, seed=seed)
        res = summarize(sim.run(pol, reqs, tick_s=10.0), duration_s)
        res["replans"] = len(sim.log)
        res["sim_s"] = round(time.perf_counter() - t0, 2)
        out[pol.name] = res
    return out


def headline(res: dict, best_acc: float) -> dict:
    a, i, sa = res["adaptive"], res["infaas"], res["static-accurate"]
    return {
        "goodput_vs_infaas": round(a["goodput_rps"] / i["goodput_rps"], 3) if i["goodput_rps"] > 0 else None,
        "goodput_vs_static_accurate": (round(a["goodput_rps"] / sa["goodput_rps"], 3)
                                       if sa["goodput_rps"] > 0 else None),
        "accuracy_gap_points": round(100 * (best_acc - a["mean_accuracy"]), 3),
        "nocap_vs_infaas": (round(res["adaptive-nocap"]["goodput_rps"] / i["goodput_rps"], 3)
                            if i["goodput_rps"] > 0 else None),
    }


def table(res: dict) -> str:
    cols = ["goodput_rps", "slo_attainment", "mean_accuracy", "refused", "expired", "ttft_p50_ms", "ttft_p99_ms",
            "tpot_p50_ms", "tpot_p99_ms", "replans"]
    lines = ["| policy | " + " | ".join(cols) + " | served by |", "|" + " --- |" * (len(cols) + 2)]
    for name, r in res.items():
        vals = [f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols]
        lines.append(f"| {name} | " + " | ".join(vals) + f" | {r['served_by']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one load, a 10-minute window (same code path)")
    ap.add_argument("--profiles", type=Path, default=DEFAULT_PROFILES)
    ap.add_argument("--trace", default="azure_llm_code")
    ap.add_argument("--engines", type=int, default=2)
    ap.add_argument("--kv-gib", type=float, default=1.0, help="KV-cache budget per engine (GiB)")
    ap.add_argument("--load", type=float, default=1.0, help="headline load x the most accurate variant's capacity")
    ap.add_argument("--slo-x", type=float, default=3.0, help="SLOs as this multiple of lone-request TTFT/TPOT")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "serve_llm_replay.json")
    a = ap.parse_args(argv)
    from leanml.io import atomic_write_text
    from leanml.serve.control.llm_profiles import FULL, load_llm_profiles
    from leanml.serve.sim.llm_policies import most_accurate
    from leanml.serve.workload.traces import load_trace

    if not a.profiles.exists():
        sys.exit(f"--profiles: {a.profiles} does not exist; measure it with "
                 "`python benchmarks/llm_profiles_measure.py` (or pass another LLM profile file)")
    if a.engines < 1 or a.kv_gib <= 0 or a.load <= 0 or a.slo_x <= 0:
        sys.exit("--engines must be >= 1; --kv-gib, --load and --slo-x positive")
    profiles = load_llm_profiles(a.profiles)
    trace = load_trace(a.trace)
    if trace.context_tokens is None or trace.generated_tokens is None:
        sys.exit(f"--trace {a.trace}: needs prompt and generated token counts per request")
    best_acc = profiles[most_accurate(profiles)].accuracy(FULL)
    kv = a.kv_gib * (1 << 30)
    window_s = 600.0 if a.quick else 1200.0
    for n, p in profiles.items():
        print(f"profile {n}: accuracy by KV cap {({c: round(p.accuracy(c), 4) for c in p.kv_caps()})}, "
              f"prefill {p.prefill_time_ms(512) / 512:.3f} ms/token at 512, decode step {p.step_ms(1, 1024):.1f} ms "
              f"(batch 1) / {p.step_ms(16, 1024):.1f} ms (batch 16) at 1,024 tokens of context")
    loads = [a.load] if a.quick else sorted({0.5, a.load, 2.0})
    grid, head_res, head_rep = [], None, None
    for load in loads:
        reqs, rep, s, cap = setting(profiles, trace, load, a.engines, kv, window_s, a.seed, a.slo_x)
        for slack in ([0.01] if a.quick else [0.01, 0.03]):
            s2 = replace(s, accuracy_target=best_acc - slack)
            span = rep.window_s / (rep.factor if rep.method == "time-compression" else 1.0)
            res = run_setting(profiles, reqs, s2, a.engines, kv, a.seed, span)
            h = headline(res, best_acc)
            grid.append({"load": load, "accuracy_target": round(best_acc - slack, 5), "slack_points": slack * 100,
                         "capacity_rps": round(cap, 4), "timescale": rep.to_json(), **h,
                         "policies": res})
            print(f"\n## load {load} x capacity ({cap:.3f} req/s), accuracy target best - {slack * 100:.0f} point(s)")
            print(rep.text())
            print(table(res))
            print(json.dumps(h))
            if load == a.load and slack == 0.01:
                head_res, head_rep = h, rep
    out = {**head_res, "sim_p99_error": None, "sim_p99_error_reason": NOT_LIVE, "headline_load": a.load,
           "timescale": head_rep.to_json(), "profiles": str(a.profiles), "engines": a.engines, "kv_gib": a.kv_gib,
           "slo_x": a.slo_x, "quick": a.quick, "grid": grid}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(a.out, json.dumps(out, indent=1, default=float))
    last = {k: out[k] for k in ("goodput_vs_infaas", "goodput_vs_static_accurate", "accuracy_gap_points",
                                "sim_p99_error", "sim_p99_error_reason", "headline_load")}
    print(json.dumps(last))
    return out


if __name__ == "__main__":
    main()
