"""An upper bound on the goodput any LLM policy can reach on a replay: what no routing, batching or re-planning
can beat, so that a headline ratio can be read against what was possible.

A request answered within its SLOs is prefilled between its arrival a and a + D (D its TTFT SLO) and
decoded by a + D + O x T (O output tokens, T its TPOT SLO), on one of the ``engines``. So for every interval
[s, e], the requests with a >= s answered in time whose prefill deadline a + D is <= e do all their prefill
inside it, and those whose last deadline a + D + O x T is <= e do all their work inside it: each sum is at
most engines x (e - s) (for one engine and prefill alone this is the exact feasibility condition of a
preemptive schedule with release times and deadlines). A request's prefill is priced at the simulator's
cheapest per-token rate of its option (variant, KV cap) over every chunk length up to ``max_chunk`` and every
measured batch (`prefill_floor_ms_per_token`: a chunk of 128 tokens costs less per token than a whole
1,024-token prompt, so the lone prefill would not be a bound); its decode costs at least O x step(b) / b at
the largest batch b <= ``max_batch`` whose step is within its TPOT SLO (none: it cannot count). With the
mean-accuracy target over what is served, the most requests meeting every interval's budget and the target
is a linear program; its relaxation (fractional requests) is the bound. It is solved by adding violated
intervals (cutting planes, scipy HiGHS) until none is left, for each arrival as the start the end with the
largest excess, or for at most ``max_rounds`` rounds: every round's LP holds a subset of the intervals, so its
optimum bounds the full one from above and an early stop gives a looser bound, not a wrong one.

The bound is loose where the work shares iterations: it ignores that an iteration carrying a prefill
chunk is slower for the decodes in it (their TPOT), and KV memory. One relaxation goes the other way: a
request's TPOT is the mean of its iterations, so steps above the SLO could be averaged out by shorter ones;
reading it per step prices decode at most at the next smaller batch, a few ms per token against seconds of
prefill here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from leanml.serve.control.llm_profiles import LLMProfile
from leanml.serve.sim.llm_sim import LLMRequest, kept_prompt

MAX_ROUNDS = 4  # cutting-plane rounds; each adds up to two intervals per arrival. Each round's LP drops
# constraints of the full one, so its optimum is already a bound: stopping early loosens it, never breaks it
# (scratch runs to convergence, not a committed benchmark: 9-11 rounds at load 1, 18 rounds and 183 s per
# seed at load 2, at the demand in every round there)


@dataclass(frozen=True)
class Ceiling:
    """The bound (requests/s of the window), with the intervals the LP used, its rounds, and whether no
    interval was left violated (False: stopped at ``max_rounds``, still a bound, possibly a looser one)."""

    goodput_rps: float
    intervals: int
    rounds: int
    requests: int
    converged: bool = True

    def to_json(self) -> dict[str, float | bool]:
        return {"goodput_rps": round(self.goodput_rps, 5), "intervals": self.intervals, "rounds": self.rounds,
                "requests": self.requests, "converged": self.converged}


def prefill_floor_ms_per_token(p: LLMProfile, max_chunk: int) -> float:
    """The least ms per prompt token `LLMProfile.prefill_time_ms` gives for any pass of up to ``max_chunk``
    tokens per sequence at any batch: piecewise linear in length and batch (clamped past the batches), so
    the least is at a measured point or at 1 or ``max_chunk`` tokens."""
    lengths = sorted({1, max_chunk} | {t for row in p.prefill_ms.values() for t in row if t <= max_chunk})
    return min(p.prefill_time_ms(t, b) / (t * b) for b in p.prefill_ms for t in lengths)


def _pairs(requests: list[LLMRequest], profiles: dict[str, LLMProfile], max_batch: int,
           max_chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(request index, prefill ms, least work ms, accuracy) of every (request, option) that can meet its SLOs."""
    floor = {v: prefill_floor_ms_per_token(p, max_chunk) for v, p in profiles.items()}
    rows = []
    for v, p in profiles.items():
        for cap in p.kv_caps():
            acc = p.accuracy(cap)
            for i, r in enumerate(requests):
                kept = kept_prompt(r, cap)
                pre = kept * floor[v]
                ctx = kept + r.output / 2
                within = [b for b in range(1, max_batch + 1) if p.step_ms(b, ctx) <= r.tpot_ms]
                if within and pre <= r.ttft_ms:
                    b = max(within)  # a step costs less per token at a larger batch, up to the largest in the SLO
                    rows.append((i, pre, pre + r.output * p.step_ms(b, ctx) / b, acc))
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0), np.zeros(0)
    a = np.array(rows)
    return a[:, 0].astype(np.int64), a[:, 1], a[:, 2], a[:, 3]


def _violated(load_ms: np.ndarray, arrival: np.ndarray, deadline: np.ndarray, engines: int,
              order: np.ndarray) -> list[tuple[float, float]]:
    """For each arrival s, the interval [s, e] (e a deadline) whose work exceeds engines x (e - s) the most."""
    out = []
    for k in range(len(order)):
        idx = order[k:]
        o = idx[np.argsort(deadline[idx], kind="stable")]
        cum = np.cumsum(load_ms[o]) / 1000.0
        excess = cum - engines * (deadline[o] - arrival[order[k]])
        j = int(np.argmax(excess))
        if excess[j] > 1e-7 * max(1.0, cum[j]):
            out.append((float(arrival[order[k]]), float(deadline[o[j]])))
    return out


def goodput_ceiling(requests: list[LLMRequest], profiles: dict[str, LLMProfile], *, engines: int,
                    accuracy_target: float | None, span_s: float, max_batch: int | None = None,
                    max_chunk: int | None = None, max_rounds: int = MAX_ROUNDS) -> Ceiling:
    """The LP bound of the module docstring, in requests per second of ``span_s``. ``max_batch`` and
    ``max_chunk``: the largest running batch and prefill chunk any policy may use (default: the largest of
    `LLMPlannerConfig`'s batch sizes and chunks, which the replay's policies choose from)."""
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix, vstack

    from leanml.serve.control.llm_planner import LLMPlannerConfig

    max_batch = max(LLMPlannerConfig().batch_sizes) if max_batch is None else max_batch
    max_chunk = max(LLMPlannerConfig().chunk_tokens) if max_chunk is None else max_chunk

    if engines < 1 or span_s <= 0 or max_batch < 1 or max_chunk < 1 or max_rounds < 1:
        raise ValueError(f"goodput_ceiling: engines, max_batch, max_chunk and max_rounds >= 1 and span_s > 0 needed "
                         f"(got {engines}, {max_batch}, {max_chunk}, {max_rounds}, {span_s})")
    n = len(requests)
    ri, pre, work, acc = _pairs(requests, profiles, max_batch, max_chunk)
    if len(ri) == 0:
        return Ceiling(0.0, 0, 0, n)
    m = len(ri)
    arrival = np.array([r.arrival_s for r in requests])
    first = arrival + np.array([r.ttft_ms for r in requests]) / 1000.0
    last = first + np.array([r.output * r.tpot_ms for r in requests]) / 1000.0
    order = np.argsort(arrival, kind="stable")
    cols = np.arange(m)
    base = [coo_matrix((np.ones(m), (ri, cols)), shape=(n, m))]
    ub = [np.ones(n)]
    if accuracy_target is not None:  # sum (target - acc) x <= 0
        base.append(coo_matrix((accuracy_target - acc, (np.zeros(m, dtype=np.int64), cols)), shape=(1, m)))
        ub.append(np.zeros(1))
    fixed = len(ub)  # row blocks before any interval
    intervals, rounds, converged = 0, 0, False
    while not converged and rounds < max_rounds:
        rounds += 1
        res = linprog(-np.ones(m), A_ub=vstack(base).tocsr(), b_ub=np.concatenate(ub), bounds=(0, 1),
                      method="highs")
        if res.status != 0:
            raise RuntimeError(f"goodput_ceiling: the LP failed ({res.message})")
        intervals = len(ub) - fixed  # the intervals in the LP just solved
        cuts = [(cost, deadline, s, e) for cost, deadline in ((pre, first), (work, last))
                for s, e in _violated(np.bincount(ri, weights=cost * res.x, minlength=n), arrival, deadline,
                                      engines, order)]
        converged = not cuts
        for cost, deadline, s, e in cuts if rounds < max_rounds else ():
            keep = np.nonzero(((arrival >= s) & (deadline <= e))[ri])[0]
            base.append(coo_matrix((cost[keep], (np.zeros(len(keep), dtype=np.int64), keep)), shape=(1, m)))
            ub.append(np.array([engines * 1000.0 * (e - s)]))
    # unconverged, the last LP solved holds a subset of the intervals: its optimum is still a bound
    return Ceiling(float(-res.fun) / span_s, intervals, rounds, n, converged=converged)
