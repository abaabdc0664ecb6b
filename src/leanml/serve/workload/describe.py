"""Characterize a trace: rate over time, burstiness (CV of gaps and of per-second counts), token sizes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from leanml.serve.workload.traces import Trace, TraceError


def rate_series(trace: Trace, bin_s: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Bin starts (s) and request counts per bin of ``bin_s`` seconds."""
    if not bin_s > 0:
        raise TraceError(f"bin_s must be positive, got {bin_s}")
    nbins = max(1, int(np.floor(trace.duration_s / bin_s)) + 1)
    counts = np.bincount((trace.arrival_s / bin_s).astype(np.int64), minlength=nbins)[:nbins]
    return np.arange(nbins) * bin_s, counts


def cv(x: np.ndarray) -> float:
    """Coefficient of variation (std/mean, population std); NaN for an empty or zero-mean sample."""
    x = np.asarray(x, dtype=np.float64)
    m = x.mean() if len(x) else 0.0
    return float(x.std() / m) if m > 0 else float("nan")


def describe(trace: Trace, bin_s: float = 1.0) -> dict[str, Any]:
    """Summary statistics of a trace, as a flat JSON-able dict."""
    if len(trace) < 2:
        raise TraceError(f"trace '{trace.name}' has {len(trace)} requests; need at least 2 to describe")
    gaps = np.diff(trace.arrival_s)
    _, counts = rate_series(trace, bin_s)
    full = counts[:-1] if len(counts) > 1 else counts  # the last bin is partial
    out: dict[str, Any] = {
        "name": trace.name,
        "requests": len(trace),
        "duration_s": trace.duration_s,
        "mean_rate_rps": trace.mean_rate,
        f"peak_rate_rps_{bin_s:g}s": float(counts.max() / bin_s),
        "cv_interarrival": cv(gaps),
        f"cv_counts_{bin_s:g}s": cv(full),
        f"dispersion_index_{bin_s:g}s": float(full.var() / full.mean()) if full.mean() > 0 else float("nan"),
        "zero_gap_fraction": float(np.mean(gaps == 0)),
    }
    for col in ("context_tokens", "generated_tokens"):
        v = getattr(trace, col)
        if v is not None and len(v):
            for q in (50, 90, 99):
                out[f"{col}_p{q}"] = float(np.percentile(v, q))
            out[f"{col}_mean"] = float(v.mean())
            out[f"{col}_max"] = int(v.max())
    return out


def plot(trace: Trace, out_dir: str | Path, bin_s: float = 1.0) -> list[Path]:
    """Write rate-over-time, inter-arrival and token-length PNGs; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from leanml.io import atomic_write_bytes

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    def save(fig, name: str) -> None:
        import io

        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        p = out_dir / f"{trace.name}_{name}.png"
        atomic_write_bytes(p, buf.getvalue())
        paths.append(p)

    t, counts = rate_series(trace, bin_s)
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.plot(t, counts / bin_s, lw=0.8)
    ax.set(xlabel="time (s)", ylabel=f"requests/s ({bin_s:g} s bins)", title=f"{trace.name}: arrival rate")
    save(fig, "rate")

    gaps = np.diff(trace.arrival_s)
    fig, ax = plt.subplots(figsize=(5, 3))
    pos = gaps[gaps > 0]
    if len(pos):
        lg = np.log10(pos)
        ax.hist(lg, bins=60 if np.ptp(lg) > 1e-6 else 1)
    ax.set(xlabel="log10 inter-arrival (s)", ylabel="count", title=f"CV of gaps = {cv(gaps):.2f}")
    save(fig, "interarrival")

    cols = [c for c in ("context_tokens", "generated_tokens") if getattr(trace, c) is not None]
    if cols:
        fig, axes = plt.subplots(1, len(cols), figsize=(5 * len(cols), 3), squeeze=False)
        for ax, c in zip(axes[0], cols, strict=True):
            ax.hist(getattr(trace, c), bins=60)
            ax.set(xlabel=c, ylabel="count", yscale="log")
        save(fig, "tokens")
    return paths
