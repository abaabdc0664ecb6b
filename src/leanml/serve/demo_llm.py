"""`make demo` section: the LLM setting, a short simulated replay of the Azure code trace at its real time scale.

The measured SmolLM2-135M profiles of this checkout (`benchmarks/results/llm_profiles/`, written by
`benchmarks/llm_profiles_measure.py`: prefill and decode-step costs on this CPU, next-token accuracy with
the whole context and with KV caps) drive the continuous-batching simulator (`leanml.serve.sim.llm_sim`)
over the trace's 10-minute drift window, thinned on its own clock to ``load`` x the most accurate
variant's capacity on ``engines`` engines, through the five LLM policies of the policy registry
(static-accurate, static-fast, INFaaS-style, Proteus-style, adaptive). The inputs come from the one
LLM replay builder (`leanml.serve.sim.replay_inputs.llm_replay_inputs`) and the policies run through
`leanml.serve.sim.llm_replay.run_llm_policies`, as in `benchmarks/serve_llm_replay.py`. No model runs: a
few seconds.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

DEMO_LLM_POLICIES = ("llm-static-accurate", "llm-static-fast", "llm-infaas", "llm-proteus", "llm-adaptive")


def llm_profile_file() -> Path:
    """The measured SmolLM2 LLM profiles of this checkout (FileNotFoundError naming how to make them)."""
    import leanml

    path = (Path(leanml.__file__).resolve().parents[2] / "benchmarks" / "results" / "llm_profiles"
            / "smollm2.llm_profile.json")
    if not path.exists():
        raise FileNotFoundError(f"no LLM profile file {path}; measure it with "
                                "`python benchmarks/llm_profiles_measure.py` in a leanml checkout")
    return path


def run_llm_demo(*, profile_file: Path | None = None, trace: Any = None, load: float = 2.0, engines: int = 2,
                 accuracy_slack: float = 0.01, window_s: float = 600.0, seed: int = 0,
                 policies: tuple[str, ...] = DEMO_LLM_POLICIES) -> dict[str, Any]:
    """Simulate ``policies`` on the LLM replay; per policy its summary (`llm_replay.run_llm_policies`), plus the
    setting."""
    from leanml.serve.control.llm_profiles import FULL, load_llm_profiles
    from leanml.serve.sim.llm_policies import most_accurate
    from leanml.serve.sim.llm_replay import run_llm_policies
    from leanml.serve.sim.replay_inputs import llm_replay_inputs
    from leanml.serve.workload.traces import load_trace

    t0 = time.perf_counter()
    pfile = Path(profile_file) if profile_file is not None else llm_profile_file()
    profiles = load_llm_profiles(pfile)
    trace = trace if trace is not None else load_trace("azure_llm_code")
    kv = float(1 << 30)
    inp = llm_replay_inputs(profiles, trace, load=load, engines=engines, kv_bytes=kv, window_s=window_s, seed=seed,
                            accuracy_slack=accuracy_slack)
    out = run_llm_policies(profiles, inp.requests, inp.settings, engines=engines, kv_bytes=kv, seed=seed,
                           span_s=inp.span_s, policies=policies)
    best = most_accurate(profiles)
    return {"summaries": out, "timescale": inp.timescale, "best": best, "best_accuracy": profiles[best].accuracy(FULL),
            "accuracy_target": inp.settings.accuracy_target, "capacity_rps": inp.capacity_rps, "load": load,
            "engines": engines, "profile_file": str(pfile), "wall_s": time.perf_counter() - t0}


def llm_replay_section(console: Any, **kw: Any) -> dict[str, Any] | None:
    """Print the LLM replay's table (goodput, SLO attainment, mean accuracy per policy); None without profiles
    or without the trace."""
    from rich.table import Table

    from leanml.data.errors import DatasetError
    from leanml.serve.workload.traces import TraceError

    try:
        res = run_llm_demo(**kw)
    except (FileNotFoundError, DatasetError, TraceError) as e:
        console.print(f"[yellow]skipped the LLM replay:[/yellow] {str(e).splitlines()[0]}")
        return None
    console.print(f"LLM setting: SmolLM2-135M variants on {res['engines']} continuous-batching engines; "
                  f"{res['timescale'].text()}")
    console.print(f"load {res['load']} x the capacity of {res['best']} ({res['capacity_rps']:.3f} req/s); SLOs: TTFT "
                  f"<= max(1 s, 3 x lone prefill), TPOT <= 3 x a lone decode step; accuracy target "
                  f"{res['accuracy_target']:.4f} (best {res['best_accuracy']:.4f} minus 1 point)")
    t = Table(title="LLM: simulated replay (Azure code trace, real time scale)", title_justify="left")
    t.add_column("policy", no_wrap=True, min_width=len("static-accurate"))
    for c in ("good/s", "in SLO", "acc.", "refused", "expired", "TTFT p99 s"):
        t.add_column(c, justify="right", no_wrap=True)
    for pol, s in res["summaries"].items():
        t.add_row(pol, f"{s['goodput_rps']:.3f}", f"{s['slo_attainment']:.1%}", f"{s['mean_accuracy']:.4f}",
                  str(s["refused"]), str(s["expired"]), f"{s['ttft_p99_ms'] / 1000:.1f}")
    console.print(t)
    console.print("accuracy: next-token accuracy on held-out news text of the variant and KV cap that answered, "
                  f"mean over answered requests; profiles {res['profile_file']} ({res['wall_s']:.1f} s)")
    return res
