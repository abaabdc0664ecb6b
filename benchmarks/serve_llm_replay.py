"""LLM replay: the Azure LLM code trace at its real time scale through five policies, simulated and live.

    python benchmarks/serve_llm_replay.py --quick               # one load, 10-min window, 2 seeds, 40 s live
    python benchmarks/serve_llm_replay.py --no-live             # the grid: loads 0.5/1/2 x targets best-1/-3, 6 seeds
    python benchmarks/serve_llm_replay.py --live-only           # then the live check, merged into the same JSON
    python benchmarks/serve_llm_replay.py --device h100_sxm     # a catalog device: costs from leanml.hw.llm
    python benchmarks/serve_llm_replay.py --no-live --load 2 --slo-x 5 --out SLO5   # the looser-SLO grid
                                  # (TPOT 100 ms; SLO5 = benchmarks/results/serve_llm_replay_slo5.json)

Setting, fixed before the run:

* Profiles: SmolLM2-135M variants measured on this CPU (`benchmarks/llm_profiles_measure.py`: prefill and
  decode step times by batch and context, one thread; next-token accuracy and perplexity on held-out news
  text, full context and KV caps 128/256/512). ``--profiles`` takes another file; ``--device`` a catalog
  device, whose costs are predicted (`leanml.serve.control.llm_profiles.profiles_for_device`, marked
  ``source = "predicted"`` in the output).
* Deployment: ``--engines`` continuous-batching engines (one per core), KV budget ``--kv-gib`` each.
* Inputs: `leanml.serve.sim.replay_inputs.llm_replay_inputs`, the one builder: the 20-minute window (10
  with --quick) of the trace with the largest 2-minute rate swing, its clock kept, thinned to ``load`` x
  the capacity of the most accurate variant. SLOs per request: TTFT <= max(1 s, 3 x the most accurate
  variant's lone prefill of its prompt); TPOT <= 3 x its decode step at batch 1 and 1,024 tokens of
  context (``--slo-x`` changes the 3). Accuracy: best variant's next-token accuracy - 1 (or 3) points, a
  per-request floor for INFaaS, a mean for Proteus and adaptive.
* Seeds: each seed is another thinning of the same window (and simulator noise); the headline ratios pool
  the seeds' goodput (sum over seeds), with a 95% bootstrap interval over seeds.
* Goodput: requests per second (of trace time) answered within both SLOs.
* Live (`leanml.serve.sim.llm_live`): a ``--live-seconds`` stretch (the busiest of the headline window),
  thinned to ``--live-load`` x one engine's capacity, prompts x ``--live-token-scale`` and outputs clipped
  to ``--live-max-output`` (one core cannot prefill the trace's 1,500-token median prompts at a useful
  rate), replayed open-loop over HTTP on 127.0.0.1 to the runtime with one continuous-batching engine,
  for the single-variant policies (static-accurate, static-fast); the simulator runs the very same
  requests (the token counts actually sent) twice: with the profile file's costs and with costs
  re-measured beside the live run (the same measurement). ``sim_p99_error`` = the largest |sim - live| /
  live of p99 TTFT and p99 end-to-end latency over those policies, calibrated costs.

Baselines: INFaaS-style greedy and Proteus-style planning, the strongest published policies for this
decision (`leanml.serve.sim.llm_policies`, built through the policy registry).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # llm_profiles_measure: the one cost measurement
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_PROFILES = RESULTS / "llm_profiles" / "smollm2.llm_profile.json"
LIVE_POLICIES = ("static-accurate", "static-fast")  # single-variant policies: one live engine serves them as simulated


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


def pooled(per_seed: list[dict], num: str, den: str, key: str = "goodput_rps", seed: int = 0) -> dict:
    """Ratio of summed ``key`` of policy ``num`` over ``den`` across seeds, per seed, and a 95% bootstrap CI
    over seeds (seeds resampled with replacement)."""
    a = np.array([r[num][key] for r in per_seed])
    b = np.array([r[den][key] for r in per_seed])
    rng = np.random.default_rng(seed)
    boot = [a[i].sum() / b[i].sum() for i in (rng.integers(0, len(a), len(a)) for _ in range(2000)) if b[i].sum() > 0]
    return {"ratio": round(float(a.sum() / b.sum()), 3) if b.sum() > 0 else None,
            "ci95": [round(float(np.percentile(boot, 2.5)), 3), round(float(np.percentile(boot, 97.5)), 3)]
            if boot else None,
            "per_seed": [round(float(x / y), 3) if y > 0 else None for x, y in zip(a, b, strict=True)]}


def sim_cell(profiles, trace, load, slack, a, kv, best_acc, window_s, start) -> dict:
    from leanml.serve.sim.llm_bound import goodput_ceiling
    from leanml.serve.sim.llm_replay import run_llm_policies
    from leanml.serve.sim.replay_inputs import llm_replay_inputs

    per_seed, reps = [], []
    for seed in range(a.seeds):
        inp = llm_replay_inputs(profiles, trace, load=load, engines=a.engines, kv_bytes=kv, window_s=window_s,
                                seed=seed, slo_x=a.slo_x, accuracy_slack=slack, start_s=start)
        per_seed.append(run_llm_policies(profiles, inp.requests, inp.settings, engines=a.engines, kv_bytes=kv,
                                         seed=seed, span_s=inp.span_s, queue=a.queue))
        ceil = goodput_ceiling(inp.requests, profiles, engines=a.engines, accuracy_target=inp.settings.accuracy_target,
                               span_s=inp.span_s, max_batch=max(inp.settings.planner.batch_sizes),
                               max_chunk=max(inp.settings.planner.chunk_tokens))
        per_seed[-1]["ceiling"] = ceil.to_json()
        reps.append(inp)
    names = [n for n in per_seed[0] if n != "ceiling"]
    agg = {n: {"requests": sum(r[n]["requests"] for r in per_seed),
               "goodput_rps": float(np.mean([r[n]["goodput_rps"] for r in per_seed])),
               "mean_accuracy": float(np.average([r[n]["mean_accuracy"] for r in per_seed],
                                                 weights=[max(1, r[n]["answered"]) for r in per_seed])),
               "slo_attainment": float(np.mean([r[n]["slo_attainment"] for r in per_seed]))} for n in names}
    gi, gs = pooled(per_seed, "adaptive", "infaas"), pooled(per_seed, "adaptive", "static-accurate")
    ceiling = float(np.mean([r["ceiling"]["goodput_rps"] for r in per_seed]))
    acc_gap = round(100 * (best_acc - agg["adaptive"]["mean_accuracy"]), 3)
    return {"load": load, "accuracy_target": round(best_acc - slack, 5), "slack_points": slack * 100,
            "capacity_rps": round(reps[0].capacity_rps, 4), "seeds": a.seeds,
            "requests_per_seed": [len(r.requests) for r in reps], "timescale_seed0": reps[0].timescale.to_json(),
            "goodput_vs_infaas": gi["ratio"], "goodput_vs_infaas_ci95": gi["ci95"],
            "goodput_vs_infaas_per_seed": gi["per_seed"], "goodput_vs_static_accurate": gs["ratio"],
            "goodput_vs_static_accurate_ci95": gs["ci95"], "goodput_vs_static_accurate_per_seed": gs["per_seed"],
            "accuracy_gap_points": acc_gap,
            "nocap_vs_infaas": pooled(per_seed, "adaptive-nocap", "infaas")["ratio"],
            # the LP upper bound on any policy's goodput (leanml.serve.sim.llm_bound), and each policy's share of it
            "ceiling_rps": round(ceiling, 5),
            "share_of_ceiling": {n: round(agg[n]["goodput_rps"] / ceiling, 3) for n in names},
            "ceiling_vs_infaas": pooled(per_seed, "ceiling", "infaas")["ratio"],
            "pooled": agg, "policies_seed0": per_seed[0], "_rep0": reps[0]}


def p99_view(e: dict) -> dict:
    return {k: e[k] for k in ("answered_sim", "answered_live", "sim_ttft_p99_ms", "live_ttft_p99_ms", "ttft_p99_error",
                              "sim_e2e_p99_ms", "live_e2e_p99_ms", "e2e_p99_error")}


def busiest_start(trace, start: float, window_s: float, live_s: float) -> float:
    """Start of the ``live_s`` stretch of the window at ``start`` holding the most requests (30 s grid)."""
    offs = np.arange(0.0, window_s - live_s + 1e-9, 30.0)
    n = [len(trace.window(start + o, live_s)) for o in offs]
    return float(start + offs[int(np.argmax(n))])


def calibrated(model, lm, prof, text_ids: list[int], prompt_max: int, chunk: int):
    """``prof`` with its costs re-measured now, on the model the live engine runs, on a small grid covering the
    live prompts; quality kept. Prefill: one forward per length (`benchmarks/llm_profiles_measure.py`'s
    measurement), except at the live ``chunk``, where it is the engine's own chunked-prefill pass
    (`llm_live.engine_prefill_chunk_ms`: each pass attends to the chunks before it through the engine's
    cache, which a fresh forward omits). Decode: decode-only iterations of the live engine itself
    (`llm_live.engine_decode_ms`: its attention mask, per-row positions and left-padded cache), at running
    batch 1 and 4 and contexts 128 and 512. The machine's load moves costs by tens of percent within
    minutes, so the simulator of a live run takes costs measured beside it."""
    from dataclasses import replace as dc

    from leanml.serve.sim.llm_live import engine_decode_ms, engine_prefill_chunk_ms
    from llm_profiles_measure import measure_costs

    hi = int(min(1024, max(256, prompt_max)))
    pre, _ = measure_costs(model, text_ids, tuple((1, n) for n in sorted({64, 256, hi} - {chunk})), (), (),
                           reps=2, steps=5)
    pre[1][chunk] = engine_prefill_chunk_ms(lm, text_ids[:4 * chunk], chunk)
    dec = {b: {c: engine_decode_ms(lm, text_ids[:c], b) for c in (128, 512)} for b in (1, 4)}
    return dc(prof, prefill_ms=pre, decode_ms=dec,
              extra={**prof.extra, "calibration": f"beside the live run: prefill forwards of {sorted(pre[1])} tokens, "
                                                  f"the {chunk}-token one as the engine's own chunked passes (a "
                                                  f"{4 * chunk}-token prompt in 4); decode-only engine iterations "
                                                  "at batch 1/4, context 128/512"})


def live_section(profiles, trace, a, kv, start: float, window_s: float) -> dict:
    """The live loopback replay of ``LIVE_POLICIES`` and the simulator on the very same requests."""
    from leanml.serve.sim.llm_live import p99_errors, replay_live_llm, trace_prompts
    from leanml.serve.sim.llm_policies import LLMStaticPolicy, cheapest, most_accurate, offline_batching
    from leanml.serve.sim.llm_sim import LLMSimulator, summarize
    from leanml.serve.sim.replay_inputs import llm_replay_inputs
    from leanml.serve.variants.base import Variant
    from leanml.serve.variants.llm import PLAIN_VARIANTS, CausalLM, load_smollm2, variant_model

    live_start = busiest_start(trace, start, window_s, a.live_seconds)
    inp = llm_replay_inputs(profiles, trace, load=a.live_load, engines=1, kv_bytes=kv, window_s=a.live_seconds,
                            seed=a.seed, slo_x=a.slo_x, start_s=live_start, token_scale=a.live_token_scale,
                            max_output=a.live_max_output)
    base, tok = load_smollm2()
    build = {n: (lambda n=n: variant_model(base, n)) for n in PLAIN_VARIANTS}
    s = inp.settings
    names = {"static-accurate": most_accurate(profiles),
             "static-fast": cheapest(profiles, s.prior.prompt_tokens, s.prior.output_tokens)}
    lm0 = CausalLM(base, tok)
    texts, got = trace_prompts(lm0, [r.prompt for r in inp.requests], seed=a.seed)
    text_ids = lm0._ids(" ".join(texts))
    reqs = [replace(r, prompt=n) for r, n in zip(inp.requests, got, strict=True)]  # what was actually sent
    out = {"window_start_s": live_start, "window_s": a.live_seconds, "token_scale": a.live_token_scale,
           "max_output": a.live_max_output, "load": a.live_load, "engines": 1, "timescale": inp.timescale.to_json(),
           "requests": len(reqs), "prompt_tokens_mean": round(float(np.mean(got)), 1),
           "output_tokens_mean": round(float(np.mean([r.output for r in reqs])), 1), "policies": {}}
    print(f"\n## live on loopback: {inp.timescale.text()}; prompts x{a.live_token_scale}, outputs <= "
          f"{a.live_max_output}; {len(reqs)} requests, one engine", flush=True)
    for pol in a.live_policies.split(","):
        v = names[pol]
        if v not in build:
            print(f"  {pol}: variant {v} has no live build here; skipped")
            continue
        b, c = offline_batching(profiles[v], s)
        b, c = a.live_batch or b, a.live_chunk or c  # the live check exercises a running batch and chunked
        # prefill (the offline rule picks one at a time with whole prompts under a TPOT SLO this tight)
        model = build[v]().eval()
        variant = Variant(v, CausalLM(model, tok), v)
        cal_prof = calibrated(model, variant.model, profiles[v], text_ids, max(got), c)
        t0 = time.perf_counter()
        live = replay_live_llm(variant, reqs, texts, batch=b, chunk=c, kv_budget_bytes=kv, profile=profiles[v],
                               queue=a.queue)
        wall = time.perf_counter() - t0
        row = {"variant": v, "batch": b, "chunk": c, "live_wall_s": round(wall, 1), "live": summarize(live, inp.span_s)}
        # the simulator twice on the very same requests: costs from the profile file, and re-measured beside the run
        for key, profs in (("file_profile", profiles), ("calibrated", {**profiles, v: cal_prof})):
            sim = LLMSimulator(profs, engines=1, kv_budget_bytes=kv, seed=a.seed, queue=a.queue)
            simo = sim.run(LLMStaticPolicy(list(profs), profiles=profs, settings=s, variant=v, batching=(b, c)), reqs,
                           tick_s=10.0)
            row[key] = {**p99_errors(simo, live), "sim": summarize(simo, inp.span_s)}
        row["calibrated"]["costs"] = {"prefill_ms": cal_prof.prefill_ms, "decode_ms": cal_prof.decode_ms}
        row.update({k: row["calibrated"][k] for k in ("ttft_p99_error", "e2e_p99_error")})
        out["policies"][pol] = row
        print(f"  {pol} ({v}, batch {b}, chunk {c}): calibrated {json.dumps(p99_view(row['calibrated']))}; "
              f"file profile {json.dumps(p99_view(row['file_profile']))}", flush=True)
    errs = [e for p in out["policies"].values() for e in (p["ttft_p99_error"], p["e2e_p99_error"]) if e is not None]
    out["sim_p99_error"] = round(max(errs), 4) if errs else None
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one load, a 10-minute window, 2 seeds, 40 s live")
    ap.add_argument("--profiles", type=Path, default=DEFAULT_PROFILES)
    ap.add_argument("--trace", default="azure_llm_code")
    ap.add_argument("--engines", type=int, default=2)
    ap.add_argument("--kv-gib", type=float, default=1.0, help="KV-cache budget per engine (GiB)")
    ap.add_argument("--load", type=float, default=1.0, help="headline load x the most accurate variant's capacity")
    ap.add_argument("--queue", choices=("edf", "fifo"), default="edf",
                    help="engines' admission and prefill order, in the simulator and live: earliest TTFT deadline "
                    "first (default) or arrival order")
    ap.add_argument("--slo-x", type=float, default=3.0, help="SLOs as this multiple of lone-request TTFT/TPOT")
    ap.add_argument("--seeds", type=int, default=None, help="thinning/noise seeds per setting (default 6, quick 2)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the live window")
    ap.add_argument("--no-live", action="store_true", help="simulate only")
    ap.add_argument("--live-only", action="store_true",
                    help="run only the live check and put it into the existing --out file (the simulated grid of an "
                         "earlier run stays; keeps each run under the benchmark lock's 10 minutes)")
    ap.add_argument("--live-seconds", type=float, default=None, help="live window (default 150 s, quick 40 s)")
    ap.add_argument("--live-load", type=float, default=1.0, help="live load x one engine's capacity")
    ap.add_argument("--live-token-scale", type=float, default=0.125, help="live prompts = trace prompts x this")
    ap.add_argument("--live-max-output", type=int, default=48, help="live outputs clipped to this many tokens")
    ap.add_argument("--live-policies", default=",".join(LIVE_POLICIES))
    ap.add_argument("--live-batch", type=int, default=4,
                    help="running-batch cap of the live engine and of its simulation (0: the policy's offline rule)")
    ap.add_argument("--live-chunk", type=int, default=128,
                    help="prefill chunk of the live engine and of its simulation (0: the policy's offline rule; "
                         "default 128, the chunk of the earlier live runs)")
    ap.add_argument("--device", default=None,
                    help="a leanml.hw catalog device id (e.g. h100_sxm): costs predicted by leanml.hw.llm for it, "
                         "quality from --profiles; simulator only (default: the measured profiles of this machine)")
    ap.add_argument("--out", type=Path, default=RESULTS / "serve_llm_replay.json")
    a = ap.parse_args(argv)
    from leanml.io import atomic_write_text
    from leanml.serve.control.llm_profiles import FULL, load_llm_profiles, profiles_for_device
    from leanml.serve.sim.llm_policies import most_accurate
    from leanml.serve.workload.timescale import drift_window
    from leanml.serve.workload.traces import load_trace

    if not a.profiles.exists():
        sys.exit(f"--profiles: {a.profiles} does not exist; measure it with "
                 "`python benchmarks/llm_profiles_measure.py` (or pass another LLM profile file)")
    if a.engines < 1 or a.kv_gib <= 0 or a.load <= 0 or a.slo_x <= 0:
        sys.exit("--engines must be >= 1; --kv-gib, --load and --slo-x positive")
    a.seeds = a.seeds or (2 if a.quick else 6)
    a.live_seconds = a.live_seconds or (40.0 if a.quick else 150.0)
    if (a.seeds < 1 or a.live_seconds <= 0 or not 0 < a.live_token_scale <= 1 or a.live_max_output < 1
            or a.live_batch < 0 or a.live_chunk < 0):
        sys.exit("--seeds >= 1, --live-seconds > 0, --live-token-scale in (0, 1], --live-max-output >= 1, "
                 "--live-batch and --live-chunk >= 0")
    try:
        profiles = profiles_for_device(load_llm_profiles(a.profiles), a.device)
    except (KeyError, ValueError) as e:  # an unknown catalog id names the known ones
        sys.exit(f"--device {a.device}: {e}")
    if a.device is not None:
        a.no_live = True  # the live engine runs on this machine only
    trace = load_trace(a.trace)
    if trace.context_tokens is None or trace.generated_tokens is None:
        sys.exit(f"--trace {a.trace}: needs prompt and generated token counts per request")
    best_acc = profiles[most_accurate(profiles)].accuracy(FULL)
    kv = a.kv_gib * (1 << 30)
    window_s = 600.0 if a.quick else 1200.0
    start = drift_window(trace, window_s, 120.0)
    for n, p in profiles.items():
        print(f"profile {n} ({p.source} on {p.device}; costs: {p.extra.get('cost_source', 'measured')}): "
              "accuracy by KV cap "
              f"{({c: round(p.accuracy(c), 4) for c in p.kv_caps()})}, prefill {p.prefill_time_ms(512) / 512:.3f} "
              f"ms/token at 512, decode step {p.step_ms(1, 1024):.1f} ms (batch 1) / {p.step_ms(16, 1024):.1f} ms "
              "(batch 16) at 1,024 tokens of context")
    if a.live_only:
        if not a.out.exists():
            sys.exit(f"--live-only: {a.out} does not exist; run the simulated grid first (--no-live)")
        out = json.loads(a.out.read_text())
        live = live_section(profiles, trace, a, kv, start, window_s)
        out.update({"sim_p99_error": live["sim_p99_error"], "sim_p99_error_reason": None, "live": live,
                    "live_load_average": [round(x, 2) for x in os.getloadavg()]})
        atomic_write_text(a.out, json.dumps(out, indent=1, default=float))
        print(json.dumps({k: out.get(k) for k in ("goodput_vs_infaas", "goodput_vs_static_accurate",
                                                  "accuracy_gap_points", "sim_p99_error", "headline_load")}))
        return out
    loads = [a.load] if a.quick else sorted({0.5, a.load, 2.0})
    grid, head = [], None
    for load in loads:
        for slack in ([0.01] if a.quick else [0.01, 0.03]):
            cell = sim_cell(profiles, trace, load, slack, a, kv, best_acc, window_s, start)
            rep = cell.pop("_rep0")
            print(f"\n## load {load} x capacity ({cell['capacity_rps']:.3f} req/s), accuracy target best - "
                  f"{slack * 100:.0f} point(s), {a.seeds} seeds ({sum(cell['requests_per_seed'])} requests)")
            print("seed 0: " + rep.timescale.text())
            print(table({n: r for n, r in cell["policies_seed0"].items() if n != "ceiling"}))
            print(f"ceiling (an LP bound no policy can beat, leanml.serve.sim.llm_bound): {cell['ceiling_rps']:.4g} "
                  f"req/s over the seeds; share of it: {cell['share_of_ceiling']}")
            print(json.dumps({k: cell[k] for k in ("goodput_vs_infaas", "goodput_vs_infaas_ci95",
                                                   "goodput_vs_static_accurate", "goodput_vs_static_accurate_ci95",
                                                   "accuracy_gap_points", "nocap_vs_infaas", "ceiling_vs_infaas")}))
            grid.append(cell)
            if load == a.load and slack == 0.01:
                head = cell
    live = None if a.no_live else live_section(profiles, trace, a, kv, start, window_s)
    out = {k: head[k] for k in ("goodput_vs_infaas", "goodput_vs_infaas_ci95", "goodput_vs_static_accurate",
                                "goodput_vs_static_accurate_ci95", "accuracy_gap_points")}
    out.update({"sim_p99_error": live["sim_p99_error"] if live else None,
                "sim_p99_error_reason": None if live else (
                    f"--device {a.device}: predicted costs, no live engine there" if a.device else "--no-live"),
                "device": a.device or "local", "profile_source": {n: p.source for n, p in profiles.items()},
                "headline_load": a.load, "seeds": a.seeds, "requests_headline": sum(head["requests_per_seed"]),
                "profiles": str(a.profiles), "engines": a.engines, "kv_gib": a.kv_gib, "slo_x": a.slo_x,
                "queue": a.queue,
                "quick": a.quick, "load_average": [round(x, 2) for x in os.getloadavg()], "live": live, "grid": grid})
    a.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(a.out, json.dumps(out, indent=1, default=float))
    last = {k: out[k] for k in ("goodput_vs_infaas", "goodput_vs_static_accurate", "accuracy_gap_points",
                                "sim_p99_error", "headline_load", "seeds", "requests_headline", "device",
                                "profile_source")}
    print(json.dumps(last))
    return out


if __name__ == "__main__":
    main()
