"""The replay study: the same trace through each policy, in the simulator or live, with one summary.

Policies (`POLICIES`): ``static-accurate`` and ``static-fast`` (one variant, all cores), ``infaas``
(the runtime's INFaaS-style `InfaasPolicy`, every variant, all cores shared), ``clipper`` (most
accurate variant, AIMD batch size), ``proteus`` (periodic MILP, offline profiles, Poisson, mean
rate) and ``adaptive`` (MILP + online profiling + measured burstiness + re-planning on drift).
Every policy sees the same requests with the same SLO: ``latency_ms`` and ``min_accuracy``, which
the INFaaS-style policy applies per request and the planned policies as a mean target.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from leanml.serve.config import Batching
from leanml.serve.sim.simulator import Simulator
from leanml.serve.types import SLO, VariantProfile

POLICIES = ("static-accurate", "static-fast", "infaas", "clipper", "proteus", "adaptive")


def most_accurate(profiles: dict[str, VariantProfile]) -> str:
    return max(profiles, key=lambda v: (profiles[v].accuracy, -profiles[v].latency.at(1, "p50")))


def fastest(profiles: dict[str, VariantProfile], max_batch: int = 32) -> str:
    """Highest throughput: least p50 time per example at the largest batch."""
    return min(profiles, key=lambda v: profiles[v].latency.at(max_batch, "p50") / max_batch)


@dataclass(frozen=True)
class GenerationPlan:
    """How a replay costs text generation: the tokens each trace request generates, and the profiles
    the policies plan and route with."""

    tokens: np.ndarray  # per request of the trace: its GeneratedTokens, clipped to 1..cap
    cap: int  # the length every profile was timed at (the shortest of them)
    longest_by_batch: dict[int, float]  # expected longest request of a batch of b
    policy_profiles: dict[str, VariantProfile]  # the profiles moved to those lengths (`at_tokens`)


def generation_plan(profiles: dict[str, VariantProfile], trace: Any) -> GenerationPlan:
    """Text generators in a replay: requests generate exactly their trace length (clipped to what the
    profiles were timed at), and policies see each profile at the expected longest request of a batch
    of each size, since a batch decodes until its longest row is done (at the mean length a planner
    overestimates batch capacity). Service times stay with each batch's actual longest request.
    Raises ValueError naming the variants whose profiles hold no generation timing."""
    from leanml.serve.types import expected_longest
    from leanml.serve.workload.traces import max_new_tokens

    missing = [n for n, p in profiles.items() if p.generation is None]
    if missing:
        raise ValueError(f"no generation timing (extra.generation) in the profiles of {missing}")
    cap = int(min(p.generation["tokens"] for p in profiles.values()))  # type: ignore[index]
    tokens = max_new_tokens(trace, cap)
    sizes = sorted({b for p in profiles.values() for b in p.latency.p50_ms} | {2})
    longest = expected_longest(tokens, sizes)
    return GenerationPlan(tokens, cap, longest, {n: p.at_tokens(longest) for n, p in profiles.items()})


def setup_policy(
    name: str, profiles: dict[str, VariantProfile], *, cores: int, accuracy_target: float | None,
    period_s: float = 5.0, max_batch: int = 32, batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32),
    policy_kw: dict[str, Any] | None = None,
) -> tuple[Any, dict[str, tuple[int, float, int]]]:
    """A fresh policy and its initial batching per variant ``(max_batch, max_wait_ms, concurrency)``."""
    from leanml.serve.control.policies_adaptive import AdaptivePolicy, ClipperAIMDPolicy, ProteusPolicy
    from leanml.serve.dataplane.routing import InfaasPolicy, StaticPolicy

    names = list(profiles)
    all_cores = {v: (max_batch, 0.0, cores) for v in names}
    if name == "static-accurate":
        return StaticPolicy(names, most_accurate(profiles)), all_cores
    if name == "static-fast":
        return StaticPolicy(names, fastest(profiles, max_batch)), all_cores
    if name == "infaas":
        return InfaasPolicy(names), all_cores
    if name == "clipper":
        return ClipperAIMDPolicy(names, most_accurate(profiles)), {v: (1, 0.0, cores) for v in names}
    kw = dict(accuracy_target=accuracy_target, period_s=period_s, cores=cores,
              batch_sizes=tuple(b for b in batch_sizes if b <= max_batch) or (max_batch,))
    start = {v: (max_batch, 0.0, 1) for v in names}
    if name == "proteus":
        return ProteusPolicy(names, **kw), start
    if name == "adaptive":
        return AdaptivePolicy(names, **kw, **(policy_kw or {})), start
    raise ValueError(f"unknown study policy {name!r}; choose from {', '.join(POLICIES)}")


def request_slo(name: str, latency_ms: float, accuracy_target: float | None) -> SLO:
    """Static baselines serve their variant whatever the accuracy need (that is what static means)."""
    if name.startswith("static") or name == "clipper":
        return SLO(latency_ms=latency_ms)
    return SLO(latency_ms=latency_ms, min_accuracy=accuracy_target)


def simulate(
    name: str, profiles: dict[str, VariantProfile], arrival_s: np.ndarray, *, cores: int, latency_ms: float,
    accuracy_target: float | None, seed: int = 0, true_profiles: dict[str, VariantProfile] | None = None,
    accuracy_at: Callable[[str, float], float] | None = None, period_s: float = 5.0,
    policy_kw: dict[str, Any] | None = None, tick_s: float = 1.0, overhead_ms: float = 0.0, max_batch: int = 32,
    knobs_for: Callable[[int], dict[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Any]:
    """One policy through the simulator: rows, reconfigurations, the policy object.

    ``knobs_for(i)``: request i's generation knobs (LLMs: ``max_new_tokens``, which sets its service time)."""
    pol, batching = setup_policy(name, profiles, cores=cores, accuracy_target=accuracy_target, period_s=period_s,
                                 policy_kw=policy_kw, max_batch=max_batch)
    sim = Simulator(profiles, pol, cores=cores, batching={v: Batching(b, w, 4096, c)
                                                          for v, (b, w, c) in batching.items()},
                    true_profiles=true_profiles, accuracy_at=accuracy_at, seed=seed, tick_s=tick_s,
                    overhead_ms=overhead_ms)
    rows = sim.run(arrival_s, slo=request_slo(name, latency_ms, accuracy_target), knobs_for=knobs_for)
    for r in rows:
        r["policy"] = name
    return rows, sim.reconfigs, pol


def summarize(rows: list[dict[str, Any]], duration_s: float, profiles: dict[str, VariantProfile] | None = None,
              ) -> dict[str, Any]:
    """Goodput, SLO violations, delivered accuracy, energy and latency percentiles of one run."""
    n = len(rows)
    ok = [r for r in rows if r.get("status") == 200]
    lat = np.array([r["latency_ms"] for r in ok], dtype=np.float64)
    met = sum(1 for r in rows if r.get("met_slo"))
    correct = [r["correct"] for r in ok if r.get("correct") is not None and np.isfinite(r.get("correct", np.nan))]
    prof_acc = [profiles[r["variant"]].accuracy for r in ok if profiles and r.get("variant") in profiles]
    energy = [r.get("energy_j") for r in ok]
    energy_ok = bool(energy) and all(e is not None and np.isfinite(e) for e in energy)
    return {
        "requests": n, "answered": len(ok), "goodput_rps": met / duration_s if duration_s > 0 else float("nan"),
        "slo_violation_rate": 1 - met / n if n else float("nan"),
        "refused": sum(1 for r in rows if r.get("status") in (429, 503) and r.get("outcome") != "expired"),
        "mean_accuracy_measured": float(np.mean(correct)) if correct else float("nan"),
        "mean_accuracy_profiled": float(np.mean(prof_acc)) if prof_acc else float("nan"),
        "energy_per_request_j": float(np.mean(energy)) if energy_ok else None,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
    }


def build_study_runtime(name: str, variants: dict[str, Any], *, cores: int, latency_ms: float,
                        accuracy_target: float | None, period_s: float = 5.0, deployment: str = "study",
                        max_batch: int = 32):
    """A fresh `Runtime` serving ``variants`` under study policy ``name``, with its `Controller` (or None)."""
    from leanml.serve.control.controller import Controller
    from leanml.serve.dataplane.runtime import Runtime

    profiles = {n: v.profile for n, v in variants.items()}
    missing = [n for n, p in profiles.items() if p is None]
    if missing:
        raise ValueError(f"variants {missing} have no profile; run `leanml serve profile` first")
    pol, batching = setup_policy(name, profiles, cores=cores, accuracy_target=accuracy_target, period_s=period_s,
                                 max_batch=max_batch)
    rt = Runtime(threads=cores)
    rt.add_deployment(deployment, variants, pol, batching=Batching(max_batch=64, max_wait_ms=0.0, max_queue=4096),
                      slo=request_slo(name, latency_ms, accuracy_target))
    for v, (b, w, c) in batching.items():
        rt.set_batching(deployment, Batching(b, w, 4096, c, True), variant=v)
    ctl = Controller(rt, deployment, pol) if pol.controlled else None
    return rt, ctl, pol


def finish_live_rows(rows: list[dict[str, Any]], name: str, profiles: dict[str, VariantProfile],
                     latency_ms: float) -> list[dict[str, Any]]:
    """Add the study columns (policy, SLO met, profiled accuracy, energy, outcome) to replayed rows."""
    for r in rows:
        ok = r["status"] == 200
        v = r.get("variant") if ok else None
        p = profiles.get(v) if v else None
        r.update(policy=name, arrival_s=r["due_s"], met_slo=bool(ok and r["latency_ms"] <= latency_ms),
                 accuracy=p.accuracy if p else float("nan"),
                 energy_j=p.energy_j_per_request if p and p.energy_j_per_request is not None else float("nan"),
                 outcome="ok" if ok else ("expired" if r["status"] == 503 and "passed" in str(r.get("reason"))
                                          else f"http_{r['status']}"))
        r.setdefault("correct", float("nan"))
    return rows


def run_live(
    name: str, variants: dict[str, Any], arrival_s: np.ndarray, payload: Callable[[int], Any], *, cores: int,
    latency_ms: float, accuracy_target: float | None, max_requests: int = 5000, max_duration_s: float = 60.0,
    period_s: float = 5.0, deployment: str = "study", timeout_s: float = 30.0,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Any]:
    """One policy live, server in this process (a thread; shares the GIL with the load generator:
    see `run_live_subprocess` for the isolated setup); rows, reconfigurations, the policy."""
    from leanml.serve.dataplane.http import BackgroundServer, build_app
    from leanml.serve.sim.replay import replay_http

    rt, ctl, pol = build_study_runtime(name, variants, cores=cores, latency_ms=latency_ms,
                                       accuracy_target=accuracy_target, period_s=period_s, deployment=deployment)
    with BackgroundServer(build_app(rt)) as url:
        try:
            rows = replay_http(url, arrival_s, payload, max_requests=max_requests, max_duration_s=max_duration_s,
                               timeout_s=timeout_s)
        finally:
            if ctl is not None:
                ctl.stop()
    rows = finish_live_rows(rows, name, {n: v.profile for n, v in variants.items()}, latency_ms)
    reconf = ctl.surface.reconfigs if ctl is not None and ctl.surface is not None else []
    return rows, reconf, pol


def run_live_subprocess(
    name: str, config: str, deployment: str, profile_file: str, arrival_s: np.ndarray,
    payload: Callable[[int], Any], *, cores: int, latency_ms: float, accuracy_target: float | None,
    max_requests: int = 5000, max_duration_s: float = 60.0, period_s: float = 5.0, timeout_s: float = 30.0,
    start_timeout_s: float = 180.0, max_batch: int = 32, gen_tokens: float | dict[int, float] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One policy live with the server in its own process (`serve_main`), the load generator here.

    ``gen_tokens``: text generators' profiles are moved to this many generated tokens per request (or per
    batch size, ``{b: tokens}``; `VariantProfile.at_tokens`) before the policy sees them, as in the simulation."""
    import json
    import os
    import socket
    import subprocess
    import sys
    import tempfile
    import time

    import httpx

    from leanml.serve.control.profiles import load_profiles
    from leanml.serve.sim.replay import replay_http

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fd, events = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    cmd = [sys.executable, "-m", "leanml.serve.sim.replay_study", "--config", config, "--deployment", deployment,
           "--profiles", profile_file, "--policy", name, "--cores", str(cores), "--slo-ms", str(latency_ms),
           "--port", str(port), "--events", events, "--period-s", str(period_s), "--max-batch", str(max_batch)]
    if gen_tokens is not None:
        cmd += ["--gen-tokens", json.dumps(gen_tokens)]
    if accuracy_target is not None:
        cmd += ["--accuracy-target", str(accuracy_target)]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"study server exited with code {proc.returncode} before serving")
            try:
                if httpx.get(url + "/healthz", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - t0 > start_timeout_s:
                raise RuntimeError(f"study server did not answer /healthz within {start_timeout_s} s")
            time.sleep(0.2)
        rows = replay_http(url, arrival_s, payload, max_requests=max_requests, max_duration_s=max_duration_s,
                           timeout_s=timeout_s)
    finally:
        proc.send_signal(2)  # SIGINT: uvicorn shuts down gracefully, the server writes its events
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    profiles = next(iter(load_profiles(profile_file).values()))
    rows = finish_live_rows(rows, name, profiles, latency_ms)
    try:
        with open(events) as f:
            reconf = json.load(f)
    except (OSError, ValueError):
        reconf = []
    finally:
        os.unlink(events)
    return rows, reconf


def serve_main(argv: list[str] | None = None) -> None:
    """``python -m leanml.serve.sim.replay_study ...``: serve one deployment under one study policy."""
    import argparse
    import json

    from leanml.io import atomic_write_text
    from leanml.serve.builder import VariantBuilder
    from leanml.serve.config import load_config
    from leanml.serve.control.profiles import load_profiles
    from leanml.serve.dataplane.http import build_app, serve

    ap = argparse.ArgumentParser(description="serve one deployment under one replay-study policy")
    ap.add_argument("--config", required=True)
    ap.add_argument("--deployment", required=True)
    ap.add_argument("--profiles", required=True)
    ap.add_argument("--policy", required=True, choices=POLICIES)
    ap.add_argument("--cores", type=int, required=True)
    ap.add_argument("--slo-ms", type=float, required=True)
    ap.add_argument("--accuracy-target", type=float, default=None)
    ap.add_argument("--period-s", type=float, default=5.0)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--gen-tokens", type=json.loads, default=None, help="tokens or {batch: tokens} (JSON)")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--events", required=True)
    a = ap.parse_args(argv)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    dc = load_config(a.config).deployments[a.deployment]
    variants = VariantBuilder(load_profiles(a.profiles)).build(dc, measure_missing=False)
    if a.gen_tokens is not None:  # JSON keys are strings; at_tokens takes {batch: tokens} or one number
        for v in variants.values():
            v.profile = v.profile.at_tokens(a.gen_tokens) if v.profile is not None else None
    rt, ctl, _ = build_study_runtime(a.policy, variants, cores=a.cores, latency_ms=a.slo_ms,
                                     accuracy_target=a.accuracy_target, period_s=a.period_s, max_batch=a.max_batch)
    try:
        serve(build_app(rt), host="127.0.0.1", port=a.port, log_level="error")
    finally:
        ev = []
        if ctl is not None:
            ctl.stop()
            ev = list(ctl.surface.reconfigs) if ctl.surface is not None else []
            ev += [{"time_s": float("nan"), "what": "error", "detail": e} for e in ctl.errors[:20]]
        atomic_write_text(a.events, json.dumps(ev, default=str))


if __name__ == "__main__":
    serve_main()
