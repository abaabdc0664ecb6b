"""Simulate the live window of a SmolLM2 replay (same arrivals and tokens) and compare with the live rows.

    LEANML_DATA=... python benchmarks/diagnostics/smollm2_sim_of_live.py \
        benchmarks/results/serve_replay/smollm2_cores1/smollm2_rows.parquet --rate 0.035 --seconds 60 --cores 1
"""

from __future__ import annotations

import argparse

import pyarrow.parquet as pq

from leanml.serve.control.profiles import load_profiles
from leanml.serve.sim.replay_study import generation_plan, simulate, summarize
from leanml.serve.workload.traces import load_trace, max_new_tokens, scale_to_rate

ap = argparse.ArgumentParser()
ap.add_argument("rows")
ap.add_argument("--rate", type=float, required=True)
ap.add_argument("--seconds", type=float, required=True)
ap.add_argument("--cores", type=int, required=True)
ap.add_argument("--slo-ms", type=float, default=5000.0)
ap.add_argument("--target", type=float, default=0.99)
ap.add_argument("--profiles", default="examples/profiles/smollm2.profile.json")
a = ap.parse_args()
raw = load_profiles(a.profiles)["smollm2"]
tr = load_trace("azure_llm_code")
gp = generation_plan(raw, tr)  # what `leanml serve replay` gives the policies
profs = gp.policy_profiles
lt = scale_to_rate(tr, a.rate).busiest(a.seconds)
tok = max_new_tokens(lt, gp.cap)
live = pq.read_table(a.rows).to_pandas()
live = live[live["mode"] == "live"]
for pol in ("static-accurate", "static-fast", "infaas", "proteus", "adaptive"):
    rows, _, _ = simulate(pol, profs, lt.arrival_s, cores=a.cores, latency_ms=a.slo_ms, accuracy_target=a.target,
                          true_profiles=raw, max_batch=8, knobs_for=lambda i: {"max_new_tokens": int(tok[i])})
    s = summarize(rows, lt.duration_s, raw)
    g = live[live.policy == pol]
    ok = g[g.status == 200]
    print(f"{pol:16s} sim: {sum(r['met_slo'] for r in rows):3d} in SLO, {s['answered']:3d} answered, "
          f"p50 {s['p50_ms']:6.0f} p99 {s['p99_ms']:6.0f} ms | live: {int(g.met_slo.sum()):3d} in SLO, "
          f"{len(ok):3d} answered, p50 {ok.latency_ms.median():6.0f} p99 {ok.latency_ms.quantile(0.99):6.0f} ms")
