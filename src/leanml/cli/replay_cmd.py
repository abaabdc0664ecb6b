"""`leanml serve replay`: replay a trace through serving policies, simulated and/or live, with a report.

The lead attaches `replay_command` to the `serve` group (``serve_app.command("replay")(replay_command)``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def replay_command(
    trace: str = typer.Option("azure_llm_code", help="Trace dataset name or CSV/JSONL file."),
    policy: list[str] = typer.Option(None, help="Policies to compare (repeatable); default: all six."),
    config: Path = typer.Option(Path("examples/adult.toml"), exists=True, dir_okay=False,
                                help="Deploy config whose deployment's variants are served."),
    deployment: str | None = typer.Option(None, help="Deployment in the config (default: the first)."),
    profiles: Path | None = typer.Option(None, help="Profile file (default: the config's profile_file)."),
    mode: str = typer.Option("both", help="sim, live or both."),
    rate: float | None = typer.Option(None, help="Mean request rate of the live replay (default: the trace's)."),
    load: float = typer.Option(0.6, help="Simulated mean load as a fraction of the most accurate variant's capacity."),
    seconds: float = typer.Option(30.0, help="Live window: the busiest this-many s of the (rescaled) trace."),
    max_requests: int = typer.Option(2000, help="Most requests per live replay."),
    slo_ms: float = typer.Option(100.0, help="Latency SLO of every request (ms)."),
    accuracy_slack: float = typer.Option(0.01, help="Accuracy target = best variant's accuracy minus this."),
    cores: int = typer.Option(0, help="Model-call threads (0 = all cores)."),
    out: Path = typer.Option(Path("replay_results"), help="Folder for Parquet rows, report and plots."),
) -> None:
    """Replay a trace through policies (static-accurate, static-fast, infaas, clipper, proteus, adaptive)."""
    import numpy as np

    from leanml.serve.builder import index_profiles
    from leanml.serve.config import ConfigError, load_config
    from leanml.serve.control.profiles import fingerprint, load_profiles
    from leanml.serve.sim.replay_inputs import replay_inputs, replay_payloads
    from leanml.serve.sim.replay_report import write_report
    from leanml.serve.sim.replay_study import POLICIES, run_live_subprocess, simulate, summarize
    from leanml.serve.variants.prototypes import get_prototype
    from leanml.serve.workload.traces import TraceError, load_trace, max_new_tokens, scale_to_rate

    if mode not in ("sim", "live", "both"):
        raise typer.BadParameter(f"--mode must be sim, live or both, got {mode!r}")
    pols = list(policy or POLICIES)
    bad = [p for p in pols if p not in POLICIES]
    if bad:
        raise typer.BadParameter(f"unknown policy {bad}; choose from {', '.join(POLICIES)}")
    try:
        cfg = load_config(config)
        tr = load_trace(trace)  # a public format is recognized by its columns: no column flags
    except (ConfigError, TraceError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    fmt = tr.info.get("format_note") or tr.info.get("format", "dataset")
    console.print(f"trace format: {fmt}")
    dep = deployment or next(iter(cfg.deployments))
    if dep not in cfg.deployments:
        raise typer.BadParameter(f"no deployment {dep!r} in {config}; it has {sorted(cfg.deployments)}")
    dc = cfg.deployments[dep]
    pfile = profiles or cfg.server.profile_file
    if pfile is None or not Path(pfile).exists():
        console.print(f"[red]error:[/red] no profile file ({pfile}); run `leanml serve profile --config {config}`")
        raise typer.Exit(2)
    by_fp = index_profiles(load_profiles(pfile))
    profs = {n: by_fp.get(fingerprint(dc.prototype, dc.params, n)) for n in dc.variants}
    missing = [n for n, p in profs.items() if p is None]
    if missing:
        console.print(f"[red]error:[/red] {pfile} has no profile for {missing} of deployment {dep!r} (or they were "
                      f"measured with other parameters); re-run `leanml serve profile --config {config}`")
        raise typer.Exit(2)
    cores = cores or (os.cpu_count() or 1)
    kind = get_prototype(dc.prototype).kind
    try:
        ri = replay_inputs(profs, tr, kind=kind, accuracy_slack=accuracy_slack, load=load, cores=cores)
    except ValueError as e:
        console.print(f"[red]error:[/red] {pfile}: {e}; re-run `leanml serve profile --config {config}`")
        raise typer.Exit(2) from None
    best, target, max_b, gp, profs = ri.best, ri.accuracy_target, ri.max_batch, ri.generation, ri.profiles
    runs: dict = {"sim": {}, "live": {}}
    summ: dict = {"sim": {}, "live": {}}
    recs: dict = {"sim": {}, "live": {}}
    if mode in ("sim", "both"):
        st = ri.sim_trace
        for p in pols:
            rows, rec, _ = simulate(p, profs, st.arrival_s, cores=cores, latency_ms=slo_ms, accuracy_target=target,
                                    period_s=ri.period_s, tick_s=ri.tick_s, true_profiles=ri.true_profiles,
                                    max_batch=max_b, knobs_for=ri.knobs_for())
            runs["sim"][p], recs["sim"][p] = rows, rec
            summ["sim"][p] = {**summarize(rows, st.duration_s, profs), "reconfigurations": len(rec)}
    if mode in ("live", "both"):
        lt = (scale_to_rate(tr, rate) if rate else tr).busiest(seconds)  # the busiest stretch of the trace
        try:
            make = replay_payloads(str(next(iter(profs.values())).extra.get("val") or ""), lt, kind,
                                   gp.cap if gp is not None else 32)
        except ValueError as e:
            raise typer.BadParameter(f"deployment {dc.name!r}: {e}") from None
        sent = max_new_tokens(lt, gp.cap) if gp is not None else None  # what each live request was asked to generate
        for p in pols:
            rows, rec = run_live_subprocess(p, str(config), dep, str(pfile), lt.arrival_s, make, cores=cores,
                                            latency_ms=slo_ms, accuracy_target=target, max_requests=max_requests,
                                            max_duration_s=seconds, max_batch=max_b,
                                            gen_tokens=gp.longest_by_batch if gp is not None else None)
            if sent is not None:
                for r in rows:
                    r["max_new_tokens"] = int(sent[r["id"]])
            runs["live"][p], recs["live"][p] = rows, rec
            summ["live"][p] = {**summarize(rows, max(lt.duration_s, 1e-9), profs), "reconfigurations": len(rec)}
    meta = {"trace": trace, "trace_format": fmt, "config": str(config), "deployment": dep, "latency_slo_ms": slo_ms,
            "accuracy_target": round(target, 4), "most_accurate": best, "cores": cores, "mode": mode,
            "max_batch": max_b}
    if gp is not None:
        meta["generated_tokens"] = (f"trace GeneratedTokens clipped to 1..{gp.cap}, generated exactly "
                                    f"(min_new_tokens = max_new_tokens); mean {gp.tokens.mean():.2f}; policies see "
                                    f"profiles at the expected longest of a batch: "
                                    + ", ".join(f"b={b} {t:.1f}" for b, t in gp.longest_by_batch.items()))
    if mode in ("sim", "both"):
        meta["sim_mean_rate_rps"] = round(load * ri.capacity_rps, 4)
    if mode in ("live", "both"):
        meta["live_window"] = f"busiest {seconds:g} s at mean rate {rate or tr.mean_rate:.4g} req/s: {len(lt)} requests"
    paths = write_report(out, runs, summ, recs, meta, stem=dep)
    for m, by_pol in summ.items():
        if not by_pol:
            continue
        t = Table(title=f"{dep} / {m}")
        for c in ("policy", "goodput/s", "SLO viol.", "accuracy", "p50 ms", "p99 ms"):
            t.add_column(c)
        for p, s in by_pol.items():
            acc = s["mean_accuracy_measured"]
            acc = acc if np.isfinite(acc) else s["mean_accuracy_profiled"]
            t.add_row(p, f"{s['goodput_rps']:.2f}", f"{s['slo_violation_rate']:.3f}", f"{acc:.4f}",
                      f"{s['p50_ms']:.1f}", f"{s['p99_ms']:.1f}")
        console.print(t)
    print(json.dumps({k: str(v) for k, v in paths.items()}))
