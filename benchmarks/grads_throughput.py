"""How fast does leanml extract per-example gradient features, against the peer libraries and the fwd+bwd floor?

Peer comparison (the headline), MiniLM-L6 on SST-2, LoGra features of the q/k/v/o weights (24 layers
of 384 x 384, 32 x 32 per layer, no second stage), every contender on its own copy of the model and
the same batches, interleaved batch by batch with a rotating order (benchmarks/grads_peers.py):
  leanml factorized | LogIX's LoGra logging (logix-ai) | bergson's InMemoryCollector | floor.
Then EK-FAC influence end to end (factors, then query x train scores): kronfluence against
leanml.grads.EKFAC, with the agreement of their scores.
Per LoRA configuration (MiniLM; SmolLM2-135M on 128-token T0 sequences with --models smollm2):
  (a) LESS-style: batch 1, full LoRA gradient, dense projection with ``traker``'s ``BasicProjector``
      (the projector TRAK and LESS fall back to without ``fast_jl``; the row names its projector);
  (b) leanml dense, and the same batched gradients through traker's projector;
  (c) leanml factorized (LoGra-style, per layer, then a sparse JL stage to k);
  (d) floor: plain forward+backward of the same batches to the same parameters, no features.
Where a dense projection is too large to generate within the run (``D*k`` numbers per call), its
projection time is measured at a smaller k' and scaled by k/k' (rows marked ``extrapolated``).

    python benchmarks/grads_throughput.py [--quick] [--device cuda] [--random-init] [--models minilm,smollm2]
    python benchmarks/grads_throughput.py --only configs --models minilm --ranks 128   # one part of the full run
    python benchmarks/grads_throughput.py --only peers                                 # another part

The full run (k = 8192) can be split into parts, each short enough for one benchmark slot: ``--only``
(configs | peers) with ``--models``/``--ranks`` picks a part; each part's rows are kept in
results/grads_throughput_parts/ (one file per configuration, and one for the peers), and every full-mode
run rewrites results/grads_throughput.json from all parts present (``parts`` lists them with when each ran,
``missing`` what the full run has that no part holds yet; the bookkeeping is benchmarks/grads_results.py).

Peers: ``pip install --no-deps --ignore-requires-python logix-ai bergson kronfluence`` then the
``peers-grads`` extra (see pyproject.toml); a peer that does not import becomes a row saying why.
Headline keys: ``speedup_vs_best_peer`` (leanml factorized over the fastest of LogIX and bergson),
``overhead_vs_floor`` (leanml's time over the floor's, minus 1), ``ekfac_speedup_vs_kronfluence``;
``per_config`` gives the same ratios against the LESS-style and traker-projector rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from grads_results import from_parts, part_name, print_table, save_part, summary
from leanml.grads import CausalLMLoss, ClassificationLoss, GradientComputer
from leanml.io import atomic_write_text

RESULTS = Path(__file__).parent / "results" / "grads_throughput.json"
GEN_BUDGET = {"cpu": 3e9, "cuda": 1e12}  # random numbers a dense projection may generate per call in this run


def _sync(dev: str) -> None:
    if dev.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_reset(dev: str) -> None:
    from leanml.meter.memory import reset_peak_rss

    reset_peak_rss()
    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def _peak(dev: str) -> float:
    from leanml.meter.memory import peak_rss_bytes

    if dev.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return (peak_rss_bytes() or 0) / 2**20


def make_trak_projector(D: int, k: int, dev: str) -> tuple[Any, str]:
    try:
        from trak.projectors import BasicProjector, ProjectionType

        return BasicProjector(D, k, seed=0, proj_type=ProjectionType.rademacher, device=torch.device(dev),
                              block_size=100), "traker BasicProjector"
    except ImportError:
        from leanml.grads import DenseProjector

        p = DenseProjector(D, k, kind="rademacher", seed=0)

        class _P:
            def project(self, g: torch.Tensor, model_id: int) -> torch.Tensor:
                return p.project(g)
        return _P(), "equivalent block-wise projector (traker not installed)"


def less_loop(model: torch.nn.Module, loss: Any, batches: list[dict], names: list[str], k: int, dev: str,
              max_examples: int) -> dict[str, Any]:
    """LESS's collect_grads: one example at a time, loss.backward(), full gradient vector, project."""
    params = dict(model.named_parameters())
    sel = [params[n] for n in names]
    D = sum(p.numel() for p in sel)
    budget = GEN_BUDGET[dev.split(":")[0]]
    k_run = k if D * k <= budget else max(100, int(budget // D) // 100 * 100)
    proj, what = make_trak_projector(D, k_run, dev)
    singles = [{kk: v[i : i + 1].to(dev) for kk, v in b.items()}
               for b in batches for i in range(len(next(iter(b.values()))))]
    singles = singles[:max_examples]
    t_grad = t_proj = 0.0
    _peak_reset(dev)
    for ex in singles:
        _sync(dev)
        t0 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        loss.loss(model, ex).sum().backward()
        g = torch.cat([p.grad.reshape(-1) for p in sel])[None]
        _sync(dev)
        t1 = time.perf_counter()
        proj.project(g, model_id=0)
        _sync(dev)
        t_proj += time.perf_counter() - t1
        t_grad += t1 - t0
    model.zero_grad(set_to_none=True)
    n = len(singles)
    per_ex = (t_grad + t_proj * k / k_run) / n
    return {"method": "LESS-style loop (bs 1)", "examples": n, "ex_per_s": 1 / per_ex, "peak_mib": _peak(dev),
            "extrapolated": k_run != k, "k_measured": k_run, "projector": what}


def leanml_and_floor(gc: GradientComputer, batches: list[dict], dev: str, rounds: int = 2) -> list[dict]:
    """leanml factorized and the fwd+bwd floor, interleaved batch by batch (each batch runs both, in
    alternating order) so that load from other processes hits both alike; ``rounds`` passes."""
    gc.features(batches[0])  # warm-up (matrices, kernels)
    gc.floor(batches[0])
    timed = batches[1:] if len(batches) > 1 else batches
    t = {"features": 0.0, "floor": 0.0}
    peak = {"features": 0.0, "floor": 0.0}
    n = 0
    for r in range(rounds):
        for i, b in enumerate(timed):
            order = ("features", "floor") if (i + r) % 2 == 0 else ("floor", "features")
            for what in order:
                _peak_reset(dev)
                _sync(dev)
                t0 = time.perf_counter()
                gc.features(b) if what == "features" else gc.floor(b)
                _sync(dev)
                t[what] += time.perf_counter() - t0
                peak[what] = max(peak[what], _peak(dev))
            n += len(next(iter(b.values())))
    return [{"method": "leanml factorized", "examples": n, "ex_per_s": n / t["features"],
             "peak_mib": peak["features"], "extrapolated": False},
            {"method": "floor: fwd+bwd, no features", "examples": n, "ex_per_s": n / t["floor"],
             "peak_mib": peak["floor"], "extrapolated": False}]


def interleaved(contenders: dict[str, Any], batches: list[dict], dev: str, rounds: int = 2) -> dict[str, dict]:
    """Time each contender's ``step(batch)`` on every batch, rotating the order per batch so that other
    load on the machine hits all alike; one warm-up step each on the first batch (not timed)."""
    for c in contenders.values():
        c(batches[0])
    timed = batches[1:] if len(batches) > 1 else batches
    names = list(contenders)
    t = dict.fromkeys(names, 0.0)
    n = 0
    for r in range(rounds):
        for i, b in enumerate(timed):
            k = (i + r) % len(names)
            for name in names[k:] + names[:k]:
                _sync(dev)
                t0 = time.perf_counter()
                contenders[name](b)
                _sync(dev)
                t[name] += time.perf_counter() - t0
            n += len(next(iter(b.values())))
    return {name: {"method": name, "examples": n, "ex_per_s": n / t[name], "extrapolated": False} for name in names}


def peers_config(n: int, bs: int, dev: str, rank: int = 32, ekfac_batches: int = 2) -> list[dict]:
    """LoGra features of MiniLM's q/k/v/o weights (24 x 384 x 384), r x r per layer, no second stage:
    leanml factorized, LogIX, bergson and the fwd+bwd floor, interleaved on the same batches; then EK-FAC
    influence (factors + scores) by kronfluence and by leanml on the first ``ekfac_batches`` batches."""
    import grads_peers as gp
    from leanml.grads import FactorizedProjector
    from leanml.models.text import load_minilm_lora

    torch.manual_seed(0)
    model, tok = load_minilm_lora(rank=8)
    model.to(dev)
    batches = data("minilm", tok, n, bs)
    loss = ClassificationLoss()
    names = gp.base_layer_names(model)
    # leanml selects whole modules, so its features also hold the biases' r numbers per layer (LogIX and
    # bergson watch weights only): 1,056 numbers per layer against their 1,024
    layers = {nm: (model.get_submodule(nm).in_features, model.get_submodule(nm).out_features, True) for nm in names}
    proj = FactorizedProjector(layers, dim=10**9, layer_dims={nm: (rank, rank) for nm in names})
    gc = GradientComputer(model, loss, params=names, projector=proj, device=dev)
    contenders: dict[str, Any] = {"leanml factorized": gc.features, "floor: fwd+bwd, no features": gc.floor}
    notes = {}
    for cls, args in ((gp.LogIXContender, (model, loss, rank)), (gp.BergsonContender, (model, loss, rank, n))):
        try:
            c = cls(*args)
            contenders[c.name] = c.step
        except gp.PeerUnavailable as e:
            notes[cls.name] = str(e)
    rows = list(interleaved(contenders, batches, dev).values())
    rows += [{"method": m, "examples": 0, "ex_per_s": None, "extrapolated": False, "note": why}
             for m, why in notes.items()]
    try:  # EK-FAC influence end to end: kronfluence against leanml.grads.EKFAC on the same layers
        rows += gp.ekfac_vs_kronfluence(model, loss, batches[:ekfac_batches], n_query=8, rank=rank)
    except gp.PeerUnavailable as e:
        rows.append({"method": "kronfluence EK-FAC fit + scores", "examples": 0, "ex_per_s": None,
                     "extrapolated": False, "note": str(e)})
    base = {"model": "minilm", "rank": f"qkvo-r{rank}", "k": len(names) * rank * rank,
            "lora_params": sum(model.get_submodule(nm).weight.numel() for nm in names), "batch_size": bs}
    return [{**base, "peak_mib": None, **r} for r in rows]


def dense_run(model: torch.nn.Module, loss: Any, batches: list[dict], k: int, dev: str) -> dict:
    """leanml dense; projection measured at k' <= k and scaled when D*k is over the generation budget."""
    probe = GradientComputer(model, loss, params="lora", projector="factorized", dim=16, device=dev)
    D = probe.grad_dim
    budget = GEN_BUDGET[dev.split(":")[0]]
    k_run = k if D * k <= budget else max(64, int(budget // D))
    cache = D * k_run * 4 if dev.startswith("cuda") and D * k_run * 4 < 40 * 2**30 else 0
    gc = GradientComputer(model, loss, params="lora", projector="dense", dim=k_run, device=dev, dense_cache_bytes=cache)
    _peak_reset(dev)
    b0 = batches[0]
    gc.features(b0)
    _sync(dev)
    t_grad = t_proj = 0.0
    n = 0
    for b in batches[1:] if len(batches) > 1 else batches:
        _sync(dev)
        t0 = time.perf_counter()
        grads = gc.per_example_grads(b)
        _sync(dev)
        t1 = time.perf_counter()
        gc.projector.project_segments(grads)
        _sync(dev)
        t_proj += time.perf_counter() - t1
        t_grad += t1 - t0
        n += len(next(iter(b.values())))
    per_ex = (t_grad + t_proj * k / k_run) / n
    ours = {"method": "leanml dense", "examples": n, "ex_per_s": 1 / per_ex, "peak_mib": _peak(dev),
            "extrapolated": k_run != k, "k_measured": k_run}
    # the same batched per-example gradients, projected by traker's projector (its CPU BasicProjector)
    tp, what = make_trak_projector(D, k_run, dev)
    t_tp = 0.0
    for b in batches[1:] if len(batches) > 1 else batches:
        g = torch.cat(gc.per_example_grads(b), dim=1)
        _sync(dev)
        t0 = time.perf_counter()
        tp.project(g, model_id=0)
        _sync(dev)
        t_tp += time.perf_counter() - t0
    per_tp = (t_grad + t_tp * k / k_run) / n
    return [ours, {"method": "batched grads + traker projector", "examples": n, "ex_per_s": 1 / per_tp,
                   "peak_mib": None, "extrapolated": k_run != k, "k_measured": k_run, "projector": what}]


def data(model_name: str, tok: Any, n: int, bs: int) -> list[dict]:
    from leanml.data import load
    from leanml.models.text import encode_completions, encode_texts

    if model_name == "minilm":
        s = load("sst2", "train")
        recs = s.records[:n]
        return [encode_texts(tok, [r["text"] for r in recs[a : a + bs]], [r["label"] for r in recs[a : a + bs]], 64)
                for a in range(0, n, bs)]
    if tok is None:  # random-init model without the packaged tokenizer: random 128-token sequences
        g = torch.Generator().manual_seed(0)
        out = []
        for a in range(0, n, bs):
            ids = torch.randint(3, 49152, (min(bs, n - a), 128), generator=g)
            lab = ids.clone()
            lab[:, :64] = -100
            out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": lab})
        return out
    s = load("t0", "train")
    recs = s.records[:n]
    return [encode_completions(tok, [r["prompt"] for r in recs[a : a + bs]],
                               [r["completion"] for r in recs[a : a + bs]], 128) for a in range(0, n, bs)]


def pad_to(batches: list[dict], T: int) -> list[dict]:
    """Make every causal-LM batch exactly T tokens (LESS's 128-token setting), padding with masked tokens."""
    out = []
    for b in batches:
        if "labels" not in b or b["input_ids"].shape[1] == T:
            out.append(b)
            continue
        extra = T - b["input_ids"].shape[1]
        out.append({"input_ids": torch.nn.functional.pad(b["input_ids"], (0, extra), value=0),
                    "attention_mask": torch.nn.functional.pad(b["attention_mask"], (0, extra), value=0),
                    "labels": torch.nn.functional.pad(b["labels"], (0, extra), value=-100)})
    return out


def run_config(model_name: str, rank: int, k: int, n: int, bs: int, less_n: int, dev: str,
               random_init: bool) -> list[dict]:
    from leanml.models.text import load_minilm_lora, load_smollm2_lora

    torch.manual_seed(0)
    if model_name == "minilm":
        model, tok = load_minilm_lora(rank=rank)
        loss: Any = ClassificationLoss()
    else:
        model, tok = load_smollm2_lora(rank=rank, random_init=random_init)
        loss = CausalLMLoss()
    # LoRA B starts at zero (so A's gradient is zero); give B small values as after some training.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    model.to(dev)
    batches = pad_to(data(model_name, tok, n, bs), 128) if model_name == "smollm2" else data(model_name, tok, n, bs)
    names = [nm for nm, p in model.named_parameters() if "lora_" in nm]
    D = sum(p.numel() for nm, p in model.named_parameters() if "lora_" in nm)
    rows = []
    base = {"model": model_name, "rank": rank, "k": k, "lora_params": D, "batch_size": bs}
    rows.append({**base, **less_loop(model, loss, batches, names, k, dev, less_n)})
    rows += [{**base, **r} for r in dense_run(model, loss, batches, k, dev)]
    gf = GradientComputer(model, loss, params="lora", projector="factorized", dim=k, device=dev)
    rows += [{**base, **r} for r in leanml_and_floor(gf, batches, dev)]
    del model
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="MiniLM only, small k and few examples, then the peer comparison (about 1 min of compute).")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--random-init", action="store_true", help="SmolLM2-shaped Llama with random weights.")
    ap.add_argument("--models", default="minilm,smollm2")
    ap.add_argument("--n", type=int, default=None, help="examples per configuration")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--less-n", type=int, default=None, help="examples for the batch-1 LESS-style loop")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where to write the JSON result")
    ap.add_argument("--only", choices=("all", "configs", "peers"), default="all",
                    help="full mode: run only the LoRA configurations or only the peer comparison (a part)")
    ap.add_argument("--ranks", default="128,8", help="LoRA ranks of the configurations (full mode)")
    ap.add_argument("--gen-budget", type=float, default=None,
                    help="random numbers a dense projection may generate per call before k is scaled down")
    a = ap.parse_args()
    dev = a.device
    random_init = a.random_init or dev.startswith("cuda")
    if a.quick:
        configs = [("minilm", 8, 512)]
        n, bs, less_n = a.n or 32, a.batch_size or 16, 4
    else:
        configs = [(m, int(r), 8192) for m in a.models.split(",") for r in a.ranks.split(",")]
        if a.only == "peers":
            configs = []
        n = a.n or (512 if dev.startswith("cuda") else 64)
        bs = a.batch_size or (256 if dev.startswith("cuda") else 32)
        less_n = 64 if dev.startswith("cuda") else 3
    if a.less_n:
        less_n = a.less_n
    if a.gen_budget:
        GEN_BUDGET[dev.split(":")[0]] = a.gen_budget
    rows = []
    for model_name, rank, k in configs:
        t0 = time.time()
        new = run_config(model_name, rank, k, n, bs, less_n, dev, random_init)
        rows += new
        print(f"# {model_name} rank {rank}: {time.time() - t0:.0f} s", file=sys.stderr)
        if not a.quick:
            save_part(part_name(model_name, rank, k), new, dev, random_init)
    if a.quick or a.only != "configs":
        t0 = time.time()
        peer_n = a.n or (48 if a.quick else 256)  # enough timed batches for the interleaved comparison
        peer_rows = peers_config(peer_n, bs, dev, ekfac_batches=1 if a.quick else 4)
        rows += peer_rows
        print(f"# peers (MiniLM q/k/v/o LoGra): {time.time() - t0:.0f} s", file=sys.stderr)
        if not a.quick:
            save_part("peers", peer_rows, dev, random_init)
    parts: dict[str, Any] = {}
    if not a.quick:  # the full run's JSON is assembled from every part measured so far
        parts, rows, configs = from_parts(dev, random_init)
    print_table(rows)
    result = {
        "benchmark": "grads_throughput", "quick": a.quick,
        "device": dev if dev == "cpu" else torch.cuda.get_device_name(),
        **summary(rows, configs, parts, a.quick),
        "rows": rows, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                   "torch": torch.__version__, "threads": torch.get_num_threads()},
        "random_init": random_init, "n": n, "less_n": less_n, "gen_budget": GEN_BUDGET[dev.split(":")[0]],
        "command": " ".join(sys.argv),
    }
    a.results.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(a.results, json.dumps(result, indent=1, default=float) + "\n")
    print(json.dumps({k: result[k] for k in ("benchmark", "quick", "device", "speedup_vs_best_peer", "best_peer",
                                             "overhead_vs_floor", "ekfac_speedup_vs_kronfluence",
                                             "headline_config", "per_config", "missing")}, default=float))


if __name__ == "__main__":
    main()
