"""Live LLM replay on loopback: the same requests as the simulator, through the real runtime, and the error.

`replay_live_llm` starts a `leanml.serve.dataplane.runtime.Runtime` with one deployment served by one
continuous-batching engine (`GenerationWorker` over `ContinuousBatcher`, one model-call thread) behind the
HTTP app on 127.0.0.1, and sends the `LLMRequest` list open-loop at its arrival times
(`leanml.serve.sim.replay.replay_http`). Each request's prompt is real text (MMLU dev questions, run
together) of exactly its ``prompt`` tokens after the chat template (`trace_prompts`; the simulator is fed
the lengths actually sent), and it generates exactly ``output`` tokens (``min_new_tokens`` =
``max_new_tokens``). Its TTFT SLO is its latency SLO, so a request still queued when the SLO passes is
answered 503 ``expired``: the simulator's rule for a request waiting past its TTFT SLO.

Per request the answer's ``ttft_ms`` and ``tpot_ms`` (measured by the worker from when the runtime queued
it) and the client's end-to-end latency are recorded as an `LLMOutcome`; `p99_errors` compares the
simulator's p99 TTFT and end-to-end latency with live, as |sim - live| / live.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from leanml.serve.control.llm_profiles import FULL, LLMProfile
from leanml.serve.sim.llm_sim import LLMOutcome, LLMRequest


def trace_prompts(lm: Any, lengths: list[int], seed: int = 0) -> tuple[list[str], list[int]]:
    """Prompt texts whose chat-templated token ids number ``lengths`` (within a few tokens; the second list
    holds the exact counts, which is what the simulator must be given). Text: MMLU dev questions."""
    from leanml.data import load

    qs = [r["question"] for r in load("mmlu", "dev").records]
    order = np.random.default_rng(seed).permutation(len(qs))
    ids = list(lm.tok(" ".join(qs[int(i)] for i in order), add_special_tokens=False)["input_ids"])
    over = len(lm._ids(""))  # the chat template's own tokens
    if max(lengths, default=0) - over > len(ids):
        raise ValueError(f"trace_prompts: a prompt of {max(lengths)} tokens exceeds the {len(ids)}-token source text")
    texts, got = [], []
    for k, n in enumerate(lengths):
        off = (k * 997) % max(1, len(ids) - n)
        m = max(1, n - over)
        for _ in range(4):  # re-tokenizing decoded text can merge or split a token at the edges
            text = lm.tok.decode(ids[off:off + m])
            have = len(lm._ids(text))
            if have == n or m <= 1:
                break
            m = max(1, m + n - have)
        texts.append(text)
        got.append(have)
    return texts, got


def replay_live_llm(variant: Any, requests: list[LLMRequest], prompts: list[str], *, batch: int, chunk: int,
                    kv_budget_bytes: float, profile: LLMProfile, timeout_s: float = 600.0,
                    queue: str = "edf") -> list[LLMOutcome]:
    """Replay ``requests`` (their arrivals, ``prompts``, outputs and SLOs) live on one continuous-batching engine
    of ``variant`` with running-batch cap ``batch``, prefill chunk ``chunk``, a KV budget and ``queue`` order; one
    `LLMOutcome` per request (``good`` as the simulator scores it; accuracy from ``profile``)."""
    from leanml.serve.config import Batching
    from leanml.serve.dataplane.http import BackgroundServer, build_app
    from leanml.serve.dataplane.runtime import Runtime
    from leanml.serve.sim.replay import Payload, replay_http

    if len(prompts) != len(requests):
        raise ValueError(f"replay_live_llm: {len(prompts)} prompts for {len(requests)} requests")
    if not requests:
        return []
    b = Batching(max_batch=int(batch), continuous=True, prefill_chunk=int(chunk), kv_cache_mb=kv_budget_bytes / 2**20,
                 max_queue=1 << 16, drop_expired=True, queue=queue)
    rt = Runtime(threads=1)
    rt.add_deployment("llm", {variant.name: variant}, "static", {"variant": variant.name}, batching=b)
    arrivals = np.array([r.arrival_s for r in requests])

    def payload(i: int) -> Payload:
        r = requests[i]
        return Payload("/v1/generate/llm", {"prompt": prompts[i], "max_new_tokens": r.output,
                                            "min_new_tokens": r.output, "slo": {"latency_ms": r.ttft_ms}})

    span = float(arrivals[-1] - arrivals[0]) + 1.0
    with BackgroundServer(build_app(rt)) as url:
        rows = replay_http(url, arrivals, payload, max_requests=len(requests), max_duration_s=span,
                           timeout_s=timeout_s, warmup_connections=4)
    by_id = {r["id"]: r for r in rows}
    acc = profile.accuracy(FULL)
    out = []
    for r in requests:
        row = by_id.get(r.i)
        if row is None or row["status"] != 200:
            status = "expired" if row is not None and row["status"] == 503 and row.get("reason") and \
                "SLO passed" in str(row.get("reason")) else "refused"
            out.append(LLMOutcome(r.i, r.arrival_s, r.prompt, r.output, status))
            continue
        ttft, tpot = float(row["ttft_ms"]), float(row["tpot_ms"] or 0.0)
        out.append(LLMOutcome(r.i, r.arrival_s, r.prompt, r.output, "ok", variant.name, FULL, ttft, tpot, acc,
                              ttft <= r.ttft_ms and tpot <= r.tpot_ms, e2e_ms=float(row["latency_ms"])))
    return out


def p99_errors(sim: list[LLMOutcome], live: list[LLMOutcome]) -> dict[str, Any]:
    """The simulator's p99 TTFT and end-to-end latency against live, over each side's answered requests:
    |sim - live| / live, with both p99s and the answered counts."""
    def p99(xs: list[LLMOutcome], f: str) -> float:
        v = [getattr(o, f) for o in xs if o.status == "ok" and np.isfinite(getattr(o, f))]
        return float(np.percentile(v, 99)) if v else float("nan")

    out: dict[str, Any] = {"answered_sim": sum(o.status == "ok" for o in sim),
                           "answered_live": sum(o.status == "ok" for o in live)}
    for f in ("ttft_ms", "e2e_ms"):
        s, lv = p99(sim, f), p99(live, f)
        out[f"sim_{f[:-3]}_p99_ms"], out[f"live_{f[:-3]}_p99_ms"] = round(s, 1), round(lv, 1)
        out[f"{f[:-3]}_p99_error"] = round(abs(s - lv) / lv, 4) if lv > 0 and np.isfinite(s) else None
    return out


def engine_decode_ms(lm: Any, prompt_ids: list[int], rows: int, steps: int = 5) -> float:
    """Median time (ms) of one decode-only iteration of the live engine (`ContinuousBatcher`) with ``rows``
    running sequences of ``prompt_ids`` each: what an iteration costs in the engine itself (attention mask,
    per-row positions, the cache it keeps), where a raw forward over a repeated cache omits that."""
    import statistics
    import time

    from leanml.serve.dataplane.generation import ContinuousBatcher

    if rows < 1 or steps < 1:
        raise ValueError(f"engine_decode_ms: rows and steps must be >= 1, got {rows}, {steps}")
    cb = ContinuousBatcher(lm, max_batch=rows, prefill_chunk=len(prompt_ids) + 1)
    cb.add([cb.sequence(list(prompt_ids), steps + 3, min_new_tokens=steps + 3) for _ in range(rows)])
    while len(cb.rows) < rows:  # every prefill done: the rows have joined
        cb.step()
    ts = []
    for _ in range(steps):
        t0 = time.perf_counter()
        cb.step()
        ts.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(ts)


def engine_prefill_chunk_ms(lm: Any, prompt_ids: list[int], chunk: int, reps: int = 3) -> float:
    """Mean time (ms) of one chunked-prefill pass of the live engine: ``prompt_ids`` prefilled alone in
    ``chunk``-token passes, each attending to the chunks before it through the engine's own cache (a fresh
    ``chunk``-token forward omits that growing context and the per-pass bookkeeping); median over ``reps``."""
    import statistics
    import time

    from leanml.serve.dataplane.generation import ContinuousBatcher

    if chunk < 1 or reps < 1 or len(prompt_ids) < chunk:
        raise ValueError(f"engine_prefill_chunk_ms: chunk and reps must be >= 1 and the prompt at least one chunk "
                         f"long, got {chunk}, {reps}, {len(prompt_ids)} tokens")
    per_pass = []
    for _ in range(reps):
        cb = ContinuousBatcher(lm, max_batch=1, prefill_chunk=chunk)
        cb.add([cb.sequence(list(prompt_ids), 1, min_new_tokens=1)])
        t0 = time.perf_counter()
        while not cb.idle:
            cb.step()
        per_pass.append((time.perf_counter() - t0) * 1000.0 / max(1, cb.prefill_passes))
    return statistics.median(per_pass)
