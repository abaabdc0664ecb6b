"""`make demo` section: this machine's calibrated roofline, with the demo's workloads placed on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from leanml.hw.catalog import get_device, local_device_path, write_device
from leanml.hw.schema import Device


def local_device(quick: bool = True, log=None) -> Device:
    """This machine's device file for the current torch thread count, from the cache or calibrated
    (quickly) and cached on first use. A file calibrated at another thread count is not reused."""
    import torch

    threads = torch.get_num_threads()
    default = local_device_path()
    path = default.with_name(f"local-threads{threads}.toml")
    for candidate in (default, path):
        if candidate.exists():
            try:
                dev = get_device(candidate)
            except Exception:  # an unreadable or outdated cache file is recalibrated, not trusted
                continue
            if dev.calibration.get("torch_threads") == threads:
                return dev
    from leanml.hw.calibrate import calibrate

    dev = calibrate(quick=quick, log=log)
    write_device(dev, path, f"{dev.name}: calibrated by the leanml demo (quick) on {dev.calibration['date']}")
    return dev


def _workloads() -> list[tuple[str, Any]]:
    """(name, callable) for the demo's workloads: digits MLP train step, CNN forward, a matmul."""
    import torch
    import torch.nn.functional as F

    from leanml.data import load
    from leanml.models import build_cnn, build_mlp

    digits = load("digits", "train")
    x = torch.as_tensor(digits.X[:64], dtype=torch.float32)
    y = torch.as_tensor(digits.y[:64], dtype=torch.int64)
    mlp = build_mlp(x.shape[1], 10, (128,))

    def mlp_step() -> None:
        for p in mlp.parameters():
            p.grad = None
        F.cross_entropy(mlp(x), y).backward()

    cnn = build_cnn(10, 3, 32).eval()
    img = torch.randn(32, 3, 32, 32)

    def cnn_fwd() -> None:
        with torch.no_grad():
            cnn(img)

    a, b = torch.randn(512, 512), torch.randn(512, 512)
    return [("digits MLP train step (b64)", mlp_step), ("CNN forward (b32, 3x32x32)", cnn_fwd),
            ("matmul 512x512x512", lambda: torch.mm(a, b))]


def plot_roofline(dev: Device, points: list[dict[str, Any]], path: Path) -> Path:
    """Log-log roofline: one slanted roof per memory level, the fp32 peak flat, workloads as points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from leanml.io import atomic_write_bytes

    peak = dev.peak("fp32")
    xs = np.logspace(-2, 3, 200)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for lv in dev.memory:
        ax.plot(xs, np.minimum(peak, lv.bandwidth * xs), lw=1.2, label=f"{lv.name} {lv.bandwidth / 1e9:.0f} GB/s")
    ax.axhline(peak, color="k", ls="--", lw=0.8, label=f"fp32 peak {peak / 1e9:.0f} GFLOP/s")
    for p in points:
        ax.scatter(p["intensity"], p["achieved_flops"], s=45, zorder=3)
        ax.scatter(p["intensity"], p["predicted_flops"], s=45, facecolors="none", edgecolors="gray", zorder=3)
        ax.annotate(p["name"], (p["intensity"], p["achieved_flops"]), fontsize=7, xytext=(4, -10),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("FLOP/s")
    ax.set_title(f"{dev.name}\nfilled: measured, hollow: predicted", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def roofline_section(out_dir: Path, console, threads: int | None = 1) -> dict[str, Any]:
    """Calibrated roofline of this machine with the demo workloads on it; returns the figures.

    Runs with ``threads`` torch threads (default 1, restored afterwards): on a shared machine
    one thread gives steady timings, while intra-op threads stall each other when oversubscribed.
    """
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _roofline_section(Path(out_dir), console)
    finally:
        torch.set_num_threads(before)


def _roofline_section(out_dir: Path, console) -> dict[str, Any]:
    import torch
    from rich.table import Table

    from leanml.hw.calibrate import best_time
    from leanml.hw.predict import predict
    from leanml.hw.trace import trace_callable

    dev = local_device(quick=True, log=lambda m: console.print(f"[dim]calibrate: {m}[/dim]"))
    points = []
    for name, fn in _workloads():
        fn()
        prof = trace_callable(fn, name)
        pred = predict(prof, dev)
        meas = best_time(fn, 5)
        points.append({"name": name, "flops": pred.flops, "bytes": pred.bytes,
                       "intensity": pred.flops / max(pred.bytes, 1.0), "measured_s": meas,
                       "predicted_s": pred.time_s, "achieved_flops": pred.flops / meas,
                       "predicted_flops": pred.flops / pred.time_s, "bound": pred.bound,
                       "pct_error": 100.0 * (pred.time_s - meas) / meas})
    png = plot_roofline(dev, points, out_dir / "hw_roofline.png")
    t = Table(title=f"roofline of {dev.id} ({dev.name})")
    for c in ("workload", "FLOP/B", "measured", "predicted", "GFLOP/s", "% of peak", "bound"):
        t.add_column(c, justify="left" if c == "workload" else "right")
    for p in points:
        t.add_row(p["name"], f"{p['intensity']:.2f}", f"{p['measured_s'] * 1e3:.3f} ms",
                  f"{p['predicted_s'] * 1e3:.3f} ms", f"{p['achieved_flops'] / 1e9:.2f}",
                  f"{100 * p['achieved_flops'] / dev.peak('fp32'):.1f}", p["bound"])
    console.print(t)
    console.print(f"roofline plot: {png}")
    return {"device": dev.id, "device_name": dev.name, "torch_threads": torch.get_num_threads(),
            "peak_fp32_flops": dev.peak("fp32"),
            "ridge_point_fp32": dev.ridge_point("fp32"), "plot": str(png), "workloads": points}
