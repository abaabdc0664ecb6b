"""GEMM operand packing on a CPU: the per-byte cost a BLAS GEMM pays on top of its FLOPs, by thin dimension m.

A CPU BLAS (MKL, oneDNN, OpenBLAS) copies both operands into blocked panels on every call before its micro-
kernel runs. For a square GEMM that copy is a few percent of the FLOPs; for a layer's GEMM with few rows (a
decode step: m = batch) it is most of the time, because the whole weight is streamed and packed to produce a
handful of output rows. m = 1 takes the GEMV path instead (no packing: a pure weight stream). So

    t(m, n, k) = dispatch + 2mnk / (peak * eff(flops)) + (m k + k n) * bytes * pack_cost(level, m)

``pack_cost`` is measured here on synthetic ``F.linear`` GEMMs (one weight reused: hot in a cache; a pool of
weights twice the last cache: from main memory), never on the model cases the accuracy benchmark validates,
and the square-GEMM efficiency curves are refitted with the packing time taken out, so the two terms add up.
"""

from __future__ import annotations

import math
import statistics

import torch

from leanml.hw.schema import Device, Efficiency, Power
from leanml.hw.timing import best_time, fit_efficiency

# ---------------------------------------------------------------- GEMM operand packing, by thin dimension m
PACK_M = {True: (1, 2, 4, 8, 16, 32, 64), False: (1, 2, 4, 8, 16, 32, 64, 128)}


def gemm_pack_rows(dev: str, quick: bool, reps: int, sync, stream_bytes: float) -> list[dict]:
    """Times of ``F.linear(x[m, k], W[n, k])`` (a layer's GEMM, weight transposed as nn.Linear stores it) over
    the thin dimension m: with one weight reused (``where="hot"``: it stays in a cache) and cycling through
    a pool of distinct weights of ``stream_bytes`` in all (``"stream"``: each comes from main memory, as in
    a decode step that reads every weight once). Synthetic shapes only: no model case is fitting data."""
    rows = []
    torch.manual_seed(0)
    hot = [(256, 256), (512, 2048)] + ([] if quick else [(2048, 512), (1024, 1024)])
    for k, n in hot:
        w = torch.randn(n, k, device=dev)
        for m in PACK_M[quick]:
            x = torch.randn(m, k, device=dev)
            rows.append({"m": m, "n": n, "k": k, "where": "hot",
                         "t": best_time(lambda x=x, w=w: torch.nn.functional.linear(x, w), reps, sync=sync)})
    for k, n in [(512, 2048)] + ([] if quick else [(2048, 512), (1024, 1024)]):
        pool = [torch.randn(n, k, device=dev) for _ in range(max(2, math.ceil(stream_bytes / (n * k * 4))))]
        for m in PACK_M[quick]:
            x = torch.randn(m, k, device=dev)

            def sweep(x=x, pool=pool) -> None:
                for w in pool:
                    torch.nn.functional.linear(x, w)
            rows.append({"m": m, "n": n, "k": k, "where": "stream",
                         "t": best_time(sweep, max(3, reps // 3), sync=sync) / len(pool)})
        del pool
    return rows


def fit_gemm_pack(rows: list[dict], levels: list, compute_s, overhead: float) -> dict[str, tuple]:
    """Seconds per input byte beyond dispatch and compute, median per (memory level, m): ``{level: ((m, s), ..)}``.

    ``compute_s(flops)`` is the fitted GEMM compute time; a hot row's level is the smallest one holding its
    operands in half its capacity (as `Device.level_for`), a streamed row's is main memory."""
    cells: dict[str, dict[int, list[float]]] = {}
    for r in rows:
        m, n, k = r["m"], r["n"], r["k"]
        inputs = float((m * k + k * n) * 4)
        if r["where"] == "stream":
            lv = levels[-1].name
        else:
            lv = next((x.name for x in levels[:-1] if inputs <= 0.5 * x.capacity), levels[-1].name)
        resid = r["t"] - overhead - compute_s(2.0 * m * n * k)
        cells.setdefault(lv, {}).setdefault(m, []).append(max(resid, 0.0) / inputs)
    return {lv: tuple((float(m), float(statistics.median(v))) for m, v in sorted(by_m.items()))
            for lv, by_m in cells.items()}


def _square_pack_s(levels: list, pack: dict, n: int, nbytes: int) -> float:
    """Operand-packing seconds of an n x n x n GEMM probe under the fitted ``pack`` curves (0 without any)."""
    if not pack or not levels:
        return 0.0
    ws = 3 * n * n * nbytes
    lv = next((x.name for x in levels[:-1] if ws <= 0.5 * x.capacity), levels[-1].name)
    probe = Device("probe", "probe", "cpu", 1, {"fp32": 1.0}, tuple(levels), (), Power(0.0, 1.0), gemm_pack=pack)
    return 2 * n * n * nbytes * probe.pack_cost(lv, n)


def gemm_curves(gemm: dict, bias_rows: list, peaks: dict, op_ovh: float, levels: list,
                pack: dict) -> dict[str, Efficiency]:
    """GEMM efficiency curves per dtype (and GEMM + bias), fitted to the square probes' times minus their
    operand-packing time under ``pack`` (empty: the whole time, as on devices without a packing term)."""
    out: dict[str, Efficiency] = {}
    for dt, rows in gemm.items():
        if dt not in peaks:
            continue
        nb = {"fp64": 8, "bf16": 2, "fp16": 2, "int8": 1}.get(dt, 4)
        ts = [t - _square_pack_s(levels, pack, round((f / 2) ** (1 / 3)), nb) for f, t in rows]
        out[f"matmul_{dt}" if dt != "fp32" else "matmul"] = fit_efficiency(
            [f for f, _ in rows], ts, peaks[dt], op_ovh, f"calibrated GEMM {dt}" + (" (less packing)" if pack else ""))
    ts = [t - _square_pack_s(levels, pack, round((f / 2) ** (1 / 3)), 4) for f, t in bias_rows]
    out["matmul_bias"] = fit_efficiency([f for f, _ in bias_rows], ts, peaks["fp32"], op_ovh,
                                        "calibrated addmm (GEMM + bias) fp32" + (" (less packing)" if pack else ""))
    return out


def calibrate_gemm_pack(device: str, quick: bool, reps: int, sync, op_ovh: float, levels: list, gemm: dict,
                        bias_rows: list, peaks: dict, eff: dict, log) -> tuple[dict, dict]:
    """CPU only: fit the per-byte GEMM operand cost by thin dimension m (`leanml.hw.probes.gemm_pack_rows`), and
    refit the GEMM curves with it taken out (twice: each fit uses the other's latest figures)."""
    if device != "cpu":
        return {}, {}
    caches = [lv.capacity for lv in levels[:-1]]
    stream = 2.0 * (max(caches) if caches else 32 * 2**20)
    rows = gemm_pack_rows(device, quick, reps, sync, stream)
    pack: dict = {}
    for _ in range(2):
        e = eff["matmul"]
        pack = fit_gemm_pack(rows, levels, lambda f, e=e: f / (peaks["fp32"] * e.at(f)), op_ovh)
        eff.update(gemm_curves(gemm, bias_rows, peaks, op_ovh, levels, pack))
    for lv, pts in pack.items():
        log(f"GEMM operand cost ({lv}): " + ", ".join(f"m={m:.0f} {v * 1e12:.0f} ps/B" for m, v in pts)
            + " (m=1: GEMV path; m>=2: operands packed every call)")
    meta = {"gemm_pack_probe": (f"F.linear(x[m,k], W[n,k]) for m in {list(PACK_M[quick])}: (k,n) "
                                f"{sorted({(r['k'], r['n'], r['where']) for r in rows})}; hot = one weight reused, "
                                f"stream = a {stream / 2**20:.0f} MiB pool of weights (main memory). Per-byte cost = "
                                "(time - dispatch - compute on the GEMM curve) / input bytes, median per (level, m)"),
            "gemm_pack_rows": [[r["m"], r["n"], r["k"], r["where"], float(r["t"])] for r in rows]}
    return pack, meta
