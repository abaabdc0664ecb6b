"""Measure LLM profiles (prefill and decode step times, quality) of the SmolLM2-135M variants on this CPU.

    flock /tmp/leanml-bench.lock env OMP_NUM_THREADS=1 python benchmarks/llm_profiles_measure.py --quick

Variants: those of `leanml.serve.variants.llm` (fp32, bf16, dynamic int8, weight-only int8_wo / int4_wo /
int4_wo_g64 in a bf16 model, int8_wo_f32 / int4_wo_f32 in a float32 one). One thread per model call.

* Prefill: one forward of ``b`` sequences of ``L`` prompt tokens (real text), median of ``--reps``.
* Decode: one step of ``b`` running sequences at context ``c``: the KV cache of one real ``c``-token
  prefill, repeated ``b`` times (attention cost does not depend on the cached values), then the median
  of ``--steps`` single-token forward passes.
* Quality on held-out news text (T0's multi_news documents from the data root, never used for tuning):
  next-token accuracy (top-1 = the held-out token) and perplexity on the last 64 tokens of each
  768-token document, with the whole context and with the context cut to each KV cap (the prompt cut
  from the left, as `kv_cache_cap` does). n = scored tokens; the 95% CI is clustered by document
  (mean of per-document values +- 1.96 SE over documents), since tokens of one document are correlated.

Writes `benchmarks/results/llm_profiles/smollm2.llm_profile.json` (`leanml.serve.control.llm_profiles`
format) and prints a table; the last line is one JSON object of headline figures.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "llm_profiles"
DOC_TOKENS, SCORED = 768, 64


def held_out_docs(tok, n: int) -> list[list[int]]:
    root = os.environ.get("LEANML_DATA")
    if not root:
        raise SystemExit("set LEANML_DATA to the data root (see /work/shared/data/README.md)")
    docs = []
    with gzip.open(Path(root) / "instruct" / "t0" / "t0_train_50k.jsonl.gz", "rt") as f:
        for line in f:
            r = json.loads(line)
            if r["source"] != "multi_news_summarize":
                continue
            ids = tok(r["prompt"])["input_ids"]
            if len(ids) >= DOC_TOKENS:
                docs.append(list(ids[:DOC_TOKENS]))
            if len(docs) == n:
                break
    return docs


def timed(fn, reps: int, warm: bool = True) -> float:
    if warm:
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1000)
    return statistics.median(ts)


def measure_costs(model, text_ids: list[int], prefill_grid, dec_batches, contexts, reps: int, steps: int):
    import torch

    pre: dict[int, dict[int, float]] = {}
    dec: dict[int, dict[int, float]] = {}
    with torch.inference_mode():
        model(input_ids=torch.tensor([text_ids[:64]]), use_cache=True)  # warm-up
        for b, L in prefill_grid:
            x = torch.tensor([text_ids[:L]] * b)
            pre.setdefault(b, {})[L] = timed(lambda x=x: model(input_ids=x, use_cache=True), reps, warm=False)
        for c in contexts:
            base = model(input_ids=torch.tensor([text_ids[:c]]), use_cache=True).past_key_values
            for b in dec_batches:
                cache = copy.deepcopy(base)
                cache.batch_repeat_interleave(b)
                nxt = torch.full((b, 1), text_ids[c])
                ts = []
                for s in range(steps + 1):
                    t0 = time.perf_counter()
                    model(input_ids=nxt, past_key_values=cache, use_cache=True)
                    if s:  # the first step is warm-up
                        ts.append((time.perf_counter() - t0) * 1000)
                dec.setdefault(b, {})[c] = statistics.median(ts)
    return pre, dec


def measure_quality(model, docs: list[list[int]], caps: list[int]) -> dict[int, dict[str, object]]:
    import torch

    from leanml.serve.control.llm_profiles import QualityFigure

    out = {}
    for cap in [0, *caps]:
        acc_d, nll_d = [], []
        with torch.inference_mode():
            for d in docs:
                start = DOC_TOKENS - SCORED
                x = d if cap == 0 else d[max(0, start - cap):]
                logits = model(input_ids=torch.tensor([x])).logits[0, -SCORED - 1:-1].float()
                tgt = torch.tensor(d[start:])
                acc_d.append(float((logits.argmax(-1) == tgt).float().mean()))
                nll_d.append(float(torch.nn.functional.cross_entropy(logits, tgt)))
        n = len(docs) * SCORED
        a, sa = float(np.mean(acc_d)), float(np.std(acc_d, ddof=1) / math.sqrt(len(docs)))
        m, sm = float(np.mean(nll_d)), float(np.std(nll_d, ddof=1) / math.sqrt(len(docs)))
        out[cap] = {
            "next_token_accuracy": QualityFigure("next_token_accuracy", a, n, max(0.0, a - 1.96 * sa),
                                                 min(1.0, a + 1.96 * sa)),
            "perplexity": QualityFigure("perplexity", math.exp(m), n, math.exp(m - 1.96 * sm), math.exp(m + 1.96 * sm)),
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer documents and repetitions (same code path)")
    ap.add_argument("--variants", default="fp32,bf16,int8,int8_wo,int4_wo,int8_wo_f32,int4_wo_f32")
    ap.add_argument("--docs", type=int, default=None, help="held-out documents for quality (default 16, quick 6)")
    ap.add_argument("--out", type=Path, default=OUT / "smollm2.llm_profile.json")
    ap.add_argument("--keep-quality", type=Path, default=None,
                    help="re-measure costs only; take each variant's quality from this profile file (quality does "
                         "not depend on machine load, costs do); variants the file lacks are measured in full")
    a = ap.parse_args(argv)
    import torch

    from leanml.serve.control.llm_profiles import LLMProfile, save_llm_profiles
    from leanml.serve.control.profiles import machine_info
    from leanml.serve.variants.llm import PLAIN_VARIANTS, load_smollm2, variant_model

    torch.set_num_threads(1)
    base, tok = load_smollm2()
    cfg = base.config
    docs = held_out_docs(tok, a.docs or (6 if a.quick else 16))
    text = [t for d in docs for t in d]
    reps, steps = (1, 3) if a.quick else (2, 5)
    # (batch, prompt tokens); the short ones price the small prefill chunks a tight TPOT SLO needs
    prefill_grid = ((1, 16), (1, 32), (1, 64), (1, 128), (1, 512), (1, 1024), (4, 128), (4, 512))
    dec_batches, contexts = (1, 4, 16), (128, 1024)
    caps = [128, 256, 512]
    kv_elems = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads)
    build = {n: (lambda n=n: variant_model(base, n)) for n in PLAIN_VARIANTS}
    kept = None
    if a.keep_quality is not None:
        from leanml.serve.control.llm_profiles import load_llm_profiles

        if not a.keep_quality.exists():
            raise SystemExit(f"--keep-quality: {a.keep_quality} does not exist")
        kept = load_llm_profiles(a.keep_quality)
    profiles, rows = {}, []
    for name in a.variants.split(","):
        if name not in build:
            raise SystemExit(f"--variants: unknown variant {name!r}; choose from {sorted(build)}")
        t0 = time.time()
        m = build[name]().eval()
        pre, dec = measure_costs(m, text, prefill_grid, dec_batches, contexts, reps, steps)
        keep = kept is not None and name in kept  # a variant the file lacks gets its quality measured here
        q = kept[name].quality if keep else measure_quality(m, docs, caps)
        elem = m.get_input_embeddings().weight.element_size()  # activations, hence the KV cache, run in this dtype
        stored = [*m.parameters(), *m.buffers()]  # weight-only variants keep their packed weights as buffers
        profiles[name] = LLMProfile(
            name, pre, dec, kv_elems * elem, q, memory_bytes=sum(p.numel() * p.element_size() for p in stored),
            energy_j_per_token=None,
            extra={"energy_note": "CPU energy counters (RAPL) unavailable here", "threads": 1,
                   "load_average": round(os.getloadavg()[0], 2),
                   "quality_from": str(a.keep_quality) if keep else "measured in this run",
                   "quality_text": f"T0 multi_news_summarize, {len(docs)} docs, last {SCORED} of {DOC_TOKENS} tokens",
                   "measure_s": round(time.time() - t0, 1)})
        p = profiles[name]
        rows.append({"variant": name, "prefill_ms_per_tok_b1_L512": round(p.prefill_time_ms(512) / 512, 3),
                     "step_ms_b1_c1024": round(p.step_ms(1, 1024), 1),
                     "step_ms_b16_c1024": round(p.step_ms(16, 1024), 1),
                     "acc": round(q[0]["next_token_accuracy"].value, 4), "ppl": round(q[0]["perplexity"].value, 3),
                     "acc_cap256": round(q[256]["next_token_accuracy"].value, 4),
                     "acc_cap128": round(q[128]["next_token_accuracy"].value, 4),
                     "acc_cap512": round(q[512]["next_token_accuracy"].value, 4)})
        print(json.dumps(rows[-1]), flush=True)
        a.out.parent.mkdir(parents=True, exist_ok=True)  # saved after each variant: a long run keeps what it has
        save_llm_profiles(a.out, profiles, {"machine": machine_info(), "quick": a.quick,
                                            "load_average": os.getloadavg()[0]})
    print("| " + " | ".join(rows[0]) + " |")
    for r in rows:
        print("| " + " | ".join(str(v) for v in r.values()) + " |")
    head = {"profiles": str(a.out.relative_to(ROOT)) if a.out.is_relative_to(ROOT) else str(a.out), "rows": rows}
    print(json.dumps(head))
    return head


if __name__ == "__main__":
    main()
