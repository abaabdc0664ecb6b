"""The replay study: Azure code trace (bursty) through six serving policies, simulated and live.

    python benchmarks/serve_replay.py --quick            # adult only, short windows (< 1-2 min)
    python benchmarks/serve_replay.py                    # adult + cifar10, longer windows

Per prototype: build the variants (leanml.serve.variants) and measure their profiles on this
machine (one model thread per call: OMP_NUM_THREADS=1), rescale the Azure LLM code trace so its
mean load is ``--load`` x the most accurate variant's capacity on ``--cores`` cores (bursts then
overload it), run every policy through the simulator on that trace (and, in a full run, at every
load of the fixed grid --sweep-loads, reported beside the headline), then replay a shorter window
live against the real HTTP server on loopback, and simulate that same window (the requests as they
were sent) to measure the simulator's error. The simulator's request path is calibrated on the first
live run only (`leanml.serve.sim.simulator.fit_request_path_ms`), so the error of the other runs is out of
sample. Headline keys (final JSON line): goodput_vs_static_accurate, goodput_vs_infaas,
accuracy_gap_points (static most-accurate minus adaptive, points), sim_p99_error (mean relative error
of the simulated p99 over the live runs not used for calibration); from the simulated study of the
first prototype at --load (the live windows are bounded by this 2-core machine).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core per model call: workers = cores is meaningful

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def measured_variants(proto: str, quick: bool, cache: bool) -> tuple[dict, dict]:
    """Build the prototype's variants and measure profiles here (cached between --quick runs)."""
    import torch

    from leanml.data.root import cache_dir
    from leanml.serve.builder import VariantBuilder
    from leanml.serve.config import ProfileSettings, load_config
    from leanml.serve.control.profiles import load_profiles, save_profiles

    torch.set_num_threads(1)
    dc = load_config(ROOT / "examples" / f"{proto}.toml").deployments[proto]
    dc = replace(dc, profile=ProfileSettings(batch_sizes=(1, 4, 16, 32), reps=8 if quick else 20,
                                             val_n=dc.profile.val_n))
    path = cache_dir("serve_replay") / f"{proto}.profile.json"
    known = load_profiles(path) if cache and path.exists() else None
    b = VariantBuilder(known)
    variants = b.build(dc, measure_missing=True)
    if b.measured:
        save_profiles(path, {proto: {n: v.profile for n, v in variants.items()}})
    # Accuracy is the family's own: the whole adult test split, a seeded random 2,000 of the CIFAR-10
    # test split (the split is stored class by class, so the family samples rather than takes a prefix).
    return variants, {"profile_file": str(path), "reused_profiles": not b.measured}


def payloads(proto: str):
    """Real test examples with their labels (the label stays client-side: it measures delivered accuracy):
    `leanml.serve.sim.replay_inputs.replay_payloads`, the one builder of live replay requests."""
    from leanml.serve.sim.replay_inputs import replay_payloads

    return replay_payloads(f"{'adult' if proto == 'adult' else 'cifar10'}/test", None, "classify",
                           deployment_path="study")


def study(proto: str, a: argparse.Namespace) -> dict:
    from leanml.serve.sim.replay_inputs import replay_inputs
    from leanml.serve.sim.replay_study import POLICIES, run_live_subprocess, simulate, summarize
    from leanml.serve.workload.describe import describe
    from leanml.serve.workload.traces import load_trace, scale_to_rate

    t0 = time.perf_counter()
    variants, pinfo = measured_variants(proto, a.quick, cache=a.quick or a.reuse_profiles)
    profiles = {n: v.profile for n, v in variants.items()}
    t_prof = time.perf_counter() - t0
    trace = load_trace("azure_llm_code")
    # mean load = a.load x the best variant's capacity; the planners' period scales with the trace's
    # compression so they re-plan as often, in trace time, as Proteus does (every 5 s of a real-time trace
    # compressed to 5 minutes): all from the one replay-input builder
    inp = replay_inputs(profiles, trace, accuracy_slack=a.accuracy_slack, load=a.load, cores=a.cores,
                        window_s=a.sim_seconds)
    best, target, cap, sim_tr, period = inp.best, inp.accuracy_target, inp.capacity_rps, inp.sim_trace, inp.period_s
    runs = {"sim": {}, "live": {}, "sim-of-live": {}}
    recs = {"sim": {}, "live": {}, "sim-of-live": {}}
    summ = {"sim": {}, "live": {}, "sim-of-live": {}}
    for pol in POLICIES:
        rows, rec, _ = simulate(pol, profiles, sim_tr.arrival_s, cores=a.cores, latency_ms=a.slo_ms,
                                accuracy_target=target, seed=0, period_s=period, tick_s=period / 5)
        runs["sim"][pol], recs["sim"][pol] = rows, rec
        summ["sim"][pol] = {**summarize(rows, sim_tr.duration_s, profiles), "reconfigurations": len(rec)}
    overhead_ms, calibrated_on = None, None
    if a.live:
        from leanml.serve.sim.simulator import fit_request_path_ms

        live_tr = scale_to_rate(trace, a.live_rate).busiest(a.live_seconds)  # the busiest stretch: a burst
        make = payloads(proto)
        cfg = str(ROOT / "examples" / f"{proto}.toml")
        for pol in (POLICIES if not a.quick else ("static-accurate", "adaptive")):
            rows, rec = run_live_subprocess(pol, cfg, proto, pinfo["profile_file"], live_tr.arrival_s, make,
                                            cores=a.cores, latency_ms=a.slo_ms, accuracy_target=target,
                                            max_requests=a.live_max_requests, max_duration_s=a.live_seconds)
            # what the server was offered: the send times (the client lags its schedule when the CPU is busy)
            sent = np.sort([r["sent_s"] for r in rows])
            if overhead_ms is None:  # calibrate the simulator's request path on the first live run only:
                # the FIFO service time whose mean path time (client latency beyond the runtime's queue and
                # model time) matches this run's; the other runs then test the simulator out of sample
                path = [r["latency_ms"] - r["queue_ms"] - r["model_ms"]
                        if r["status"] == 200 and r.get("queue_ms") is not None else np.nan for r in rows]
                overhead_ms = fit_request_path_ms([r["sent_s"] for r in rows], path) \
                    if np.isfinite(path).any() else 0.0
                calibrated_on = pol
            runs["live"][pol], recs["live"][pol] = rows, rec
            summ["live"][pol] = {**summarize(rows, live_tr.duration_s, profiles), "reconfigurations": len(rec)}
            srows, srec, _ = simulate(pol, profiles, sent, cores=a.cores, latency_ms=a.slo_ms,
                                      accuracy_target=target, seed=1, overhead_ms=overhead_ms)
            runs["sim-of-live"][pol], recs["sim-of-live"][pol] = srows, srec
            summ["sim-of-live"][pol] = {**summarize(srows, live_tr.duration_s, profiles),
                                        "reconfigurations": len(srec)}
    s = summ["sim"]
    head = {
        "goodput_vs_static_accurate": s["adaptive"]["goodput_rps"] / max(s["static-accurate"]["goodput_rps"], 1e-9),
        "goodput_vs_infaas": s["adaptive"]["goodput_rps"] / max(s["infaas"]["goodput_rps"], 1e-9),
        "accuracy_gap_points": 100 * (s["static-accurate"]["mean_accuracy_profiled"]
                                      - s["adaptive"]["mean_accuracy_profiled"]),
    }
    if a.live:
        def errors(pols) -> dict[str, float | None]:
            errs: dict[str, list[float]] = {k: [] for k in ("p50_ms", "p99_ms", "goodput_rps")}
            for pol in pols:
                live, sim = summ["live"][pol], summ["sim-of-live"][pol]
                for k in errs:
                    if np.isfinite(live[k]) and live[k] > 0 and np.isfinite(sim[k]):
                        errs[k].append(abs(sim[k] - live[k]) / live[k])
            return {k: float(np.mean(v)) if v else None for k, v in errs.items()}

        # headline: runs the request-path calibration did not see (out of sample); in-sample kept beside
        out_of_sample = errors([p for p in summ["live"] if p != calibrated_on])
        in_sample = errors([calibrated_on])
        head.update({"sim_p50_error": out_of_sample["p50_ms"], "sim_p99_error": out_of_sample["p99_ms"],
                     "sim_goodput_error": out_of_sample["goodput_rps"],
                     "sim_p99_error_calibration_run": in_sample["p99_ms"]})
        live = summ["live"]
        if "adaptive" in live and "static-accurate" in live:
            head["live_goodput_vs_static_accurate"] = (live["adaptive"]["goodput_rps"]
                                                       / max(live["static-accurate"]["goodput_rps"], 1e-9))
            head["live_accuracy_gap_points"] = 100 * (live["static-accurate"]["mean_accuracy_measured"]
                                                      - live["adaptive"]["mean_accuracy_measured"])
        if "adaptive" in live and "infaas" in live:
            head["live_goodput_vs_infaas"] = live["adaptive"]["goodput_rps"] / max(live["infaas"]["goodput_rps"], 1e-9)
    from leanml.serve.sim.replay_report import write_report

    meta = {
        "trace": "azure_llm_code", "prototype": proto, "machine": f"{platform.machine()}, {os.cpu_count()} cores "
        "(shared)", "cores_used": a.cores, "latency_slo_ms": a.slo_ms, "accuracy_target": round(target, 4),
        "most_accurate": best, "capacity_most_accurate_rps": round(cap, 1),
        "sim_mean_rate_rps": round(sim_tr.mean_rate, 1), "sim_trace_seconds": round(sim_tr.duration_s, 2),
        "sim_requests": len(sim_tr), "planner_period_s": round(period, 3),
        "live_request_path_overhead_ms": overhead_ms, "request_path_calibrated_on": calibrated_on,
        "sim_trace_cv": round(describe(sim_tr)["cv_interarrival"], 2),
        "live_mean_rate_rps": a.live_rate if a.live else None, "live_window_s": a.live_seconds if a.live else None,
        "profiles": {n: {"accuracy": round(p.accuracy, 4), "p50_ms_b1": round(p.latency.at(1, "p50"), 3),
                         "p50_ms_b32": round(p.latency.at(32, "p50"), 3)} for n, p in profiles.items()},
        "profile_seconds": round(t_prof, 1), **pinfo,
    }
    paths = write_report(Path(a.out) / "serve_replay", runs, summ, recs, meta, stem=f"{proto}")
    sweep = load_sweep(proto, profiles, trace, cap, target, a) if a.sweep_loads else {}
    if sweep:
        from leanml.io import atomic_write_text

        md = Path(a.out) / "serve_replay" / f"{proto}_load_sweep.md"
        atomic_write_text(md, sweep_markdown(proto, sweep, meta))
        paths["load_sweep"] = md
    return {"headline": head, "summaries": summ, "meta": meta, "sweep": sweep,
            "files": {k: str(v) for k, v in paths.items()}}


def load_sweep(proto: str, profiles: dict, trace, cap: float, target: float, a: argparse.Namespace) -> dict:
    """Every policy, simulated, at each mean load of the fixed grid ``--sweep-loads`` (x the most accurate
    variant's capacity): the headline stays at ``--load``; this shows how the comparison moves with load."""
    from leanml.serve.sim.replay_inputs import replay_inputs
    from leanml.serve.sim.replay_study import POLICIES, simulate, summarize

    out = {}
    for load in a.sweep_loads:
        inp = replay_inputs(profiles, trace, accuracy_slack=a.accuracy_slack, load=load, cores=a.cores,
                            window_s=a.sim_seconds)
        tr, period = inp.sim_trace, inp.period_s
        by = {}
        for pol in POLICIES:
            rows, rec, _ = simulate(pol, profiles, tr.arrival_s, cores=a.cores, latency_ms=a.slo_ms,
                                    accuracy_target=target, seed=0, period_s=period, tick_s=period / 5)
            by[pol] = {**summarize(rows, tr.duration_s, profiles), "reconfigurations": len(rec)}
        sa, inf, ad = (by[p]["goodput_rps"] for p in ("static-accurate", "infaas", "adaptive"))
        out[str(load)] = {"mean_rate_rps": tr.mean_rate, "summaries": by,
                          "goodput_vs_static_accurate": ad / max(sa, 1e-9), "goodput_vs_infaas": ad / max(inf, 1e-9),
                          "accuracy_gap_points": 100 * (by["static-accurate"]["mean_accuracy_profiled"]
                                                        - by["adaptive"]["mean_accuracy_profiled"])}
    return out


def sweep_markdown(proto: str, sweep: dict, meta: dict) -> str:
    lines = [f"# {proto}: simulated replay at each load of a fixed grid", "",
             f"Load = mean rate / capacity of the most accurate variant ({meta['most_accurate']}, "
             f"{meta['capacity_most_accurate_rps']} req/s on {meta['cores_used']} cores); SLO "
             f"{meta['latency_slo_ms']} ms, accuracy target {meta['accuracy_target']}. Goodput in req/s.", "",
             "| load | rate/s | " + " | ".join(next(iter(sweep.values()))["summaries"]) +
             " | adaptive / static-accurate | adaptive / infaas | accuracy gap (points) |",
             "|---" * (len(next(iter(sweep.values()))["summaries"]) + 5) + "|"]
    for load, r in sweep.items():
        lines.append(f"| {load} | {r['mean_rate_rps']:.0f} | "
                     + " | ".join(f"{s['goodput_rps']:.0f} ({s['mean_accuracy_profiled']:.4f})"
                                  for s in r["summaries"].values())
                     + f" | {r['goodput_vs_static_accurate']:.2f} | {r['goodput_vs_infaas']:.2f} | "
                       f"{r['accuracy_gap_points']:.2f} |")
    lines += ["", "Cells: goodput (mean delivered accuracy, profiled)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="adult only, short windows, cached profiles")
    ap.add_argument("--prototypes", default=None, help="comma-separated (default: adult; full: adult,cifar10)")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--slo-ms", type=float, default=100.0)
    ap.add_argument("--accuracy-slack", type=float, default=0.01, help="target = best accuracy - this")
    ap.add_argument("--load", type=float, default=0.6, help="mean load as a fraction of the best variant's capacity")
    ap.add_argument("--sweep-loads", default=None,
                    help="comma-separated loads also simulated (default: 0.3,0.6,1.2,2.4,4.8; none with --quick; "
                         "'' for none)")
    ap.add_argument("--sim-seconds", type=float, default=None)
    ap.add_argument("--live", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--live-rate", type=float, default=3.0,
                    help="mean requests/s of the live replay (the trace's own rate is 2.6/s, peaks 67/s)")
    ap.add_argument("--live-seconds", type=float, default=None)
    ap.add_argument("--live-max-requests", type=int, default=4000)
    ap.add_argument("--reuse-profiles", action="store_true",
                    help="reuse profiles measured here by an earlier run (cached); --quick always does")
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args(argv)
    a.sim_seconds = a.sim_seconds or (60.0 if a.quick else 600.0)
    if a.sweep_loads is None:
        a.sweep_loads = "" if a.quick else "0.3,0.6,1.2,2.4,4.8"
    a.sweep_loads = [float(x) for x in a.sweep_loads.split(",") if x.strip()]
    a.live_seconds = a.live_seconds or (15.0 if a.quick else 30.0)
    protos = (a.prototypes or ("adult" if a.quick else "cifar10,adult")).split(",")
    t0 = time.perf_counter()
    results, errors = {}, {}
    for p in protos:
        try:
            results[p] = study(p, a)
        except Exception as e:  # one prototype failing must not lose the others' results
            errors[p] = f"{type(e).__name__}: {e}"
            print(f"prototype {p} failed: {errors[p]}", file=sys.stderr)
    if not results:
        raise SystemExit(f"every prototype failed: {errors}")
    first = results[next(iter(results))]["headline"]
    try:
        from rich.console import Console
        from rich.table import Table

        con = Console()
        for p, r in results.items():
            for mode, by_pol in r["summaries"].items():
                if not by_pol:
                    continue
                t = Table(title=f"{p} / {mode}")
                for c in ("policy", "goodput/s", "SLO viol.", "acc (measured)", "acc (profiled)", "p50 ms",
                          "p99 ms", "reconf."):
                    t.add_column(c)
                for pol, s in by_pol.items():
                    t.add_row(pol, f"{s['goodput_rps']:.1f}", f"{s['slo_violation_rate']:.3f}",
                              f"{s['mean_accuracy_measured']:.4f}", f"{s['mean_accuracy_profiled']:.4f}",
                              f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}", str(s["reconfigurations"]))
                con.print(t)
    except ImportError:
        pass
    out = {**first, "source": f"simulated study of {next(iter(results))} with profiles measured on this machine",
           "errors": errors,
           "per_prototype": {p: r["headline"] for p, r in results.items()},
           "load_sweep": {p: {load: {k: v for k, v in r.items() if k != "summaries"}
                              for load, r in res["sweep"].items()} for p, res in results.items()},
           "headline_load": a.load,
           "targets": {"goodput_vs_static_accurate": ">= 2", "goodput_vs_infaas": ">= 1.3",
                       "accuracy_gap_points": "<= 1"},
           "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
           "quick": a.quick, "wall_s": round(time.perf_counter() - t0, 1)}
    from leanml.io import atomic_write_text

    atomic_write_text(Path(a.out) / "serve_replay.json", json.dumps(out, indent=1, default=str))
    print(json.dumps(out, default=str))
    return out


if __name__ == "__main__":
    main()
