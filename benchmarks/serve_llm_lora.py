"""A task-specialized LoRA variant of SmolLM2 for serving: what it buys on its task, what it costs elsewhere,
and what it costs to serve.

    OMP_NUM_THREADS=1 flock -w 900 /tmp/leanml-bench.lock python benchmarks/serve_llm_lora.py --quick
    OMP_NUM_THREADS=1 flock -w 900 /tmp/leanml-bench.lock python benchmarks/serve_llm_lora.py

* **Training** (`leanml.bench.task_lora`): LoRA rank 8 on q/k/v/o of SmolLM2-135M-Instruct, trained by
  the instruct suite's learner (`leanml.bench.instruct.CausalLMLearner`: completion cross-entropy, Adam,
  lr 2e-4, batch 4, one epoch) on ``--train`` English TyDiQA examples (passage, question -> the first gold
  answer; seeded; the data root has only the dev split, so training and evaluation examples are disjoint
  draws from it). The adapters are cached; a cached run says so and reports no training cost.
* **Variants**: ``fp32`` (the base), ``lora`` (adapters unmerged, as peft serves them), ``lora_merged``
  (folded into the weights) and ``lora_int8_wo`` (the merged model through the weight-only int8 recipe), the
  last two built from the saved adapter file exactly as the smollm2 serving family builds ``lora`` and
  ``lora_int8_wo`` (`leanml.serve.variants.llm.lora_merged_model`).
* **Quality**: TyDiQA token F1 of the greedy answer's first line on ``--eval`` other English examples
  (the instruct suite's scoring), and SST-2 accuracy by choice log-likelihood on ``--sst2`` GLUE-dev
  sentences (a task the adapters never saw: the general ability the specialization may cost), each as a
  paired change against fp32 with a 95% CI.
* **Speed**: one decode step at 1 and 8 rows over a 256-token context and a 256-token prefill
  (`benchmarks/llm_profiles_measure.py`'s measurement, median of 5 steps), interleaved over 3 rounds.

Training runs on ``--train-threads`` torch threads (default 2); everything else on one. The last line is
the headline JSON, also written to benchmarks/results/serve_llm_lora.json (serve_llm_lora_quick.json with
``--quick``: 8 training examples, 6 evaluation items, 16 sentences, a 128-token window).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))  # llm_profiles_measure: the one cost measurement

RESULTS = Path(__file__).parent / "results"


def timings(models: dict[str, Any], text_ids: list[int], rounds: int) -> dict[str, dict[str, float]]:
    """Median over ``rounds`` interleaved rounds of each model's 256-token prefill and decode steps at 1/8 rows."""
    from llm_profiles_measure import measure_costs

    got: dict[str, list[tuple[float, float, float]]] = {n: [] for n in models}
    for _ in range(rounds):
        for n, m in models.items():
            pre, dec = measure_costs(m, text_ids, ((1, 256),), (1, 8), (256,), reps=1, steps=5)
            got[n].append((pre[1][256], dec[1][256], dec[8][256]))
    return {n: {"prefill_256_ms": round(statistics.median(r[0] for r in v), 1),
                "step_1_row_ms": round(statistics.median(r[1] for r in v), 2),
                "step_8_rows_ms": round(statistics.median(r[2] for r in v), 2)} for n, v in got.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, same code path (under a minute once cached)")
    ap.add_argument("--train", type=int, default=None, help="TyDiQA training examples (default 96, quick 8)")
    ap.add_argument("--eval", type=int, default=None, help="TyDiQA evaluation items (default 60, quick 6)")
    ap.add_argument("--sst2", type=int, default=None, help="SST-2 sentences (default 200, quick 16)")
    ap.add_argument("--train-threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    q = a.quick
    n_train, n_eval, n_sst = a.train or (8 if q else 96), a.eval or (6 if q else 60), a.sst2 or (16 if q else 200)
    if min(n_train, n_eval, n_sst, a.train_threads) < 1:
        ap.error("--train, --eval, --sst2 and --train-threads must be >= 1")

    import torch

    from leanml.bench.task_lora import LoraRecipe, cached_task_lora, learner, task_data
    from leanml.io import atomic_write_text
    from leanml.serve.variants.llm import LORA_VARIANTS, load_smollm2, lora_merged_model, variant_model
    from leanml.serve.variants.llm_quality import paired_delta, sst2_accuracy

    recipe = LoraRecipe(n_train=n_train, max_len=128 if q else 384, seed=a.seed)
    records, items = task_data(recipe, n_eval)
    torch.set_num_threads(a.train_threads)
    t0 = time.time()
    peft_model, tok, report = cached_task_lora(recipe, records)
    train_wall = time.time() - t0
    torch.set_num_threads(1)
    print(f"adapter file: {report['adapter']} (the smollm2 family's lora_adapter parameter)", flush=True)
    fp32, _ = load_smollm2()  # a fresh copy of the base (peft wrapped the learner's in place)
    lm = lora_merged_model(fp32, report["adapter"])  # what the serving family builds from the file
    models = {"fp32": fp32, "lora": peft_model, "lora_merged": lm,
              "lora_int8_wo": variant_model(lm, LORA_VARIANTS["lora_int8_wo"])}
    scorer = learner(recipe, gen_tokens=8 if q else 16)
    scorer.tok = tok
    f1, sst = {}, {}
    for n, m in models.items():
        if n == "lora":  # unmerged: the same function as lora_merged (checked below), only slower
            continue
        f1[n] = scorer.item_scores(m, items)
        sst[n] = sst2_accuracy(m, tok, n=n_sst)
        print(f"{n}: TyDiQA F1 {sum(f1[n]) / len(f1[n]):.3f}, SST-2 {sst[n]['sst2_accuracy']:.3f}", flush=True)
    with torch.inference_mode():
        x = tok(items[0]["prompt"], return_tensors="pt")["input_ids"][:, -64:]
        gap = float((peft_model(input_ids=x).logits - lm(input_ids=x).logits).abs().max())
    text_ids = tok(" ".join(r["prompt"] for r in records + items))["input_ids"]
    speed = timings(models, text_ids, 1 if q else 3)
    rows = {}
    for n in models:
        r = {**speed[n]}
        if n in f1:
            r.update(tydiqa_f1=round(sum(f1[n]) / len(f1[n]), 4), sst2=sst[n]["sst2_accuracy"])
            if n != "fp32":
                r["tydiqa_f1_delta"] = paired_delta(f1[n], f1["fp32"])
                r["sst2_delta"] = paired_delta(sst[n]["sst2_correct"], sst["fp32"]["sst2_correct"])
        r["step_1_row_speedup"] = round(speed["fp32"]["step_1_row_ms"] / speed[n]["step_1_row_ms"], 3)
        rows[n] = r
    print("| variant | TyDiQA F1 (change, 95% CI) | SST-2 (change) | prefill 256 ms | step ms, 1 / 8 rows |")
    print("| --- | --- | --- | --- | --- |")
    for n, r in rows.items():
        d = r.get("tydiqa_f1_delta")
        s = r.get("sst2_delta")
        f1s = "same function as lora_merged" if n == "lora" else (
            f"{r['tydiqa_f1']:.3f}" + (f" ({d['delta_points']:+.1f}, {d['delta_ci_points']})" if d else ""))
        ss = "" if n == "lora" else f"{r['sst2']:.3f}" + (f" ({s['delta_points']:+.1f})" if s else "")
        print(f"| {n} | {f1s} | {ss} | {r['prefill_256_ms']} | {r['step_1_row_ms']} / {r['step_8_rows_ms']} |")
    out = {"quick": q, "recipe": recipe.__dict__, "training": {**report, "wall_s": round(train_wall, 1),
                                                                "threads": a.train_threads},
           "n_eval": n_eval, "n_sst2": n_sst, "merge_max_logit_gap": gap, "variants": rows,
           "lora_f1_delta_points": rows["lora_merged"]["tydiqa_f1_delta"]["delta_points"],
           "lora_f1_delta_ci_points": rows["lora_merged"]["tydiqa_f1_delta"]["delta_ci_points"],
           "lora_sst2_delta_points": rows["lora_merged"]["sst2_delta"]["delta_points"],
           "lora_int8_wo_step_speedup": rows["lora_int8_wo"]["step_1_row_speedup"],
           "unmerged_step_slowdown": round(rows["lora"]["step_1_row_ms"] / rows["fp32"]["step_1_row_ms"], 3),
           "load_average": round(os.getloadavg()[0], 2)}
    path = RESULTS / ("serve_llm_lora_quick.json" if q else "serve_llm_lora.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(out, indent=1, default=float))
    head = {k: out[k] for k in ("lora_f1_delta_points", "lora_f1_delta_ci_points", "lora_sst2_delta_points",
                                "lora_int8_wo_step_speedup", "unmerged_step_slowdown", "merge_max_logit_gap")}
    print(json.dumps(head))
    return out


if __name__ == "__main__":
    main()
