"""Results bookkeeping of benchmarks/grads_throughput.py: the full run's parts, the table, the JSON summary.

Each part of the full run (one LoRA configuration, or the peer comparison) keeps its rows in
results/grads_throughput_parts/ (`save_part`); a full-mode run rebuilds its rows from every part present
(`from_parts`), and `summary` derives the headline and per-configuration ratios and says which parts ran
and which are missing.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from leanml.io import atomic_write_text

PARTS = Path(__file__).parent / "results" / "grads_throughput_parts"
FULL_CONFIGS = [(m, r, 8192) for m in ("minilm", "smollm2") for r in (128, 8)]


def part_name(model: str, rank: int, k: int) -> str:
    """The part name of one LoRA configuration of the full run."""
    return f"{model}-r{rank}-k{k}"


def part_path(name: str, dev: str, random_init: bool) -> Path:
    """The file that keeps part ``name`` for this device kind (and random-init models)."""
    return PARTS / f"{name}-{dev.split(':')[0]}{'-random' if random_init else ''}.json"


def save_part(name: str, rows: list[dict], dev: str, random_init: bool) -> None:
    """Keep one part of the full run (its rows, when it ran and under what load), atomically."""
    PARTS.mkdir(parents=True, exist_ok=True)
    part = {"name": name, "rows": rows, "ran_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "load": os.getloadavg(), "command": " ".join(sys.argv)}
    atomic_write_text(part_path(name, dev, random_init), json.dumps(part, default=float) + "\n")


def load_parts(dev: str, random_init: bool) -> dict[str, Any]:
    """Every part of the full run kept so far, by name (configurations in `FULL_CONFIGS` order, then peers)."""
    names = [part_name(*c) for c in FULL_CONFIGS] + ["peers"]
    return {n: json.loads(p.read_text()) for n in names if (p := part_path(n, dev, random_init)).exists()}


def from_parts(dev: str, random_init: bool) -> tuple[dict[str, Any], list[dict], list[tuple[str, int, int]]]:
    """The full run rebuilt from its parts: (parts, all their rows, the configurations they hold)."""
    parts = load_parts(dev, random_init)
    rows = [r for p in parts.values() for r in p["rows"]]
    return parts, rows, [c for c in FULL_CONFIGS if part_name(*c) in parts]


def print_table(rows: list[dict]) -> None:
    """One line per row: model, rank, k, method, examples/s, peak MiB, extrapolated, and a note."""
    hdr = ["model", "rank", "k", "method", "ex_per_s", "peak_mib", "extrapolated"]
    print(" | ".join(f"{h:>38}" if h == "method" else f"{h:>10}" for h in hdr) + " | note")
    for r in rows:
        note = r.get("note") or (f"projector: {r['projector']}" if r.get("projector") else "")
        print(" | ".join(f"{r[h]:>38}" if h == "method"
                         else (f"{r[h]:>10.3f}" if isinstance(r[h], float) else f"{r[h]!s:>10}") for h in hdr)
              + f" | {note}")


def ratios(rs: list[dict], peers: tuple[str, ...], ours_method: str) -> dict[str, Any]:
    """leanml (``ours_method``) over the fastest peer of the same feature kind, and over the fwd+bwd floor."""
    ours = next(r["ex_per_s"] for r in rs if r["method"] == ours_method)
    fl = next(r for r in rs if r["method"].startswith("floor"))["ex_per_s"]
    ran = [r for r in rs if r["ex_per_s"] and r["method"].startswith(peers)]
    best_peer = max(ran, key=lambda r: r["ex_per_s"]) if ran else None
    return {"speedup_vs_best_peer": None if best_peer is None else ours / best_peer["ex_per_s"],
            "best_peer": None if best_peer is None else best_peer["method"],
            "best_peer_floor_ratio": None if best_peer is None else fl / best_peer["ex_per_s"] - 1,
            "overhead_vs_floor": fl / ours - 1, "leanml_ex_per_s": ours}


def summary(rows: list[dict], configs: list[tuple[str, int, int]], parts: dict[str, Any],
            quick: bool) -> dict[str, Any]:
    """The result's derived keys: headline config, parts and missing, headline ratios, per-config ratios."""
    peer_rows = [r for r in rows if r.get("rank") == "qkvo-r32"]
    head = (ratios([r for r in peer_rows if "EK" not in r["method"]], ("LogIX", "bergson"), "leanml factorized")
            if peer_rows else {"speedup_vs_best_peer": None, "best_peer": None, "overhead_vs_floor": None})
    ek = {r["method"].split()[0]: r for r in peer_rows if "EK" in r["method"] and r["ex_per_s"]}
    head["ekfac_speedup_vs_kronfluence"] = (ek["leanml"]["ex_per_s"] / ek["kronfluence"]["ex_per_s"]
                                            if {"leanml", "kronfluence"} <= set(ek) else None)
    head["ekfac_agreement_with_kronfluence"] = ek.get("leanml", {}).get("agreement_with_kronfluence")
    # dense-projection features: leanml dense against the LESS-style loop and traker's projector on the
    # same batched gradients (leanml factorized is another kind of feature; its floor ratio is in the rows)
    per_config = {}
    for m, r, _ in configs:
        rs = [x for x in rows if x["model"] == m and x["rank"] == r]
        per_config[f"{m}-r{r}"] = {**ratios(rs, ("LESS", "batched grads + traker"), "leanml dense"),
                                   "factorized_overhead_vs_floor": ratios(rs, (), "leanml factorized")[
                                       "overhead_vs_floor"]}
    return {
        "headline_config": {"model": "minilm", "layers": "q/k/v/o base weights", "features": "LoGra 32x32 per layer",
                            "k": peer_rows[0]["k"] if peer_rows else None},
        "parts": {k: {"ran_at": v["ran_at"], "load": v["load"], "command": v["command"]} for k, v in parts.items()},
        "missing": [] if quick else ([part_name(*c) for c in FULL_CONFIGS if part_name(*c) not in parts]
                                     + ([] if "peers" in parts else ["peers"])),
        **head, "per_config": per_config,
    }
