"""Queueing model of one batched variant: p99 latency at a given arrival rate, and the rate an SLO allows.

A variant runs ``c`` workers; each takes up to ``b`` queued requests as one batch. Requests are
grouped into batches of ``b`` (arrival rate of batches ``lambda/b``, whose gaps have CV
``ca/sqrt(b)`` for a renewal process), and batches queue for ``c`` servers whose service time has
mean ~ p50(b) and a CV derived from p99(b)/p50(b) (a lognormal fit). The waiting time uses the
Allen-Cunneen G/G/c approximation (Erlang C probability of waiting times Kingman's
``(ca^2 + cs^2)/2`` factor), with the conditional wait taken as exponential for its tail:

    P(W > t) = Pw * exp(-t / m),   m = E[W] / Pw,   so   W_q = m * ln(Pw / (1 - q))  if Pw > 1-q else 0.

A request's latency at quantile q is bounded by: time to fill its batch (``min(max_wait, (b-1)/lambda)``)
+ W_q + the batch's service time at q. This is conservative (the three parts are added at their
quantiles) and is exactly what the planner linearizes: per (variant, batch, workers) option it
precomputes the largest rate whose predicted latency meets the SLO.
"""

from __future__ import annotations

import math

import numpy as np

Z99 = 2.3263478740408408  # standard normal quantile of 0.99


def erlang_c(servers: int, offered: float) -> float:
    """Probability that an arrival waits in M/M/c with ``offered = lambda/mu`` (stable recursion)."""
    if servers < 1:
        raise ValueError(f"servers must be >= 1, got {servers}")
    if offered <= 0:
        return 0.0
    if offered >= servers:
        return 1.0
    b = 1.0  # Erlang B by recursion, then C from B
    for k in range(1, servers + 1):
        b = offered * b / (k + offered * b)
    rho = offered / servers
    return b / (1 - rho + rho * b)


def service_cv(p50_ms: float, p99_ms: float) -> float:
    """CV of a lognormal service time with the given median and p99."""
    if p50_ms <= 0 or p99_ms <= p50_ms:
        return 0.0
    sigma = math.log(p99_ms / p50_ms) / Z99
    return math.sqrt(math.exp(sigma**2) - 1)


def latency_quantile_ms(
    rate_rps: float,
    *,
    batch: int,
    workers: int,
    service_p50_ms: float,
    service_p99_ms: float,
    ca: float = 1.0,
    max_wait_ms: float = 0.0,
    q: float = 0.99,
) -> float:
    """Predicted latency quantile ``q`` (ms) of a request at ``rate_rps``; ``inf`` when unstable."""
    if rate_rps <= 0:
        return max(0.0, max_wait_ms if batch > 1 else 0.0) + service_p99_ms
    return float(_latency_vec(np.array([float(rate_rps)]), batch=batch, workers=workers,
                              service_p50_ms=service_p50_ms, service_p99_ms=service_p99_ms,
                              ca=ca, max_wait_ms=max_wait_ms, q=q)[0])


def _latency_vec(rates: np.ndarray, *, batch: int, workers: int, service_p50_ms: float, service_p99_ms: float,
                 ca: float, max_wait_ms: float, q: float) -> np.ndarray:
    """`latency_quantile_ms` for an array of positive rates (numpy; what the planner's search uses)."""
    cs = service_cv(service_p50_ms, service_p99_ms)
    mean_s = service_p50_ms / 1e3 * (1 + cs**2) ** 0.5
    lam_b = rates / batch
    offered = lam_b * mean_s
    b = np.ones_like(offered)  # Erlang B by recursion, then C
    for k in range(1, workers + 1):
        b = offered * b / (k + offered * b)
    rho = offered / workers
    with np.errstate(divide="ignore", invalid="ignore"):
        pw = np.where(offered >= workers, 1.0, b / (1 - rho + rho * b))
        mean_wait = pw / (workers / mean_s - lam_b) * ((ca / math.sqrt(batch)) ** 2 + cs**2) / 2
        wq = np.where(pw > 1 - q, (mean_wait / pw) * np.log(np.maximum(pw, 1e-300) / (1 - q)), 0.0)
    fill = np.minimum(max_wait_ms / 1e3, (batch - 1) / rates) if batch > 1 else 0.0
    out = (fill + wq) * 1e3 + service_p99_ms
    return np.where(offered >= workers, np.inf, out)


def max_rate_for_slo(
    slo_ms: float,
    *,
    batch: int,
    workers: int,
    service_p50_ms: float,
    service_p99_ms: float,
    ca: float = 1.0,
    max_wait_ms: float = 0.0,
    q: float = 0.99,
    grid: int = 400,
) -> float:
    """Largest arrival rate (requests/s) whose predicted latency quantile stays within ``slo_ms``.

    The feasible rates form an interval (fill time falls, waiting grows with the rate): a vectorized
    scan of ``grid`` rates up to saturation finds its upper end to 1/grid of saturation, then a short
    bisection refines it.
    """
    kw = dict(batch=batch, workers=workers, service_p50_ms=service_p50_ms, service_p99_ms=service_p99_ms,
              ca=ca, max_wait_ms=max_wait_ms, q=q)
    mean_s = service_p50_ms / 1e3 * (1 + service_cv(service_p50_ms, service_p99_ms) ** 2) ** 0.5
    hi = workers * batch / mean_s  # saturation
    rates = hi * np.arange(1, grid + 1) / (grid + 1)
    ok = np.flatnonzero(_latency_vec(rates, **kw) <= slo_ms)
    if len(ok) == 0:
        return 0.0
    lo, up = float(rates[ok[-1]]), float(rates[ok[-1] + 1]) if ok[-1] + 1 < grid else hi
    for _ in range(12):
        mid = (lo + up) / 2
        if latency_quantile_ms(mid, **kw) <= slo_ms:
            lo = mid
        else:
            up = mid
    return lo
