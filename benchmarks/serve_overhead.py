"""What does leanml's serving runtime add per request, and what does dynamic batching buy?

1. Added latency: the same model (the digits MLP) called in-process, behind a bare FastAPI endpoint
   (pydantic body, model call in the thread pool, JSON answer) and behind leanml (routing, queue,
   batcher, metrics), both over loopback HTTP with uvicorn in a child process; closed-loop clients at
   several concurrencies. Headline ``added_p50_ms`` = leanml p50 - bare p50 at concurrency 1.
2. Batching: a CIFAR-10-shaped CNN (leanml.models.build_cnn, width 32) behind the runtime at
   saturation (many outstanding requests, in-process so that JSON encoding does not hide the model),
   without batching (max_batch 1; best of 1 and 2 model calls in flight) and with dynamic batching
   (max_batch 64). Headline ``batching_speedup`` = throughput ratio.

    python benchmarks/serve_overhead.py [--quick]

Targets (issue 5): added p50 <= 1 ms at low load over the bare endpoint; batching >= 3x for the CNN.
Load goes only to 127.0.0.1 and is bounded in count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from leanml.io import atomic_write_text

RESULTS = Path(__file__).parent / "results" / "serve_overhead.json"


class Body(BaseModel):
    """The bare endpoint's request body (module level: FastAPI resolves annotations from here)."""

    inputs: list[Any]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _digits_variant():
    from leanml.serve.variants import build_family

    return build_family("digits", variants=["mlp"]).variants["mlp"]


# ---- servers (child processes, so the load generator never shares a GIL with them) ---------------------
def _serve_child(kind: str, port: int, torch_threads: int) -> None:
    import torch
    import uvicorn

    torch.set_num_threads(torch_threads)

    variant = _digits_variant()
    if kind == "bare":
        from fastapi import FastAPI
        from fastapi.responses import JSONResponse

        app = FastAPI()

        @app.post("/v1/predict/digits")
        def predict(body: Body):  # sync: FastAPI runs it in its thread pool, like leanml's model calls
            out = variant.model.run([variant.model.parse(body.inputs)], [{}])[0]
            return JSONResponse(out)
    else:
        from leanml.serve.config import Batching
        from leanml.serve.dataplane.http import build_app
        from leanml.serve.dataplane.runtime import Runtime
        from leanml.serve.types import LatencyProfile, VariantProfile

        variant.profile = VariantProfile("mlp", 1.0, LatencyProfile({1: 0.1}, {1: 0.2}))
        rt = Runtime()
        rt.add_deployment("digits", {"mlp": variant}, "static", batching=Batching(max_batch=32, max_wait_ms=0.0))
        app = build_app(rt)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False)


async def _load(url: str, body: dict, concurrency: int, n: int) -> list[float]:
    import httpx

    lat: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
        for _ in range(min(20, n)):  # warm-up
            (await c.post("/v1/predict/digits", json=body)).raise_for_status()
        left = n

        async def worker():
            nonlocal left
            while left > 0:
                left -= 1
                t0 = time.perf_counter()
                r = await c.post("/v1/predict/digits", json=body)
                lat.append((time.perf_counter() - t0) * 1000)
                r.raise_for_status()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return lat


def _wait_up(port: int, proc) -> None:
    import httpx

    t0 = time.time()
    while time.time() - t0 < 120:
        if not proc.is_alive():
            raise RuntimeError("server process died")
        try:
            httpx.post(f"http://127.0.0.1:{port}/v1/predict/digits", json={"inputs": [[0.0] * 64]}, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError("server did not come up in 120 s")


def bench_overhead(concurrencies: list[int], n: int, rounds: int, torch_threads: int) -> dict:
    from leanml.data import load

    x = load("digits", "test").X[:1].astype(np.float32)
    body = {"inputs": x.tolist()}
    variant = _digits_variant()
    direct = []
    for _ in range(max(200, n)):
        t0 = time.perf_counter()
        variant(body["inputs"])
        direct.append((time.perf_counter() - t0) * 1000)
    out = {"in_process_p50_ms": statistics.median(direct), "rows": []}
    ctx = mp.get_context("spawn")
    lat: dict[tuple[str, int], list[float]] = {}
    procs = {}
    try:
        for kind in ("bare", "leanml"):
            port = _free_port()
            p = ctx.Process(target=_serve_child, args=(kind, port, torch_threads), daemon=True)
            p.start()
            procs[kind] = (p, port)
        for p, port in procs.values():
            _wait_up(port, p)
        # interleave rounds so that drifting background load hits both servers alike
        for _ in range(rounds):
            for c in concurrencies:
                for kind, (_p, port) in procs.items():
                    lat.setdefault((kind, c), []).extend(asyncio.run(_load(f"http://127.0.0.1:{port}", body, c, n)))
    finally:
        for p, _ in procs.values():
            p.terminate()
            p.join(10)
    for c in concurrencies:
        row = {"concurrency": c}
        for kind in ("bare", "leanml"):
            a = np.asarray(lat[(kind, c)])
            row[f"{kind}_p50_ms"] = float(np.percentile(a, 50))
            row[f"{kind}_p99_ms"] = float(np.percentile(a, 99))
        row["added_p50_ms"] = row["leanml_p50_ms"] - row["bare_p50_ms"]
        row["added_vs_in_process_p50_ms"] = row["leanml_p50_ms"] - out["in_process_p50_ms"]
        out["rows"].append(row)
    return out


# ---- batching at saturation ------------------------------------------------------------------------------
async def _saturate(rt, X: np.ndarray, n: int, outstanding: int) -> float:
    await rt.start()
    for i in range(8):
        await rt.submit("cnn", X[i : i + 1])
    left = n

    async def client(k):
        nonlocal left
        i = k
        while left > 0:
            left -= 1
            out = await rt.submit("cnn", X[i % len(X) : i % len(X) + 1])
            assert out.status == 200, out
            i += outstanding

    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(outstanding)))
    dt = time.perf_counter() - t0
    await rt.stop()
    return n / dt


def bench_batching(n: int, outstanding: int) -> dict:
    import torch

    from leanml.models import build_cnn
    from leanml.serve.config import Batching
    from leanml.serve.dataplane.runtime import Runtime
    from leanml.serve.variants.base import Variant
    from leanml.serve.variants.torch_variants import TorchClassifierModel

    module, which = _trained_cnn()
    if module is None:
        module = build_cnn(10, width=32, seed=0).eval()
    X = np.random.default_rng(0).random((256, 3, 32, 32), dtype=np.float32)
    res = {}
    for name, b in {"no_batching_c1": Batching(max_batch=1, max_queue=100_000, concurrency=1),
                    "no_batching_c2": Batching(max_batch=1, max_queue=100_000, concurrency=2),
                    "batching": Batching(max_batch=64, max_wait_ms=2.0, max_queue=100_000, concurrency=1)}.items():
        rt = Runtime(threads=2)
        rt.add_deployment("cnn", {"cnn": Variant("cnn", TorchClassifierModel(module, (3, 32, 32), 10))}, "static",
                          batching=b)
        res[name] = asyncio.run(_saturate(rt, X, n, outstanding))
    base = max(res["no_batching_c1"], res["no_batching_c2"])
    # the model's own ceiling: images/s calling it directly at batch 1 and at batch 64 (best of 3)
    ceiling = {}
    with torch.inference_mode():
        for b in (1, 64):
            x = torch.from_numpy(X[:b])
            reps = max(2, 64 // b)
            module(x)
            best = min(_timed(module, x, reps) for _ in range(3))
            ceiling[b] = b / best
    return {"rps": res, "batching_speedup": res["batching"] / base, "torch_threads": torch.get_num_threads(),
            "model": which,
            "requests": n, "outstanding": outstanding, "model_only_images_per_s": ceiling,
            "model_only_batch64_over_batch1": ceiling[64] / ceiling[1]}


def _trained_cnn():
    """The CIFAR-10 prototype's trained base CNN if it is in the serve cache (examples/cifar10.toml's
    parameters), else (None, why): the same architecture untrained runs at the same speed."""
    import torch

    from leanml.data import cache_dir
    from leanml.models import build_cnn
    from leanml.serve.config import load_config
    from leanml.serve.variants.family import _key
    from leanml.serve.variants.prototypes import get_prototype, resolve_params

    cfg = load_config(Path(__file__).resolve().parents[1] / "examples" / "cifar10.toml")
    p = resolve_params(get_prototype("cifar10"), cfg.deployments["cifar10"].params)
    path = cache_dir("serve") / f"cifar_cnn-{_key('cifar_cnn', p)}.pt"
    if not path.exists():
        return None, f"untrained build_cnn(width={p['width']}) (no trained prototype in {path.parent})"
    m = build_cnn(10, width=p["width"], seed=p["seed"])
    m.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return m.eval(), f"trained CIFAR-10 prototype base ({path.name})"


def _timed(module, x, reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        module(x)
    return (time.perf_counter() - t0) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, same code path (< 1 min)")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch intra-op threads per model call (default 1: on a shared machine, multi-threaded "
                         "ops wait for descheduled OpenMP threads; 0 = torch's default)")
    args = ap.parse_args()
    import torch

    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    threads = torch.get_num_threads()
    conc = [1, 4] if args.quick else [1, 4, 16]
    t0 = time.time()
    ov = bench_overhead(conc, n=150 if args.quick else 1000, rounds=1 if args.quick else 3,
                        torch_threads=threads)
    bt = bench_batching(n=384 if args.quick else 3000, outstanding=128)
    try:
        from rich.console import Console
        from rich.table import Table

        t = Table(title="leanml serve: added latency over loopback HTTP (ms)")
        for col in ("concurrency", "bare p50", "bare p99", "leanml p50", "leanml p99", "added p50",
                    "added vs in-process"):
            t.add_column(col, justify="right")
        for r in ov["rows"]:
            t.add_row(str(r["concurrency"]), *(f"{r[k]:.3f}" for k in ("bare_p50_ms", "bare_p99_ms", "leanml_p50_ms",
                                                                        "leanml_p99_ms", "added_p50_ms",
                                                                        "added_vs_in_process_p50_ms")))
        Console().print(t)
        t2 = Table(title="CNN (width 32, CIFAR-10 shape) at saturation, in-process runtime")
        t2.add_column("mode")
        t2.add_column("requests/s", justify="right")
        for k, v in bt["rps"].items():
            t2.add_row(k, f"{v:.1f}")
        for b, v in bt["model_only_images_per_s"].items():
            t2.add_row(f"model alone, batch {b}", f"{v:.1f}")
        Console().print(t2)
    except ImportError:  # pragma: no cover
        print(ov, bt)
    c1 = ov["rows"][0]
    result = {
        "benchmark": "serve_overhead", "quick": args.quick,
        "added_p50_ms": round(c1["added_p50_ms"], 4),
        "added_p50_vs_in_process_ms": round(c1["added_vs_in_process_p50_ms"], 4),
        "batching_speedup": round(bt["batching_speedup"], 3),
        "in_process_p50_ms": round(ov["in_process_p50_ms"], 4),
        "overhead_rows": ov["rows"], "batching": bt,
        "targets": {"added_p50_ms_max": 1.0, "batching_speedup_min": 3.0},
        "torch_threads": threads,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "load_avg": os.getloadavg()},
        "wall_s": round(time.time() - t0, 1),
    }
    line = json.dumps(result, default=float)
    atomic_write_text(RESULTS, json.dumps(result, indent=1, default=float) + "\n")
    print(line)


if __name__ == "__main__":
    main()
