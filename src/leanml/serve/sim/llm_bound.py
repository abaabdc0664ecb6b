"""An upper bound on the goodput any LLM policy can reach on a replay: what no routing, batching or re-planning
can beat, so that a headline ratio can be read against what was possible.

A request answered within its SLOs is prefilled between its arrival a and a + D (D its TTFT SLO) and
decoded by a + D + O x T (O output tokens, T its TPOT SLO), on one of the ``engines``. Split the window
into bins of ``bin_s`` seconds: the requests that arrive in a bin and are answered in time do their
prefill inside [bin start, bin end + the bin's largest D] and all their work inside [bin start, bin end
+ the largest D + O x T], so each sum is at most engines x that span. A request's prefill is the one of
the option (variant, KV cap) serving it; its decode costs at least O x step(b) / b at the largest batch b
whose step is within its TPOT SLO (none: it cannot count). With the mean-accuracy target over what is
served, the most requests meeting every bin's budgets and the target is a linear program (scipy HiGHS);
its relaxation (fractional requests) is an upper bound, and the smallest over a few bin widths is too
(each bin width gives one).

The bound is loose: it ignores queueing inside a bin and the prefill chunks that share a request's decode
iterations. One relaxation goes the other way: a request's TPOT is the mean of its iterations, so steps
above the SLO could be averaged out by shorter ones; reading it per step prices decode at most at the
next smaller batch, a few ms per token against seconds of prefill here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from leanml.serve.control.llm_profiles import LLMProfile
from leanml.serve.sim.llm_sim import LLMRequest


@dataclass(frozen=True)
class Ceiling:
    """The bound (requests/s of the window) and the bin width that gave it."""

    goodput_rps: float
    bin_s: float
    requests: int

    def to_json(self) -> dict[str, float]:
        return {"goodput_rps": round(self.goodput_rps, 5), "bin_s": self.bin_s, "requests": self.requests}


def _options(profiles: dict[str, LLMProfile]) -> list[tuple[str, int, float]]:
    return [(v, c, p.accuracy(c)) for v, p in profiles.items() for c in p.kv_caps()]


def _work_ms(p: LLMProfile, req: LLMRequest, cap: int) -> tuple[float, float] | None:
    """(prefill ms, least engine ms) of ``req`` on variant profile ``p`` at KV cap ``cap``; None when even a
    lone decode step exceeds its TPOT SLO."""
    kept = min(req.prompt, cap - req.output) if cap and cap > req.output else req.prompt
    pre = p.prefill_time_ms(kept)
    ctx = kept + req.output / 2
    within = [b for b in range(1, max(p.decode_ms) + 1) if p.step_ms(b, ctx) <= req.tpot_ms]
    if not within:
        return None
    b = max(within)  # a step costs less per token at a larger batch, up to the largest within the SLO
    return pre, pre + req.output * p.step_ms(b, ctx) / b


def goodput_ceiling(requests: list[LLMRequest], profiles: dict[str, LLMProfile], *, engines: int,
                    accuracy_target: float | None, span_s: float,
                    bin_widths_s: tuple[float, ...] = (5.0, 10.0, 30.0, 60.0, 120.0, 300.0)) -> Ceiling:
    """The smallest LP bound over ``bin_widths_s`` (module docstring), in requests per second of ``span_s``."""
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix

    if engines < 1 or span_s <= 0 or not bin_widths_s or min(bin_widths_s) <= 0:
        raise ValueError(f"goodput_ceiling: engines >= 1, span_s > 0 and positive bin widths needed "
                         f"(got {engines}, {span_s}, {bin_widths_s})")
    if not requests:
        return Ceiling(0.0, float(min(bin_widths_s)), 0)
    opts = _options(profiles)
    pairs = []  # (request index, option index, prefill ms, work ms)
    for i, r in enumerate(requests):
        for j, (v, c, _) in enumerate(opts):
            w = _work_ms(profiles[v], r, c)
            if w is not None and w[0] <= r.ttft_ms:
                pairs.append((i, j, w[0], w[1]))
    if not pairs:
        return Ceiling(0.0, float(min(bin_widths_s)), len(requests))
    ri = np.array([q[0] for q in pairs])
    pre = np.array([q[2] for q in pairs])
    work = np.array([q[3] for q in pairs])
    acc = np.array([opts[q[1]][2] for q in pairs])
    arrival = np.array([r.arrival_s for r in requests])
    deadline_s = np.array([r.ttft_ms for r in requests]) / 1000.0
    decode_s = np.array([r.output * r.tpot_ms for r in requests]) / 1000.0
    t0 = float(arrival.min())
    best: Ceiling | None = None
    for w in bin_widths_s:
        b = np.floor((arrival - t0) / w).astype(int)
        nb = int(b.max()) + 1
        d_max = np.zeros(nb)
        np.maximum.at(d_max, b, deadline_s)
        o_max = np.zeros(nb)
        np.maximum.at(o_max, b, decode_s)
        n, m = len(requests), len(pairs)
        rows = [ri, n + b[ri], n + nb + b[ri]]
        vals = [np.ones(m), pre, work]
        ub = [np.ones(n), engines * 1000.0 * (w + d_max), engines * 1000.0 * (w + d_max + o_max)]
        if accuracy_target is not None:  # sum (target - acc) x <= 0
            rows.append(np.full(m, n + 2 * nb))
            vals.append(accuracy_target - acc)
            ub.append(np.zeros(1))
        a = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.tile(np.arange(m), len(rows)))),
                       shape=(n + 2 * nb + (accuracy_target is not None), m))
        res = linprog(-np.ones(m), A_ub=a.tocsr(), b_ub=np.concatenate(ub), bounds=(0, 1), method="highs")
        if res.status != 0:
            raise RuntimeError(f"goodput_ceiling: the LP failed ({res.message})")
        c = Ceiling(float(-res.fun) / span_s, float(w), len(requests))
        if best is None or c.goodput_rps < best.goodput_rps:
            best = c
    assert best is not None
    return best
