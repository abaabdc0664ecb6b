"""`make demo` section: a bursty trace through five serving policies, in the discrete-event simulator.

The Azure LLM code trace (from the data root; a synthetic Gamma-bursty trace with the same CV and
mean rate, said so, when the data root is missing) is rescaled so that its mean load is ``load`` x
the capacity of the most accurate variant on ``cores`` cores (the replay study's rule: the bursts
then overload it), and replayed in `leanml.serve.sim.simulator` with the variant profiles shipped in
``examples/profiles/`` under static-accurate, static-fast, INFaaS-style greedy, Proteus-style
periodic MILP and the adaptive policy. Every request asks for ``slo_ms`` and an accuracy of the best
variant minus ``accuracy_slack`` (greedy applies it per request, the planners as a mean; the static
baselines serve their one variant regardless). No model runs: only the profiles are used, so the
section takes seconds.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

DEMO_POLICIES = ("static-accurate", "static-fast", "infaas", "proteus", "adaptive")
AZURE_CODE = {"name": "azure_llm_code", "requests": 8819, "mean_rate_rps": 2.57, "cv_interarrival": 13.2}


def shipped_profile_file(prototype: str = "cifar10") -> Path:
    """``examples/profiles/<prototype>.profile.json`` of this checkout (FileNotFoundError if absent)."""
    import leanml

    path = Path(leanml.__file__).resolve().parents[2] / "examples" / "profiles" / f"{prototype}.profile.json"
    if not path.exists():
        raise FileNotFoundError(f"no shipped profile file {path}; run `leanml serve profile --config "
                                f"examples/{prototype}.toml` in a leanml checkout")
    return path


def demo_trace() -> tuple[Any, str]:
    """The Azure code trace from the data root, else a synthetic stand-in; (trace, note saying which)."""
    from leanml.data.errors import DatasetError
    from leanml.serve.workload.traces import TraceError, gamma_bursty, load_trace

    try:
        return load_trace(AZURE_CODE["name"]), "Azure LLM inference trace, code service (from the data root)"
    except (DatasetError, TraceError, OSError) as e:
        first = str(e).splitlines()[0]
        tr = gamma_bursty(AZURE_CODE["mean_rate_rps"], AZURE_CODE["cv_interarrival"], n=AZURE_CODE["requests"],
                          seed=0, name="synthetic-bursty")
        return tr, (f"SYNTHETIC trace: the Azure code trace is not available ({first}); Gamma renewal "
                    f"arrivals with its measured mean rate and CV of gaps ({AZURE_CODE['mean_rate_rps']}/s, "
                    f"CV {AZURE_CODE['cv_interarrival']}), {AZURE_CODE['requests']} requests")


def run_demo_replay(out: Path, *, prototype: str = "cifar10", profile_file: Path | None = None, trace: Any = None,
                    trace_note: str = "", load: float = 0.6, cores: int = 2, slo_ms: float = 100.0,
                    accuracy_slack: float = 0.01, policies: tuple[str, ...] = DEMO_POLICIES) -> dict[str, Any]:
    """Simulate every policy on the rescaled trace; write the report under ``out``; return the summaries."""
    from leanml.serve.control.profiles import load_profiles
    from leanml.serve.sim.replay_inputs import replay_inputs
    from leanml.serve.sim.replay_report import write_report
    from leanml.serve.sim.replay_study import simulate, summarize

    t0 = time.perf_counter()
    pfile = Path(profile_file) if profile_file is not None else shipped_profile_file(prototype)
    by_dep = load_profiles(pfile)
    if prototype not in by_dep:
        raise ValueError(f"profile file {pfile} has no deployment {prototype!r} (it has {sorted(by_dep)})")
    profs = by_dep[prototype]
    if trace is None:
        trace, trace_note = demo_trace()
    ri = replay_inputs(profs, trace, accuracy_slack=accuracy_slack, load=load, cores=cores)
    best, target, cap, st, period = ri.best, ri.accuracy_target, ri.capacity_rps, ri.sim_trace, ri.period_s
    runs: dict[str, dict[str, list]] = {"sim": {}}
    recs: dict[str, dict[str, list]] = {"sim": {}}
    summ: dict[str, dict[str, dict[str, Any]]] = {"sim": {}}
    for pol in policies:
        rows, rec, _ = simulate(pol, ri.profiles, st.arrival_s, cores=cores, latency_ms=slo_ms,
                                accuracy_target=target, seed=0, period_s=period, tick_s=ri.tick_s,
                                max_batch=ri.max_batch)
        runs["sim"][pol], recs["sim"][pol] = rows, rec
        summ["sim"][pol] = {**summarize(rows, st.duration_s, profs), "reconfigurations": len(rec)}
    meta = {
        "trace": trace.name, "trace_note": trace_note, "profile_file": str(pfile), "deployment": prototype,
        "load_rule": f"mean rate = {load} x the most accurate variant's capacity on {cores} cores",
        "most_accurate": best, "capacity_most_accurate_rps": round(cap, 1), "sim_mean_rate_rps": round(st.mean_rate, 1),
        "sim_trace_seconds": round(st.duration_s, 3), "requests": len(st), "latency_slo_ms": slo_ms,
        "accuracy_target": round(target, 4), "planner_period_s": round(period, 3), "cores": cores,
        "accuracy_note": "mean delivered accuracy = profiled accuracy of the variant that answered, "
                         "averaged over answered requests",
    }
    paths = write_report(Path(out), runs, summ, recs, meta, stem=f"{prototype}_demo")
    return {"summaries": summ["sim"], "meta": meta, "files": {k: str(v) for k, v in paths.items()},
            "wall_s": time.perf_counter() - t0}


def replay_section(out: Path, console: Any, **kw: Any) -> dict[str, Any] | None:
    """The demo section: run, print the comparison table and where the report is; None if no profiles."""
    from rich.table import Table

    try:
        res = run_demo_replay(Path(out) / "serve_replay", **kw)
    except FileNotFoundError as e:
        console.print(f"[yellow]skipped:[/yellow] {e}")
        return None
    m = res["meta"]
    console.print(f"trace: {m['trace_note']}")
    console.print(f"{m['requests']} requests rescaled to {m['sim_mean_rate_rps']}/s ({m['load_rule']}); "
                  f"SLO {m['latency_slo_ms']:g} ms, accuracy target {m['accuracy_target']:.4f} "
                  f"(best variant {m['most_accurate']} minus 1 point); profiles: {m['profile_file']}")
    t = Table(title=f"{m['deployment']}: simulated replay", title_justify="left")
    t.add_column("policy", no_wrap=True, min_width=len("static-accurate"))
    for c in ("goodput/s", "SLO viol.", "accuracy", "J/request", "refused"):
        t.add_column(c, justify="right", no_wrap=True)
    for pol, s in res["summaries"].items():
        e = s["energy_per_request_j"]
        t.add_row(pol, f"{s['goodput_rps']:.0f}", f"{s['slo_violation_rate']:.1%}",
                  f"{s['mean_accuracy_profiled']:.4f}", f"{e:.3g}" if e is not None else "unavailable",
                  str(s["refused"]))
    console.print(t)
    console.print("accuracy: mean profiled accuracy of the answering variants; J/request 'unavailable' where "
                  "the profiles were measured without energy counters (no RAPL)")
    console.print(f"report (with p50/p99 latency and plots): {res['files']['report']} ({res['wall_s']:.1f} s)")
    return res
