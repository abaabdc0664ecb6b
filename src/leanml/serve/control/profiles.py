"""Measure variants on this machine and keep the results in a profile file (JSON, written atomically).

``leanml serve profile --config deploy.toml`` calls `profile_family` for every deployment and
`save_profiles`; ``leanml serve start`` reloads the file with `load_profiles`. A profile entry is
tied to its prototype and parameters by a fingerprint, so a stale entry is never used silently.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from leanml.io import atomic_write_text
from leanml.serve.types import LatencyProfile, VariantProfile, profile_from_dict, profile_to_dict  # noqa: F401
from leanml.serve.variants.base import Variant
from leanml.serve.variants.family import Family

FORMAT = "leanml.serve.profiles/1"


def fingerprint(prototype: str, params: dict[str, Any], variant: str) -> str:
    """What a profile was measured for: prototype, its parameters, the variant name."""
    blob = json.dumps([prototype, params, variant], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


P99_SAMPLES = 100  # runs wanted per batch size for a p99 that is not just the slowest of a few runs
P99_BUDGET_S = 3.0  # ... but at most this many seconds of extra runs per batch size


def measure_latency(variant: Variant, inputs: list[Any], batch_sizes: list[int], reps: int, warmup: int = 2,
                    knobs: dict[str, Any] | None = None, p99_samples: int = P99_SAMPLES,
                    p99_budget_s: float = P99_BUDGET_S,
                    ) -> tuple[LatencyProfile, dict[int, float], float | None, int, dict[int, int]]:
    """Latency per batch size (p50/p99 ms), throughput, energy (J/request or None), calls, samples per size.

    Each batch size runs ``reps`` times, then more (up to ``p99_samples`` runs in all) while the extra
    runs stay within ``p99_budget_s``: with 10-20 runs the "p99" is the slowest run, and one scheduler
    hiccup on a shared machine made a 1 ms model look like a 400 ms one (every SLO check then refused it).
    """
    from leanml.meter import Meter

    model = variant.model
    parsed = [model.parse(x) for x in inputs]
    p50: dict[int, float] = {}
    p99: dict[int, float] = {}
    thr: dict[int, float] = {}
    samples: dict[int, int] = {}
    n_req = 0
    with Meter(gpu=False, sample_interval_s=1.0) as m:
        for b in batch_sizes:
            items = [parsed[i % len(parsed)] for i in range(b)]
            k = [dict(knobs or {})] * b
            for _ in range(warmup):
                model.run(items, k)
            times: list[float] = []
            t_extra = None
            while len(times) < max(reps, p99_samples):
                if len(times) >= reps:
                    t_extra = t_extra or time.perf_counter()
                    if time.perf_counter() - t_extra > p99_budget_s:
                        break
                t0 = time.perf_counter()
                model.run(items, k)
                times.append((time.perf_counter() - t0) * 1000.0)
            n_req += b * len(times)
            arr = np.asarray(times)
            p50[b] = float(np.percentile(arr, 50))
            p99[b] = float(np.percentile(arr, 99))
            thr[b] = float(b / (arr.mean() / 1000.0))
            samples[b] = len(times)
    e = m.cost.energy_cpu_j
    # warm-up runs are metered too: count them so that J/request stays an average over all calls
    n_all = n_req + warmup * sum(batch_sizes)
    return LatencyProfile(p50, p99), thr, (e / n_all if e is not None else None), n_all, samples


def measure_generation(variant: Variant, inputs: list[Any], batch_sizes: list[int], reps: int, warmup: int,
                       tokens: int) -> tuple[LatencyProfile, dict[int, float], float | None, int, dict[int, int],
                                             dict[str, Any]]:
    """`measure_latency` for a text generator at exactly ``tokens`` new tokens per request (end-of-sequence
    suppressed until then), plus a time-to-first-token pass (1 token, ``reps`` runs) from which the
    per-step decoding time is fitted: latency(b, n) = first(b) + (n - 1) step(b). What lets the simulator,
    the planner and the router cost requests of any generation length."""
    first, *_ = measure_latency(variant, inputs, batch_sizes, reps, warmup=min(warmup, 1),
                                knobs={"max_new_tokens": 1}, p99_samples=reps)
    lat, thr, energy, n, samples = measure_latency(variant, inputs, batch_sizes, reps, warmup=warmup,
                                                   knobs={"max_new_tokens": tokens, "min_new_tokens": tokens})
    step = {b: max(lat.p50_ms[b] - first.p50_ms[b], 0.0) / (tokens - 1) if tokens > 1 else 0.0
            for b in batch_sizes}
    gen = {"tokens": int(tokens), "exact_length": True,
           "first_token_ms": {str(b): first.p50_ms[b] for b in batch_sizes},
           "first_token_p99_ms": {str(b): first.p99_ms[b] for b in batch_sizes},
           "step_ms": {str(b): step[b] for b in batch_sizes},
           "ms_per_token": {str(b): lat.p50_ms[b] / (b * tokens) for b in batch_sizes}}
    return lat, thr, energy, n, samples, gen


def profile_variant(variant: Variant, family: Family, *, batch_sizes: list[int], reps: int,
                    val_n: int | None, fp: str, warmup: int = 2) -> VariantProfile:
    """Accuracy on the family's validation data, latency/throughput by batch size, memory, energy.

    Text generators are timed at exactly ``family.info["default_max_new_tokens"]`` tokens per request and
    carry ``extra.generation`` (time to first token and per-step time by batch size)."""
    t0 = time.perf_counter()
    acc = family.evaluate(variant, val_n)
    eval_s = time.perf_counter() - t0
    inputs = family.sample_inputs(max(batch_sizes), 0)
    t1 = time.perf_counter()
    gen = None
    if variant.kind == "generate":
        lat, thr, energy, n, samples, gen = measure_generation(
            variant, inputs, batch_sizes, reps, warmup, int(family.info.get("default_max_new_tokens") or 32))
    else:
        lat, thr, energy, n, samples = measure_latency(variant, inputs, batch_sizes, reps, warmup=warmup)
    extra_gen = {"generation": gen} if gen is not None else {}
    ev = (family.info.get("eval_details") or {}).get(variant.name)
    if ev is not None:
        extra_gen["eval"] = dict(ev)
    return VariantProfile(
        name=variant.name, accuracy=float(acc), latency=lat, memory_bytes=variant.model.size_bytes(),
        energy_j_per_request=energy, throughput_rps=thr,
        extra={"technique": variant.technique, "params": variant.params, "fingerprint": fp,
               "val": family.info.get("val"), "val_n": val_n or family.info.get("val_n"),
               "eval_s": round(eval_s, 3), "latency_s": round(time.perf_counter() - t1, 3), "requests_measured": n,
               "latency_samples": {str(b): c for b, c in samples.items()},
               "energy_note": None if energy is not None else "CPU energy counters (RAPL) unavailable here",
               **extra_gen},
    )


def machine_info() -> dict[str, Any]:
    import torch

    return {"platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__}


def save_profiles(path: str | Path, profiles: dict[str, dict[str, VariantProfile]],
                  meta: dict[str, dict[str, Any]] | None = None) -> None:
    """Write ``{deployment: {variant: profile}}`` as JSON, atomically (old file or new, never half)."""
    doc = {
        "format": FORMAT, "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "deployments": {dep: {"meta": (meta or {}).get(dep, {}),
                              "variants": {n: profile_to_dict(p) for n, p in vs.items()}}
                        for dep, vs in profiles.items()},
    }
    atomic_write_text(path, json.dumps(doc, indent=1, sort_keys=True) + "\n")


def load_profiles(path: str | Path) -> dict[str, dict[str, VariantProfile]]:
    """Read a profile file; a clear error names the file and what is wrong."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"profile file {path} does not exist; "
                                "run `leanml serve profile --config ...`") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"profile file {path} is not valid JSON ({e}); re-run `leanml serve profile`") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"profile file {path}: format is {doc.get('format') if isinstance(doc, dict) else '?'!r}, "
                         f"expected {FORMAT!r}; re-run `leanml serve profile`")
    out: dict[str, dict[str, VariantProfile]] = {}
    for dep, entry in (doc.get("deployments") or {}).items():
        try:
            out[dep] = {n: profile_from_dict(v) for n, v in entry["variants"].items()}
        except ValueError as e:
            raise ValueError(f"profile file {path}, deployment {dep!r}: {e}") from None
    return out
