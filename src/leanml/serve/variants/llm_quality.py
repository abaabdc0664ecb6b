"""Quality of an LLM variant on real text and a real task, each figure with its sample size and a 95% CI.

* **Perplexity and KL to float32** on held-out text: English TyDiQA-GoldP dev passages (Wikipedia
  paragraphs, ``instruct/tydiqa/english_tydiqa_dev.json`` under the data root), each cut to
  ``max_tokens``. One teacher-forced forward per passage; perplexity = exp(mean token NLL). The CI is a
  t-interval over passages of the mean NLL (passages, not tokens, are the independent units), mapped
  through exp. KL(fp32 || variant) is the mean over tokens of the KL between the two next-token
  distributions, with a t-interval over passages.
* **SST-2 accuracy by choice log-likelihood**: the GLUE dev set (``text/sst2/test.tsv``), a few-shot
  prompt, and the label whose word (" positive" / " negative") the model finds more likely after it.
  Chance is 0.5 (the split is balanced: 444 / 428); SmolLM2-135M is above it. The CI is Wilson's; a
  variant's change against float32 gets a paired CI (`paired_delta`: both answer the same sentences).

These are teacher-forced full-sequence forwards (prefill numerics). For dynamic int8, whose activation
scale covers the whole input tensor, decoding token by token computes slightly different numbers; the
generated-text fidelity (`leanml.serve.variants.llm.prefix_agreement`) covers that path.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

SST2_SHOTS = [("a gorgeous , witty , seductive movie .", 1), ("the plot is nothing but boilerplate clichés .", 0),
              ("an utterly charming and hilarious film .", 1), ("it 's just plain boring .", 0)]  # from SST-2 train
SST2_WORDS = (" negative", " positive")


def _t_ci(x: np.ndarray) -> tuple[float, float, float]:
    """Mean and a 95% t-interval."""
    from scipy import stats

    m = float(np.mean(x))
    if len(x) < 2:
        return m, m, m
    h = float(stats.t.ppf(0.975, len(x) - 1) * np.std(x, ddof=1) / math.sqrt(len(x)))
    return m, m - h, m + h


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


@lru_cache(maxsize=4)
def heldout_passages(n: int, min_words: int = 80, seed: int = 0) -> tuple[str, ...]:
    """``n`` English TyDiQA dev passages of at least ``min_words`` words (seeded draw)."""
    from leanml.data.root import data_root

    path = data_root() / "instruct" / "tydiqa" / "english_tydiqa_dev.json"
    if not path.exists():
        raise FileNotFoundError(f"held-out text {path} is missing: set LEANML_DATA to the data root")
    ctx = sorted({p["context"] for a in json.loads(path.read_text())["data"] for p in a["paragraphs"]
                  if len(p["context"].split()) >= min_words})
    order = np.random.default_rng(seed).permutation(len(ctx))
    return tuple(ctx[i] for i in order[:n])


@lru_cache(maxsize=4)
def sst2_examples(n: int, seed: int = 0) -> tuple[tuple[str, int], ...]:
    """``n`` SST-2 GLUE-dev sentences with labels (seeded draw)."""
    from leanml.data.root import data_root

    path = data_root() / "text" / "sst2" / "test.tsv"
    if not path.exists():
        raise FileNotFoundError(f"SST-2 {path} is missing: set LEANML_DATA to the data root")
    with open(path, newline="") as f:
        rows = [(r["sentence"].strip(), int(r["label"])) for r in csv.DictReader(f, delimiter="\t")]
    order = np.random.default_rng(seed).permutation(len(rows))
    return tuple(rows[i] for i in order[: min(n, len(rows))])


def _logprobs(model, ids: list[int]):
    import torch

    with torch.inference_mode():
        return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)


def perplexity_kl(model, tok, reference=None, *, n: int = 24, max_tokens: int = 128,
                  ref_cache: dict | None = None, texts: Sequence[str] | None = None) -> dict[str, Any]:
    """Perplexity of ``model`` on ``n`` held-out passages (or on ``texts``) and, given ``reference``,
    KL(reference || model).

    ``ref_cache`` keeps the reference's log-probabilities between calls (one reference pass per passage).
    """
    import torch

    nll, kl, toks = [], [], 0
    for j, text in enumerate(heldout_passages(n) if texts is None else texts):
        ids = tok(text)["input_ids"][:max_tokens]
        lp = _logprobs(model, ids)
        tgt = torch.tensor(ids[1:])
        nll.append(float(-lp[:-1].gather(1, tgt[:, None]).mean()))
        toks += len(ids) - 1
        if reference is not None:
            if ref_cache is not None and j in ref_cache:
                rp = ref_cache[j]
            else:
                rp = _logprobs(reference, ids)
                if ref_cache is not None:
                    ref_cache[j] = rp
            kl.append(float((rp.exp() * (rp - lp)).sum(-1)[:-1].mean()))
    m, lo, hi = _t_ci(np.array(nll))
    out: dict[str, Any] = {"perplexity": round(math.exp(m), 4), "perplexity_ci": [round(math.exp(lo), 4),
                           round(math.exp(hi), 4)], "ppl_passages": len(nll), "ppl_tokens": toks,
                           "ppl_text": (f"tydiqa/english dev, first {max_tokens} tokens per passage" if texts is None
                                        else f"{len(nll)} given texts, first {max_tokens} tokens each")}
    if kl:
        k, klo, khi = _t_ci(np.array(kl))
        out.update(kl_to_fp32=round(k, 6), kl_to_fp32_ci=[round(max(0.0, klo), 6), round(khi, 6)])
    return out


def sst2_accuracy(model, tok, *, n: int = 200) -> dict[str, Any]:
    """SST-2 accuracy by choice log-likelihood (few-shot prompt), with Wilson's 95% CI."""
    import torch

    head = "".join(f"Review: {s}\nSentiment:{SST2_WORDS[y]}\n\n" for s, y in SST2_SHOTS)
    words = [tok(w, add_special_tokens=False)["input_ids"][0] for w in SST2_WORDS]
    ex = sst2_examples(n)
    correct = []
    for s, y in ex:
        ids = tok(f"{head}Review: {s}\nSentiment:")["input_ids"]
        with torch.inference_mode():
            last = model(input_ids=torch.tensor([ids]), logits_to_keep=1).logits[0, -1].float()
        correct.append(int(int(torch.argmax(last[words])) == y))
    right = sum(correct)
    acc = right / len(ex)
    lo, hi = wilson(right, len(ex))
    return {"sst2_accuracy": round(acc, 4), "sst2_accuracy_ci": [round(lo, 4), round(hi, 4)], "sst2_n": len(ex),
            "sst2_chance": 0.5, "sst2_correct": "".join(map(str, correct))}


def paired_delta(variant: Sequence[Any], reference: Sequence[Any], z: float = 1.96) -> dict[str, Any]:
    """Score change of ``variant`` against ``reference`` on the same examples (their ``sst2_correct`` strings of
    0/1, or per-example scores in [0, 1] such as token F1), in points, with a paired 95% CI (normal, over
    per-example differences) and how many examples moved each way.

    Paired, because both models answer the same sentences: the independent Wilson CIs overlap even where the
    difference is certain."""
    if len(variant) != len(reference) or not reference:
        raise ValueError(f"paired_delta: {len(variant)} against {len(reference)} examples; they must match")
    d = np.array([float(a) - float(b) for a, b in zip(variant, reference, strict=True)], dtype=float)
    m = float(d.mean())
    se = float(d.std(ddof=1)) / math.sqrt(len(d)) if len(d) > 1 else 0.0
    return {"delta_points": round(100 * m, 2), "delta_ci_points": [round(100 * (m - z * se), 2),
            round(100 * (m + z * se), 2)], "gained": int((d > 0).sum()), "lost": int((d < 0).sum()), "n": len(d)}


def quality_evaluator(p: dict[str, Any], reference, details: dict[str, dict[str, Any]], fidelity=None):
    """The smollm2 family's ``eval_metric = "sst2"``: accuracy = SST-2 accuracy (``eval_sst2_n`` sentences);
    ``details[variant]`` (the profile's ``extra.eval``) also holds perplexity and KL to float32 on
    ``eval_ppl_n`` held-out passages, each with n and a 95% CI, and, given ``fidelity`` (the fp32-agreement
    evaluator), the greedy-text fidelity on ``eval_n`` prompts as a secondary figure."""
    ref_cache: dict = {}

    def evaluate(variant, limit: int | None = None) -> float:
        model = variant.model
        n_sst = min(limit or int(p["eval_sst2_n"]), int(p["eval_sst2_n"]))
        d: dict[str, Any] = {"metric": "sst2"}
        d.update(sst2_accuracy(model.model, model.tok, n=n_sst))
        d.update(perplexity_kl(model.model, model.tok, None if model is reference else reference.model,
                               n=int(p["eval_ppl_n"]), ref_cache=ref_cache))
        if model is reference:
            d.update(kl_to_fp32=0.0, kl_to_fp32_ci=[0.0, 0.0])
        if fidelity is not None:
            d["fp32_token_agreement"] = round(float(fidelity(variant, limit)), 4)
            d["fidelity_prompts"] = min(limit or int(p["eval_n"]), int(p["eval_n"]))
        details[variant.name] = d
        return d["sst2_accuracy"]

    return evaluate
