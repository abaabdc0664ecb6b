"""Side-by-side LLM phase predictions: leanml.hw vs llm-analysis and GenZ (genz-llm) on catalog GPUs.

Each peer runs in its own virtual environment (llm-analysis 0.2.2 pins transformers 4.31; genz-llm pulls a
plotting stack) through a JSON-in/JSON-out shim in benchmarks/peers/, so leanml's environment needs neither.
Every tool gets the same datasheet figures (leanml's catalog: dense bf16 peak, HBM bandwidth, capacity), so
the comparison is of the cost models. leanml appears twice: as shipped (the catalog's assumed efficiencies
and 5 us per kernel; nothing is calibrated on these GPUs) and "ideal" (efficiency 1, no launch overhead:
the assumptions both peers make by default), which isolates formula differences from efficiency ones;
"no launch" drops only the launch overhead (a CUDA-graph serving engine).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import replace
from pathlib import Path

from leanml.hw.catalog import get_device
from leanml.hw.llm import decode_step, predict_llm_train, predict_prefill
from leanml.hw.llm_ops import PRESETS

_PEER_ENVS = Path(__file__).resolve().parent.parent / ".peers"  # built by `make peer-envs`
PEERS = {  # name -> (venv python, shim); override the venvs with LEANML_PEER_LLMA / LEANML_PEER_GENZ
    "llm-analysis": (os.environ.get("LEANML_PEER_LLMA", str(_PEER_ENVS / "llm-analysis")) + "/bin/python",
                     Path(__file__).parent / "peers" / "llm_analysis_shim.py"),
    "genz": (os.environ.get("LEANML_PEER_GENZ", str(_PEER_ENVS / "genz")) + "/bin/python",
             Path(__file__).parent / "peers" / "genz_shim.py"),
}
DEVICES = ("a100_80gb", "h100_sxm", "h200")
MODELS = ("smollm2-135m", "llama-7b")
LORA_RANK, TRAIN_BATCH, SEQ, CONTEXT = 128, 4, 512, 512
PHASES = ("train_lora_r128", "train_full", "prefill_512", "decode_b1", "decode_b16", "decode_b64")


def _ideal(dev_id: str):
    d = get_device(dev_id)
    return replace(d, efficiency={}, op_overhead=0.0, view_overhead=0.0, autograd_overhead=0.0)


def _leanml(model: str, dev, phase: str, overhead: bool = True) -> float:
    if phase == "train_lora_r128":
        return predict_llm_train(model, dev, "bf16", TRAIN_BATCH, SEQ, lora_rank=LORA_RANK, overhead=overhead).time_s
    if phase == "train_full":
        return predict_llm_train(model, dev, "bf16", TRAIN_BATCH, SEQ, overhead=overhead).time_s
    if phase == "prefill_512":
        return predict_prefill(model, dev, "bf16", 1, SEQ, overhead=overhead).time_s
    b = int(phase.split("_b")[1])
    return decode_step(model, dev, "bf16", b, CONTEXT + 1, overhead=overhead).time_s


def _case(model: str, dev_id: str, phase: str) -> dict:
    s, d = PRESETS[model], get_device(dev_id)
    p = {"phase": "decode" if phase.startswith("decode") else phase if phase.startswith("train") else "prefill",
         "batch": int(phase.split("_b")[1]) if phase.startswith("decode") else TRAIN_BATCH if "train" in phase else 1,
         "seq": SEQ, "context": CONTEXT + 1}
    if phase == "train_lora_r128":
        p["phase"] = "train_lora"
    return {"id": f"{model}|{dev_id}|{phase}", **p,
            "model": {"name": s.name, "hidden": s.hidden, "layers": s.layers, "heads": s.heads,
                      "kv_heads": s.kv_heads, "intermediate": s.intermediate, "vocab": s.vocab,
                      "max_context": s.max_context},
            "gpu": {"name": dev_id, "tflops": d.peak("bf16") / 1e12, "bw_GBs": d.main_memory.bandwidth / 1e9,
                    "mem_GB": d.main_memory.capacity / 1e9}}


def start_peer(name: str, cases: list[dict]):
    """Start a peer's shim (a subprocess in its own venv); None when its venv is missing."""
    py, shim = PEERS[name]
    if not Path(py).exists():
        return None
    proc = subprocess.Popen([py, str(shim)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"})
    return proc, json.dumps({"cases": cases})


def finish_peer(name: str, started, timeout_s: float = 600) -> tuple[str, dict[str, dict]]:
    """(tool version or exactly why it did not run, {case id: {"time_s"} or {"error"}})."""
    if started is None:
        return (f"not run: no virtual environment at {Path(PEERS[name][0]).parent.parent} "
                "(see docs/hw.md for the install)"), {}
    proc, payload = started
    try:
        out, err = proc.communicate(payload, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return f"not run: shim timed out after {timeout_s:.0f} s", {}
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return f"not run: shim exited {proc.returncode}: {(err or out)[-300:]}", {}
    res = json.loads(lines[-1])
    return res["tool"], {x["id"]: x for x in res["results"]}


def all_cases() -> list[dict]:
    return [_case(m, d, p) for m in MODELS for d in DEVICES for p in PHASES]


def start_all() -> dict:
    """Start every peer on every case; pass the result to `peer_table` (lets the caller overlap setup work)."""
    cases = all_cases()
    return {"cases": cases, "procs": {name: start_peer(name, cases) for name in PEERS}}


REASONS = {
    "E": "efficiency: leanml's uncalibrated catalog assumes GEMMs reach 0.75 and HBM 0.9 x a size curve of peak; "
         "both peers assume 1.0",
    "O": "launch overhead: leanml adds 5 us per kernel (eager PyTorch, assumed); the peers add none",
    "A": "activations: leanml moves every kernel's inputs and outputs through HBM (unfused kernels); GenZ keeps "
         "intermediates on chip and llm-analysis counts weights and KV only",
    "K": "KV cache: llm-analysis loads AND stores the whole cache every decode step (2 x cache bytes); leanml "
         "reads it once and writes only the new token's K/V",
    "T": "training: leanml counts the Adam step (fp32 master weights, m, v: 28 B per trained parameter) and the "
         "elementwise/norm/loss traffic; llm-analysis counts GEMM FLOPs (6 x params x tokens) only",
    "G": "GQA: llm-analysis's FLOP count sizes the K/V projections as h x h (SmolLM2 has 3 KV heads of 9)",
}


def _why(model: str, phase: str, ratio_ideal: float, peer: str) -> list[str]:
    """Codes of `REASONS` behind a >20% disagreement: which of leanml's assumptions explains it."""
    if abs(ratio_ideal - 1) <= 0.2:  # same arithmetic once leanml's efficiencies and overheads are set to 1 / 0
        return ["O", "E"] if phase.startswith("decode") or model.startswith("smollm2") else ["E"]
    codes = []
    if phase.startswith("decode") and peer == "llm-analysis":
        codes.append("K")
    if phase.startswith("train") and peer == "llm-analysis":
        codes.append("T")
    if phase.startswith("prefill") or (phase.startswith("train") and model.startswith("smollm2")):
        codes.append("A")
    if model.startswith("smollm2") and peer == "llm-analysis":
        codes.append("G")
    return codes + ["E", "O"]


def peer_table(started: dict | None = None, timeout_s: float = 600) -> dict:
    started = started or start_all()
    cases = started["cases"]
    tools, results = {}, {}
    for name in PEERS:
        tools[name], results[name] = finish_peer(name, started["procs"][name], timeout_s)
    rows = []
    for c in cases:
        model, dev_id, phase = c["id"].split("|")
        row = {"model": model, "device": dev_id, "phase": phase,
               "leanml_s": _leanml(model, dev_id, phase),
               "leanml_no_launch_s": _leanml(model, dev_id, phase, overhead=False),
               "leanml_ideal_s": _leanml(model, _ideal(dev_id), phase, overhead=False)}
        flags = []
        for name in PEERS:
            res = results[name].get(c["id"])
            if res is None:
                row[f"{name}_s"], row[f"{name}_why"] = None, tools[name]
                continue
            if "error" in res:
                row[f"{name}_s"], row[f"{name}_why"] = None, res["error"]
                continue
            t = res["time_s"]
            row[f"{name}_s"] = t
            ratio = row["leanml_s"] / t
            ideal = row["leanml_ideal_s"] / t
            row[f"leanml_over_{name}"] = round(ratio, 3)
            row[f"ideal_over_{name}"] = round(ideal, 3)
            if abs(ratio - 1) > 0.2:
                flags.append(f"{name} x{1 / ratio:.2f} [{','.join(_why(model, phase, ideal, name))}]")
        row["disagreements_over_20pct"] = flags
        rows.append(row)
    return {"tools": tools, "rows": rows,
            "settings": {"dtype": "bf16", "lora_rank": LORA_RANK, "lora_targets": "q,k,v,o",
                         "train_batch": TRAIN_BATCH, "seq": SEQ, "decode_context": CONTEXT + 1,
                         "peer_efficiency": "defaults (1.0)", "leanml": "catalog as shipped (datasheet peaks, "
                         "assumed efficiencies, 5 us/kernel); leanml_no_launch: without launch overhead (CUDA graphs); "
                         "leanml_ideal: efficiency 1, no overhead"},
            "reasons": REASONS}


def print_table(tbl: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="LLM phases in bf16: leanml vs llm-analysis vs GenZ (ms; same datasheet peaks/bandwidth)")
    t.add_column("model")
    for col in ("device", "phase", "leanml", "no launch", "leanml ideal", "llm-analysis", "GenZ", ">20% apart"):
        t.add_column(col, justify="left" if col in ("model", "device", "phase", ">20% apart") else "right")

    def ms(v):
        return f"{v * 1e3:.3f}" if v is not None else "n/a"
    for r in tbl["rows"]:
        t.add_row(r["model"], r["device"], r["phase"], ms(r["leanml_s"]), ms(r["leanml_no_launch_s"]),
                  ms(r["leanml_ideal_s"]),
                  ms(r["llm-analysis_s"]), ms(r["genz_s"]),
                  "; ".join(r["disagreements_over_20pct"]) or "-")
    Console().print(t)
    for name, why in tbl["tools"].items():
        Console().print(f"{name}: {why}")
    Console().print("x = peer time / leanml time; reasons: " + "; ".join(f"[{k}] {v}" for k, v in REASONS.items()))
