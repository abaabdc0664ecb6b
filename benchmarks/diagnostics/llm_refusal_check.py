"""Why a planned LLM policy refuses: refusals and engine busy share with and without the fall-through.

    OMP_NUM_THREADS=1 python benchmarks/diagnostics/llm_refusal_check.py [--queue fifo]    # ~1 min

Backs docs/planner.md ("Policies compared" and the run of 2026-12-07 12:10): seed 0 of the replay's headline
cell (Azure code trace, 20-minute drift window, load 1, 3x SLOs, best - 1 point, two engines, the committed
SmolLM2 profiles), adaptive and Proteus each with their fall-through on and off (`llm_planned._Planned.fall_through`),
INFaaS beside them; then adaptive with and without its capacity plan (`_Planned.capacity_plan`). Busy share: the
engines' summed iteration time over the window, per engine. Plans: adaptive's re-plans, how many of them
followed the capacity plan (with it on) or fell short of the demand (with it off: the p99 plan is what it
follows), and how many put `int8_wo` on both engines (an empty plan leaves both on it, the most accurate). ``--queue``:
the engines' order (EDF, the default, or FIFO: the figures of the 12:10 run were taken with FIFO engines).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queue", choices=("edf", "fifo"), default="edf", help="engines' admission/prefill order")
    a = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from leanml.serve.control.llm_profiles import load_llm_profiles
    from leanml.serve.sim.llm_policies import make_policies
    from leanml.serve.sim.llm_sim import LLMSimulator, summarize
    from leanml.serve.sim.replay_inputs import llm_replay_inputs
    from leanml.serve.workload.timescale import drift_window
    from leanml.serve.workload.traces import load_trace
    from serve_llm_replay import DEFAULT_PROFILES

    profiles = load_llm_profiles(DEFAULT_PROFILES)
    trace = load_trace("azure_llm_code")
    inp = llm_replay_inputs(profiles, trace, load=1.0, engines=2, kv_bytes=1 << 30, window_s=1200.0, seed=0,
                            slo_x=3.0, accuracy_slack=0.01, start_s=drift_window(trace, 1200.0, 120.0))
    print(f"{len(inp.requests)} requests over {inp.span_s:.0f} s, {a.queue} engines")
    print("| policy | fall-through | goodput req/s | refused | expired | busy share per engine | plans |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, fall, cap in (("llm-infaas", None, None), ("llm-proteus", False, None), ("llm-proteus", True, None),
                            ("llm-adaptive", False, False), ("llm-adaptive", True, False),
                            ("llm-adaptive", True, True)):
        (pol,) = make_policies(profiles, inp.settings, (name,))
        if fall is not None:
            pol.fall_through = fall
        if cap is not None:
            pol.capacity_plan = cap
        sim = LLMSimulator(profiles, engines=2, kv_budget_bytes=1 << 30, seed=0, queue=a.queue)
        busy: Counter[int] = Counter()
        start = sim._start

        def spy(ei, ev, seq, out, start=start, sim=sim, busy=busy):  # noqa: ANN001, ANN202
            was = sim.engines[ei].busy
            r = start(ei, ev, seq, out)
            if sim.engines[ei].busy and not was:
                busy[ei] += sim.engines[ei].busy_until - sim.now
            return r

        sim._start = spy  # type: ignore[method-assign]
        outs = sim.run(pol, inp.requests, tick_s=10.0)
        res = summarize(outs, inp.span_s)
        st = Counter(o.status for o in outs)
        share = ", ".join(f"{busy[e] / inp.span_s:.2f}" for e in range(2))
        plans = "-"
        if cap is not None:
            logs = sim.log
            short = sum(e["capacity_plan"] if cap else e["plan"]["goodput_rps"] < 0.999 * e["plan"]["demand_rps"]
                        for e in logs)
            # the engines a plan leaves idle run the most accurate variant (int8_wo): empty plans count too
            slow = sum(all(o.split("/")[0] == "int8_wo" for o in e["plan"]["engines"]) for e in logs)
            plans = (f"{len(logs)} re-plans, {short} {'on the capacity plan' if cap else 'short of the demand'}, "
                     f"{slow} with int8_wo on both engines")
        label = pol.label + (" (capacity plan)" if cap else "")
        print(f"| {label} | {'-' if fall is None else ('on' if fall else 'off')} | {res['goodput_rps']:.4f} | "
              f"{st['refused']} | {st['expired']} | {share} | {plans} |")


if __name__ == "__main__":
    main()
