"""The LLM planner: per request class, a variant, knobs (KV cap, max-new-tokens reservation) and a batch /
token budget, chosen by a MILP (scipy.optimize.milp, HiGHS) to maximize goodput under TTFT/TPOT SLOs,
an accuracy floor (per request) and target (mean), and an energy budget.

The deployment has ``engines`` continuous-batching engines (one per core here: each runs one variant).
An *option* o = (variant v, KV cap c, batch cap B, prefill chunk C, utilization tier u): an engine of o
admits at most B running sequences, each iteration is one decode token for every running sequence plus
up to C prompt tokens (Sarathi-Serve's chunked prefill, token budget B + C), and its engine time is kept
at most a fraction u busy.

For class k (mean prompt P, p99 prompt P99, mean declared output O, its bound Omax) on option o, costed
from `LLMProfile` (continuous batching behaves like processor sharing: every admitted sequence advances
each iteration, so the number running N is about geometric, P(N >= n) = u^n):

* prompt kept P' = min(P, c - Omax) under a KV cap c (the prompt cut from the left), else P;
* KV reservation (P99' + Omax) x bytes/token; B reservations must fit the engine's KV budget, and
  u^B <= 1% (the cap rarely binds, so admission rarely waits for a slot);
* engine time per request t = prefill(P') + O step(n) / n at the mean batch n = u / (1 - u) (capped at B);
* TPOT p99 (`tpot_p99_ms`): a request's TPOT averages its O iterations, and those iterations also carry
  the prefill chunks of the prompts queued behind it: every prompt that arrives while it waits, prefills
  and decodes. Their count over that window (mean m = lambda x window) has variance ca^2 m (a renewal
  process's counts), and the p99 request meets N99 = m + 2.33 sqrt(ca^2 m) of them (normal approximation;
  at most 2(B - 1), since only admitted sequences prefill and each other slot turns over at most once),
  so TPOT = step(n90) + min(prefill(C), N99 prefill(P') / O) at the 90th-percentile batch
  n90 = ln 0.1 / ln u (capped at B): one iteration carries at most one chunk, so the chunk C bounds it
  (Sarathi-Serve's trade: a small chunk protects TPOT and costs TTFT). The window holds TPOT itself, a
  fixed point with a closed form;
* TTFT p99 = W99 + ceil(P'/C) (step(n99) + prefill(min(C, P'))): the p99 wait for the prefill queued
  ahead plus its own prefill chunks, each carrying a decode step. The queue is a G/G/1 queue of prompts
  whose service S is their prefill plus the decode steps that share its iterations during a backlog
  (`backlog_decode_ms`: small chunks make a prompt take many iterations, each with a step); Kingman's
  mean wait u/(1-u) (ca^2 + 1)/2 S at u = lambda S, its tail exponential, ca the class's measured CV of
  inter-arrivals. The option is infeasible for k when u >= 1;
* B = 1 (one request at a time) is its own regime, the one a TPOT SLO near a lone decode step leaves when
  a prompt chunk costs more than the slack: a G/G/1 queue of whole requests, TPOT = step(1),
  TTFT p99 = W99 + its prefill (in chunks), t = prefill + O step(1); the u^B rule does not apply;
* accuracy = the profile's figure at cap c if c cuts the class's prompt, else at full context.

Variables: z[k,o] >= 0 requests/s of k served by o within its SLOs (goodput), n[o] integer engines.
maximize sum z (ties: less engine time per request, i.e. headroom) subject to
sum_o z[k,o] <= rate_k; sum_k z[k,o] t_k(o) <= 1000 u n[o]; sum n <= engines;
sum (acc - A) z >= 0 (mean target); sum (e - E) z <= 0 (energy budget, only if every energy is measured).
Pairs (k, o) violating k's TTFT, TPOT, KV or accuracy floor are left out, which keeps the LP relaxation
a tight facility-location shape (no big-M rows).

``ttft_wait=False`` plans for capacity: TTFT feasibility counts a request's own prefill only (its chunks,
each with a decode step), not the queueing wait W99. That is the plan to follow when the demand exceeds what
the p99 plan serves: the excess is refused either way, and the router's per-request admission test (the
predicted TTFT behind what the engine holds) bounds the wait of what it admits, so the plan's job is the
engine time per request. On the replay's bursty windows the p99 model called nearly every plan short of the
demand (47 of 48 on seed 0 of the headline cell), and 23 of them left the slowest prefill on both engines
(`benchmarks/diagnostics/llm_refusal_check.py`; docs/planner.md, run of 2026-12-08).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from leanml.serve.control.llm_profiles import FULL, LLMProfile

Z99 = 2.326348  # the standard normal's 99th percentile


@dataclass(frozen=True)
class LLMClass:
    """A stream of generation requests with one SLO: its rate, lengths and needs."""

    name: str
    rate_rps: float
    prompt_tokens: float  # mean
    output_tokens: float  # mean declared (max_new_tokens) length
    ttft_ms: float
    tpot_ms: float
    prompt_p99: float | None = None
    output_max: int | None = None  # the bound the KV reservation uses (default: ceil(output_tokens))
    min_accuracy: float | None = None  # per-request floor
    cv: float = 1.0

    def __post_init__(self) -> None:
        for f in ("rate_rps", "prompt_tokens", "output_tokens", "ttft_ms", "tpot_ms"):
            v = getattr(self, f)
            if not (math.isfinite(v) and v >= 0) or (f in ("ttft_ms", "tpot_ms") and v <= 0):
                kind = "positive" if "ms" in f else "non-negative"
                raise ValueError(f"LLMClass {self.name}: {f} must be a finite {kind} number, got {v}")

    @property
    def p99(self) -> float:
        return float(self.prompt_p99 if self.prompt_p99 is not None else self.prompt_tokens)

    @property
    def omax(self) -> int:
        return int(self.output_max if self.output_max is not None else math.ceil(self.output_tokens))


@dataclass
class LLMPlannerConfig:
    """Knobs of the LLM planner (validated)."""

    engines: int = 2
    kv_budget_bytes: float = 1 << 30  # per engine
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    chunk_tokens: tuple[int, ...] = (16, 64, 256, 1024)
    utilization: tuple[float, ...] = (0.3, 0.5, 0.7, 0.85)
    kv_caps: tuple[int, ...] | None = None  # None: every cap with measured quality (FULL = 0 = no cap)
    accuracy_target: float | None = None  # mean over served requests
    energy_budget_j: float | None = None  # mean per request
    time_limit_s: float = 2.0
    mip_rel_gap: float = 1e-3
    ttft_wait: bool = True  # False: TTFT feasibility counts a request's own prefill only (capacity plan: above)

    def __post_init__(self) -> None:
        if self.engines < 1:
            raise ValueError(f"engines must be >= 1, got {self.engines}")
        if self.kv_budget_bytes <= 0:
            raise ValueError(f"kv_budget_bytes must be positive, got {self.kv_budget_bytes}")
        if not self.batch_sizes or min(self.batch_sizes) < 1 or not self.chunk_tokens or min(self.chunk_tokens) < 1:
            raise ValueError("batch_sizes and chunk_tokens must be non-empty positive integers")
        if not self.utilization or not all(0 < u < 1 for u in self.utilization):
            raise ValueError(f"utilization tiers must be in (0, 1), got {self.utilization}")


@dataclass(frozen=True)
class LLMOption:
    variant: str
    kv_cap: int  # FULL = 0: no cap
    batch: int
    chunk: int
    rho: float


@dataclass(frozen=True)
class Fit:
    """How class k fares on option o (predicted)."""

    ttft_ms: float
    tpot_ms: float
    cost_ms: float  # engine time per request
    accuracy: float
    energy_j: float | None
    prompt_kept: float


@dataclass
class LLMPlan:
    """Engines per option, and per class the share of its requests each option serves."""

    engines: dict[LLMOption, int]
    routes: dict[str, dict[LLMOption, float]]  # class -> option -> requests/s (goodput)
    fits: dict[tuple[str, LLMOption], Fit]
    goodput_rps: float
    demand_rps: float
    mean_accuracy: float
    status: str
    solve_s: float
    classes: list[LLMClass] = field(default_factory=list)

    def fractions(self, k: str) -> dict[LLMOption, float]:
        """Routing fractions of class k over options (of its planned goodput)."""
        r = self.routes.get(k, {})
        s = sum(r.values())
        return {o: v / s for o, v in r.items()} if s > 0 else {}

    def summary(self) -> dict[str, Any]:
        return {"goodput_rps": round(self.goodput_rps, 4), "demand_rps": round(self.demand_rps, 4),
                "mean_accuracy": round(self.mean_accuracy, 5), "status": self.status, "solve_s": round(self.solve_s, 3),
                "engines": {f"{o.variant}/cap{o.kv_cap}/B{o.batch}/C{o.chunk}/rho{o.rho}": n
                            for o, n in self.engines.items() if n}}


def wait_mean_ms(rho: float, service_ms: float, ca: float) -> float:
    """Mean wait (ms) of a G/G/1 queue of engine work at utilization ``rho`` (Kingman, service CV 1):
    rho/(1-rho) (ca^2 + 1)/2 S."""
    return rho / (1 - rho) * (ca * ca + 1.0) / 2.0 * service_ms


def wait_p99_ms(rho: float, service_ms: float, ca: float, q: float = 0.99) -> float:
    """p99 wait (ms) of that queue: Kingman's mean, given a wait (probability rho) exponential; 0 when
    P(wait) <= 1 - q."""
    if rho <= 1 - q:
        return 0.0
    return (wait_mean_ms(rho, service_ms, ca) / rho) * math.log(rho / (1 - q))


def tpot_p99_ms(step_ms: float, chunk_ms: float, prompt_ms: float, output: float, rate_per_ms: float,
                before_ms: float, ca: float, batch: int) -> float:
    """p99 TPOT (ms) of a request decoding ``output`` tokens at ``step_ms`` a step, beside the prefill of the
    prompts (``prompt_ms`` each, arriving at ``rate_per_ms``, inter-arrival CV ``ca``) queued behind it
    during ``before_ms`` (its wait and prefill) and its own decode: the 99th-percentile count of such
    prompts, their prefill spread over its ``output`` iterations, at most one chunk (``chunk_ms``) each.
    Only admitted sequences prefill, and each of the other ``batch - 1`` slots holds at most two
    sequences during its decode (one needs more than ``output`` iterations), which bounds the count.

    The window holds TPOT itself: T = s + (m + z ca sqrt m) P / O with m = rate (b + O T). In x = sqrt m,
    that is (1/rate - P) x^2 - z ca P x - (b + s O) = 0, solved in closed form; the caps only lower it."""
    cap = step_ms + min(chunk_ms, 2.0 * (batch - 1) * prompt_ms / output)
    if rate_per_ms <= 0 or prompt_ms <= 0:
        return step_ms
    a = 1.0 / rate_per_ms - prompt_ms
    if a <= 0:  # arriving prefill alone would fill the engine: every iteration carries what the caps allow
        return cap
    bz = Z99 * ca * prompt_ms
    x = (bz + math.sqrt(bz * bz + 4.0 * a * (before_ms + step_ms * output))) / (2.0 * a)
    return min(cap, step_ms + (x * x + Z99 * ca * x) * prompt_ms / output)


def backlog_decode_ms(p: LLMProfile, chunks: int, output: float, batch: int, context: float) -> float:
    """Decode time that each prompt's prefill carries while prompts queue (a backlog, where waits happen).

    Every iteration carries one chunk and one decode step of whatever is running, so a prompt of
    ``chunks`` chunks carries min(O, chunks) steps; each prompt leaves O sequences' worth of decoding
    behind it, so about O / chunks sequences (at most ``batch``) share each step. (Slots rarely bind:
    the planner keeps u^B <= 1%.)"""
    n = int(min(batch, max(1, round(output / chunks))))
    return min(output, float(chunks)) * p.step_ms(n, context)


def fit(k: LLMClass, p: LLMProfile, o: LLMOption, kv_budget: float, ttft_wait: bool = True) -> Fit | None:
    """Predicted TTFT/TPOT/engine time/accuracy of class k on option o; None if infeasible (KV, slots, prefill).
    ``ttft_wait``: False leaves the queueing wait out of the TTFT (the capacity plan: module docstring)."""
    omax = k.omax
    if o.kv_cap and o.kv_cap <= omax:
        return None
    if o.batch > 1 and o.rho ** o.batch > 0.01:  # P(N >= B) under processor sharing: the cap would bind
        return None
    cuts = bool(o.kv_cap) and k.p99 + omax > o.kv_cap
    kept = min(k.prompt_tokens, o.kv_cap - omax) if cuts else k.prompt_tokens
    kept99 = min(k.p99, o.kv_cap - omax) if cuts else k.p99
    if o.batch * p.kv_bytes(kept99 + omax) > kv_budget:
        return None
    out = max(1.0, k.output_tokens)
    ctx = kept + out / 2
    n_mean = min(o.batch, max(1.0, o.rho / (1 - o.rho)))
    n99 = min(o.batch, max(1, math.ceil(math.log(0.01) / math.log(o.rho))))
    n90 = min(o.batch, max(1, math.ceil(math.log(0.1) / math.log(o.rho))))
    try:
        acc = p.accuracy(o.kv_cap if cuts else FULL)
    except KeyError:
        return None
    e = None if p.energy_j_per_token is None else p.energy_j_per_token * (kept + out)
    chunks = math.ceil(max(kept, 1.0) / o.chunk)
    if o.batch == 1:  # one at a time: a G/G/1 queue of whole requests, nothing shares an iteration
        own = chunks * p.prefill_time_ms(min(o.chunk, max(kept, 1.0)))
        alone = own + out * p.step_ms(1, ctx)
        return Fit((wait_p99_ms(o.rho, alone, k.cv) if ttft_wait else 0.0) + own, p.step_ms(1, ctx), alone, acc, e,
                   kept)
    s_pre = p.prefill_time_ms(kept)
    s_dec = out * p.step_ms(round(n_mean), ctx) / round(n_mean)
    cost = s_pre + s_dec
    lam = o.rho * 1000.0 / cost  # requests/s of k that keep one engine busy a fraction rho
    s_q = s_pre + backlog_decode_ms(p, chunks, out, o.batch, ctx)
    rho_q = lam * s_q / 1000.0
    if rho_q >= 1.0:  # the prefill queue would grow without bound
        return None
    own = chunks * (p.step_ms(n99, ctx) + p.prefill_time_ms(min(o.chunk, max(kept, 1.0))))
    ttft = (wait_p99_ms(rho_q, s_q, k.cv) if ttft_wait else 0.0) + own
    before = wait_mean_ms(rho_q, s_q, k.cv) + own
    tpot = tpot_p99_ms(p.step_ms(n90, ctx), p.prefill_time_ms(o.chunk), s_pre, out, lam / 1000.0, before, k.cv,
                       o.batch)
    return Fit(ttft, tpot, cost, acc, e, kept)


def plan_llm(profiles: dict[str, LLMProfile], classes: list[LLMClass], cfg: LLMPlannerConfig) -> LLMPlan:
    """Solve the MILP (module docstring); an empty plan (status says why) when nothing is feasible."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

    t0 = time.perf_counter()
    if not profiles:
        raise ValueError("plan_llm: profiles is empty")
    if cfg.energy_budget_j is not None and any(p.energy_j_per_token is None for p in profiles.values()):
        raise ValueError("plan_llm: energy_budget_j is set but some variant's energy is unmeasured "
                         "(energy_j_per_token None); drop the budget or measure energy")
    opts: list[LLMOption] = []
    pairs: list[tuple[int, int, Fit]] = []
    for v, p in profiles.items():
        caps = cfg.kv_caps if cfg.kv_caps is not None else tuple(p.kv_caps())
        for c in caps:
            for b in cfg.batch_sizes:
                for ch in cfg.chunk_tokens:
                    for rho in cfg.utilization:
                        o = LLMOption(v, int(c), int(b), int(ch), float(rho))
                        mine = []
                        for ki, k in enumerate(classes):
                            f = fit(k, p, o, cfg.kv_budget_bytes, cfg.ttft_wait)
                            if f is None or f.ttft_ms > k.ttft_ms or f.tpot_ms > k.tpot_ms:
                                continue
                            if k.min_accuracy is not None and f.accuracy < k.min_accuracy:
                                continue
                            mine.append((ki, len(opts), f))
                        if mine:
                            opts.append(o)
                            pairs += mine
    demand = sum(k.rate_rps for k in classes)
    if not pairs:
        return LLMPlan({}, {}, {}, 0.0, demand, float("nan"), "infeasible: no option meets any class's SLO",
                       time.perf_counter() - t0, list(classes))
    nz, no = len(pairs), len(opts)
    nv = nz + no
    max_w = max(f.cost_ms for _, _, f in pairs)
    c = np.zeros(nv)
    for j, (_, _, f) in enumerate(pairs):
        c[j] = -(1.0 - 1e-3 * f.cost_ms / max_w)
    kidx = np.array([k for k, _, _ in pairs])
    oidx = np.array([o for _, o, _ in pairs])
    cost = np.array([f.cost_ms for _, _, f in pairs])
    accs = np.array([f.accuracy for _, _, f in pairs])
    zj = np.arange(nz)
    # rows: demand per class (nk), engine time per option (no), engines (1), accuracy (1), energy (1)
    nk = len(classes)
    ri = [kidx, nk + oidx, nk + np.arange(no), np.full(no, nk + no)]
    ci = [zj, zj, nz + np.arange(no), nz + np.arange(no)]
    vals = [np.ones(nz), cost, -1000.0 * np.array([o.rho for o in opts]), np.ones(no)]
    lo = [-np.inf] * (nk + no + 1)
    hi = [k.rate_rps for k in classes] + [0.0] * no + [float(cfg.engines)]
    if cfg.accuracy_target is not None:
        ri.append(np.full(nz, len(lo)))
        ci.append(zj)
        vals.append(accs - cfg.accuracy_target)
        lo.append(0.0)
        hi.append(np.inf)
    if cfg.energy_budget_j is not None:
        ri.append(np.full(nz, len(lo)))
        ci.append(zj)
        vals.append(np.array([float(f.energy_j) for _, _, f in pairs]) - cfg.energy_budget_j)  # type: ignore[arg-type]
        lo.append(-np.inf)
        hi.append(0.0)
    a = coo_matrix((np.concatenate(vals), (np.concatenate(ri), np.concatenate(ci))), shape=(len(lo), nv))
    cons = LinearConstraint(a.tocsr(), lo, hi)
    integ = np.r_[np.zeros(nz), np.ones(no)]
    ub = np.r_[[classes[k].rate_rps for k, _, _ in pairs], np.full(no, float(cfg.engines))]
    res = milp(c, constraints=cons, integrality=integ, bounds=Bounds(np.zeros(nv), ub),
               options={"time_limit": cfg.time_limit_s, "mip_rel_gap": cfg.mip_rel_gap})
    solve_s = time.perf_counter() - t0
    if res.x is None:
        return LLMPlan({}, {}, {}, 0.0, demand, float("nan"), f"no solution: {res.message}", solve_s, list(classes))
    x = res.x
    engines = {opts[oi]: int(round(x[nz + oi])) for oi in range(no) if round(x[nz + oi]) > 0}
    routes: dict[str, dict[LLMOption, float]] = {}
    fits: dict[tuple[str, LLMOption], Fit] = {}
    acc_sum = good = 0.0
    for j, (ki, oi, f) in enumerate(pairs):
        fits[(classes[ki].name, opts[oi])] = f
        if x[j] > 1e-9:
            routes.setdefault(classes[ki].name, {})[opts[oi]] = float(x[j])
            good += x[j]
            acc_sum += x[j] * f.accuracy
    _spread_spare(engines, routes, fits, cfg.engines)
    return LLMPlan(engines, routes, fits, good, demand, acc_sum / good if good > 0 else float("nan"),
                   f"milp: {res.message}", solve_s, list(classes))


def _spread_spare(engines: dict[LLMOption, int], routes: dict[str, dict[LLMOption, float]],
                  fits: dict[tuple[str, LLMOption], Fit], total: int) -> None:
    """Hand idle engines to the chosen option with the most engine time per engine (more headroom, same plan)."""
    spare = total - sum(engines.values())
    while spare > 0 and engines:
        def load(o: LLMOption) -> float:
            return sum(r.get(o, 0.0) * fits[(k, o)].cost_ms for k, r in routes.items()) / engines[o]
        busiest = max(engines, key=load)
        engines[busiest] += 1
        spare -= 1


def check_llm_plan(plan: LLMPlan, profiles: dict[str, LLMProfile], cfg: LLMPlannerConfig) -> list[str]:
    """Every constraint re-verified from scratch; the list of violations (empty when the plan is valid)."""
    bad = []
    by = {k.name: k for k in plan.classes}
    if sum(plan.engines.values()) > cfg.engines:
        bad.append(f"{sum(plan.engines.values())} engines > {cfg.engines}")
    load: dict[LLMOption, float] = {}
    acc = good = 0.0
    for kn, r in plan.routes.items():
        k = by[kn]
        if sum(r.values()) > k.rate_rps * (1 + 1e-6) + 1e-9:
            bad.append(f"{kn}: served {sum(r.values())} > rate {k.rate_rps}")
        for o, z in r.items():
            f = fit(k, profiles[o.variant], o, cfg.kv_budget_bytes)
            if f is None:
                bad.append(f"{kn} on {o}: KV or chunk infeasible")
                continue
            if f.ttft_ms > k.ttft_ms:
                bad.append(f"{kn} on {o}: TTFT {f.ttft_ms:.0f} > {k.ttft_ms}")
            if f.tpot_ms > k.tpot_ms:
                bad.append(f"{kn} on {o}: TPOT {f.tpot_ms:.0f} > {k.tpot_ms}")
            if k.min_accuracy is not None and f.accuracy < k.min_accuracy - 1e-12:
                bad.append(f"{kn} on {o}: accuracy {f.accuracy} < floor {k.min_accuracy}")
            load[o] = load.get(o, 0.0) + z * f.cost_ms
            acc += z * f.accuracy
            good += z
    for o, ms in load.items():
        if ms > 1000.0 * o.rho * plan.engines.get(o, 0) * (1 + 1e-6) + 1e-6:
            bad.append(f"{o}: engine load {ms:.0f} ms/s > capacity")
    if cfg.accuracy_target is not None and good > 0 and acc / good < cfg.accuracy_target - 1e-9:
        bad.append(f"mean accuracy {acc / good:.4f} < target {cfg.accuracy_target}")
    return bad
