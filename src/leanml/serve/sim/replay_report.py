"""Results of a replay study: one Parquet table of requests, a Markdown report, time-series PNGs."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from leanml.io import atomic_write_bytes, atomic_write_text

COLUMNS = ("mode", "policy", "id", "arrival_s", "status", "outcome", "variant", "latency_ms", "batch_size",
           "met_slo", "correct", "accuracy", "energy_j")


def write_rows(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """All request rows (one per request per run) as Parquet, written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols: dict[str, list] = {c: [] for c in COLUMNS}
    for r in rows:
        for c in COLUMNS:
            v = r.get(c)
            if c in ("latency_ms", "correct", "accuracy", "energy_j", "arrival_s"):
                v = float("nan") if v is None else float(v)
            elif c in ("status", "id", "batch_size"):
                v = -1 if v is None or (isinstance(v, float) and math.isnan(v)) else int(v)
            elif c == "met_slo":
                v = bool(v)
            else:
                v = None if v is None else str(v)
            cols[c].append(v)
    if any("max_new_tokens" in r for r in rows):  # text generators: the tokens each request generated
        cols["max_new_tokens"] = [int(r["max_new_tokens"]) if r.get("max_new_tokens") else -1 for r in rows]
    table = pa.table(cols)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _fmt(v: Any) -> str:
    if v is None:
        return "unavailable"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def markdown(summaries: dict[str, dict[str, dict[str, Any]]], meta: dict[str, Any], plots: list[Path]) -> str:
    """The report: what ran (trace, rate, SLO, machine), a table per mode, the plots, reconfiguration counts."""
    lines = ["# Replay study", ""]
    for k, v in meta.items():
        lines.append(f"- **{k}**: {_fmt(v) if not isinstance(v, (list, dict)) else v}")
    keys = ("goodput_rps", "slo_violation_rate", "mean_accuracy_measured", "mean_accuracy_profiled",
            "energy_per_request_j", "p50_ms", "p99_ms", "requests", "answered", "refused", "reconfigurations")
    for mode, by_policy in summaries.items():
        lines += ["", f"## {mode}", "", "| policy | " + " | ".join(keys) + " |",
                  "|---" * (len(keys) + 1) + "|"]
        for pol, s in by_policy.items():
            lines.append(f"| {pol} | " + " | ".join(_fmt(s.get(k)) for k in keys) + " |")
    if plots:
        lines += ["", "## Time series", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    lines += ["", "Goodput counts requests answered within their latency SLO per second of trace; energy is "
              "the profiled energy per request of the answering variant ('unavailable' where this machine "
              "exposes no energy counter)."]
    return "\n".join(lines) + "\n"


def timeseries_png(path: str | Path, runs: dict[str, list[dict[str, Any]]], reconfigs: dict[str, list[dict]],
                   title: str, bin_s: float | None = None) -> Path:
    """Load (arrivals/s), p99 latency and goodput per bin for each policy; planner reconfigurations marked.

    ``bin_s`` defaults to 1 s, or 1/120 of the run for runs shorter than 2 minutes (compressed traces).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(9, 7.5), sharex=True)
    first = next(iter(runs.values()), [])
    t_end = max((r["arrival_s"] for rows in runs.values() for r in rows), default=0.0)
    if bin_s is None:
        bin_s = 1.0 if t_end >= 120 else max(t_end / 120, 1e-4)
    nb = int(t_end // bin_s) + 1
    arr = np.array([r["arrival_s"] for r in first])
    axes[0].plot(np.arange(nb) * bin_s, np.bincount((arr // bin_s).astype(int), minlength=nb)[:nb] / bin_s,
                 color="k", lw=0.8)
    axes[0].set_ylabel("load (req/s)")
    for pol, rows in runs.items():
        t = np.array([r["arrival_s"] for r in rows])
        idx = (t // bin_s).astype(int)
        lat = np.array([r["latency_ms"] if r.get("status") == 200 else np.nan for r in rows], dtype=float)
        p99 = [np.nanpercentile(lat[idx == b], 99) if np.any(np.isfinite(lat[idx == b])) else np.nan
               for b in range(nb)]
        good = np.bincount(idx[np.array([bool(r.get("met_slo")) for r in rows])], minlength=nb)[:nb] / bin_s
        (line,) = axes[1].plot(np.arange(nb) * bin_s, p99, lw=0.8, label=pol)
        axes[2].plot(np.arange(nb) * bin_s, good, lw=0.8, color=line.get_color(), label=pol)
        for ev in reconfigs.get(pol, []):
            if ev.get("what") == "plan" and np.isfinite(ev.get("time_s", np.nan)):
                axes[2].axvline(ev["time_s"], color=line.get_color(), alpha=0.15, lw=0.6)
    axes[1].set_ylabel("p99 latency (ms)")
    axes[1].set_yscale("log")
    axes[2].set_ylabel("goodput (req/s)")
    axes[2].set_xlabel(f"time (s, bins of {bin_s:.3g} s); faint lines: re-plans")
    axes[1].legend(fontsize=7, ncol=3)
    axes[0].set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def write_report(out_dir: str | Path, runs: dict[str, dict[str, list[dict[str, Any]]]],
                 summaries: dict[str, dict[str, dict[str, Any]]], reconfigs: dict[str, dict[str, list[dict]]],
                 meta: dict[str, Any], stem: str = "replay") -> dict[str, Path]:
    """Write ``<stem>_rows.parquet``, ``<stem>_<mode>.png`` and ``<stem>_report.md`` under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = {m: r for m, r in runs.items() if r}
    summaries = {m: s for m, s in summaries.items() if s}
    all_rows = [{**r, "mode": mode} for mode, by_pol in runs.items() for rows in by_pol.values() for r in rows]
    paths = {"rows": write_rows(out_dir / f"{stem}_rows.parquet", all_rows)}
    plots = []
    for mode, by_pol in runs.items():
        plots.append(timeseries_png(out_dir / f"{stem}_{mode}.png", by_pol, reconfigs.get(mode, {}),
                                    f"{meta.get('trace', '')} ({mode})"))
    report = out_dir / f"{stem}_report.md"
    atomic_write_text(report, markdown(summaries, meta, plots))
    paths["report"] = report
    for p in plots:
        paths[p.stem] = p
    return paths
