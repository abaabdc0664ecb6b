"""Traces at their real time scale: a drift-containing window, its rate fitted to the deployment by thinning.

The earlier replay compressed the one-hour Azure trace into seconds (`traces.scale_to_rate`), so a
re-planning period saw a whole hour's mix and the minute-scale dynamics were gone. Here:

* `drift_window` picks a window of 10-30 minutes of *trace time* that contains drift: the one whose
  per-bin (default 2-minute) request rate varies most, max(bin rate) / min(bin rate), the same measure
  the report prints; the prompt-length mix change between the window's halves is reported beside it.
* `fit_rate` brings that window to ``target_rps`` (a load x the deployment's capacity) keeping the time
  axis: independent Bernoulli *thinning* with keep probability p = target / window rate. A p-thinned
  point process has rate p lambda(t) at every t, so the shape over minutes (and the token mix) is kept;
  bursts inside a second are thinned too (their CV of gaps moves toward 1 at small p, reported). Only
  when the target exceeds the trace's own rate is time compressed, by the smallest factor that reaches
  it, and the report says so.
* `TimescaleReport` states what was scaled and by how much; the replay benchmark prints it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from leanml.serve.workload.traces import Trace, TraceError


@dataclass(frozen=True)
class TimescaleReport:
    """What was done to the trace: window, method and factor, rates and burstiness before and after."""

    window_start_s: float
    window_s: float
    method: str  # "thinning" (time kept) | "time-compression" | "none"
    factor: float  # keep probability for thinning; time divisor for compression
    source_rate_rps: float  # of the window, before scaling
    target_rate_rps: float
    rate_rps: float  # achieved mean rate
    requests: int
    bin_s: float
    rate_ratio: float  # max / min per-bin rate in the window (drift)
    prompt_median_shift: float | None  # median prompt tokens, second half / first half
    cv_gaps_before: float
    cv_gaps_after: float

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def text(self) -> str:
        how = (f"thinned: each request kept with probability {self.factor:.4f} (time axis unchanged)"
               if self.method == "thinning" else
               f"time compressed {self.factor:.3f}x (the target exceeds the trace's own rate)"
               if self.method == "time-compression" else "not scaled")
        shift = "" if self.prompt_median_shift is None else \
            f"; median prompt tokens 2nd half / 1st half {self.prompt_median_shift:.2f}"
        return (f"window {self.window_start_s / 60:.1f}-{(self.window_start_s + self.window_s) / 60:.1f} min of trace "
                f"time ({self.window_s / 60:.0f} min), {self.source_rate_rps:.3f} -> {self.rate_rps:.3f} req/s "
                f"(target {self.target_rate_rps:.3f}); {how}; {self.bin_s / 60:.0f}-min rate max/min "
                f"{self.rate_ratio:.2f}{shift}; CV of gaps {self.cv_gaps_before:.2f} -> {self.cv_gaps_after:.2f}; "
                f"{self.requests} requests")


def bin_rates(trace: Trace, bin_s: float, duration_s: float | None = None) -> np.ndarray:
    """Requests per second in consecutive bins of ``bin_s`` from t = 0 (the last partial bin dropped)."""
    if bin_s <= 0:
        raise TraceError(f"bin_s must be positive, got {bin_s}")
    dur = trace.duration_s if duration_s is None else duration_s
    nb = max(1, int(dur // bin_s))
    counts = np.bincount(np.minimum((trace.arrival_s // bin_s).astype(np.int64), nb), minlength=nb + 1)[:nb]
    return counts / bin_s


def cv_gaps(trace: Trace) -> float:
    g = np.diff(trace.arrival_s)
    return float(np.std(g) / np.mean(g)) if len(g) > 1 and np.mean(g) > 0 else float("nan")


def _rate_ratio(trace: Trace, start: float, dur: float, bin_s: float) -> float:
    r = bin_rates(trace.window(start, dur), bin_s, dur)
    return float(r.max() / r.min()) if r.min() > 0 else float("inf")


def drift_window(trace: Trace, window_s: float = 1200.0, bin_s: float = 120.0, step_s: float = 60.0) -> float:
    """Start (s) of the ``window_s`` window whose per-bin rate varies most (max/min), on a ``step_s`` grid.

    Windows with an empty bin are skipped (a ratio against zero measures nothing); ties go to the earliest.
    """
    if not 600 <= window_s <= 1800:
        raise TraceError(f"window_s must be 600-1800 s (10-30 minutes of trace time), got {window_s}")
    if window_s > trace.duration_s:
        raise TraceError(f"trace '{trace.name}' lasts {trace.duration_s:.0f} s, shorter than window_s={window_s}")
    if bin_s * 2 > window_s:
        raise TraceError(f"bin_s={bin_s} leaves fewer than 2 bins in a {window_s} s window")
    starts = np.arange(0.0, trace.duration_s - window_s + 1e-9, step_s)
    ratios = [_rate_ratio(trace, float(s), window_s, bin_s) for s in starts]
    finite = [(r, -i) for i, r in enumerate(ratios) if np.isfinite(r)]
    if not finite:
        raise TraceError(f"trace '{trace.name}': every {window_s} s window has an empty {bin_s} s bin; "
                         "use a larger bin_s")
    return float(starts[-max(finite)[1]])


def fit_rate(window: Trace, target_rps: float, seed: int = 0) -> tuple[Trace, str, float]:
    """``window`` at mean rate ``target_rps``: thinned (time kept) if below its rate, else time-compressed.

    Returns (trace, method, factor). Rates are per second of the window (``len / window span``)."""
    if not np.isfinite(target_rps) or target_rps <= 0:
        raise TraceError(f"target_rps must be a positive number, got {target_rps}")
    span = float(window.info.get("window_s", window.duration_s))
    rate = len(window) / span if span > 0 else float("nan")
    if not np.isfinite(rate) or rate <= 0:
        raise TraceError(f"trace '{window.name}' has no requests to scale")
    if target_rps < rate:
        p = target_rps / rate
        keep = np.flatnonzero(np.random.default_rng(seed).random(len(window)) < p)
        t = window.select(keep)
        shift = window.arrival_s[keep[0]] if len(keep) else 0.0
        t.arrival_s = t.arrival_s + shift  # keep the window's clock (select re-bases to the first kept request)
        return t, "thinning", float(p)
    f = target_rps / rate
    t = window.select(np.arange(len(window)))
    t.arrival_s = window.arrival_s / f
    t.info = {**window.info, "window_s": span / f}
    return t, ("time-compression" if f > 1 + 1e-12 else "none"), float(f)


def real_timescale(trace: Trace, target_rps: float, *, window_s: float = 1200.0, bin_s: float = 120.0,
                   start_s: float | None = None, seed: int = 0) -> tuple[Trace, TimescaleReport]:
    """The drift window of ``trace`` (or the one at ``start_s``) at mean rate ``target_rps`` on its own clock."""
    start = drift_window(trace, window_s, bin_s) if start_s is None else float(start_s)
    if start < 0 or start + window_s > trace.duration_s + 1e-9:
        raise TraceError(f"start_s={start_s}: the window must lie inside the trace (0-{trace.duration_s:.0f} s)")
    m = (trace.arrival_s >= start) & (trace.arrival_s < start + window_s)
    w = trace.select(np.flatnonzero(m))
    w.arrival_s = trace.arrival_s[m] - start  # clock from the window's start, not its first request
    w.info = {**trace.info, "window_s": window_s}
    scaled, method, f = fit_rate(w, target_rps, seed)
    span = float(scaled.info.get("window_s", window_s))
    shift = None
    if w.context_tokens is not None and len(w) > 3:
        half = w.arrival_s < window_s / 2
        a, b = np.median(w.context_tokens[half]), np.median(w.context_tokens[~half])
        shift = float(b / a) if a > 0 else None
    rep = TimescaleReport(start, window_s, method, f, len(w) / window_s, float(target_rps), len(scaled) / span,
                          len(scaled), bin_s, _rate_ratio(trace, start, window_s, bin_s), shift, cv_gaps(w),
                          cv_gaps(scaled))
    scaled.info = {**scaled.info, "timescale": rep.to_json()}
    return scaled, rep
