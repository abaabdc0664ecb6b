"""LLM phase cases for hw_accuracy.py: SmolLM2-135M on this CPU, and the CUDA-events run for a GPU.

CPU (fp32, the benchmark's torch threads): LoRA r128 (q,k,v,o) training step, prefill, and a decode step at
batch 1/16/64 (full; 1/4/16 with --quick) over a KV cache of the prompt length, on SmolLM2-135M at its real
size (the packaged GGUF's weights; --quick uses random weights of the same shape: dense fp32 kernels take the
same time whatever the values). Each callable is traced (the kernels that really run, including HF's cache
concatenation and masks) and predicted by the calibrated cost model; the shape-only `leanml.hw.llm` prediction
(fused kernels, as a serving engine runs them) is reported beside it.

GPU (``--cuda``): random-initialised bf16 models of the SmolLM2 and Llama-7B shapes, timed with CUDA events,
against `leanml.hw.llm` on the catalog entry of the GPU found.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F

from leanml.hw.llm import decode_step, predict_llm_train, predict_prefill

LORA_RANK = 128


def sizes(quick: bool) -> dict:
    return {"prompt": 64 if quick else 512, "train_seq": 64 if quick else 512,
            "decode_batches": (1, 4, 16) if quick else (1, 16, 64)}


class _SmolLM2:
    """One SmolLM2-135M + LoRA model shared by the cases (loaded once, on first use); inference cases use a
    plain copy with the (zero-initialised) adapters merged, which is what serving runs (PEFT's
    ``disable_adapter`` context alone costs ~80 ms per call on this VM: it walks every module)."""

    def __init__(self, random_init: bool) -> None:
        self.random_init, self.model, self.plain = random_init, None, None

    def get(self):
        if self.model is None:
            from leanml.models.text import load_smollm2_lora

            self.model, _ = load_smollm2_lora(rank=LORA_RANK, random_init=self.random_init, tokenizer=False)
        return self.model

    def base(self):
        if self.plain is None:
            import copy

            self.plain = copy.deepcopy(self.get()).merge_and_unload().eval()
        return self.plain


def _prefill(src: _SmolLM2, prompt: int) -> Callable[[str], Callable[[], object]]:
    def build(dev: str):
        m = src.base().to(dev)
        ids = torch.randint(0, 49152, (1, prompt), device=dev)

        def run():
            with torch.no_grad():
                return m(input_ids=ids, use_cache=True, logits_to_keep=1).logits
        return run
    return build


def _decode(src: _SmolLM2, batch: int, context: int) -> Callable[[str], Callable[[], object]]:
    def build(dev: str):
        from transformers import DynamicCache

        m = src.base().to(dev)
        ids = torch.randint(0, 49152, (batch, context - 1), device=dev)
        cache = DynamicCache()
        with torch.no_grad():
            m(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        tok = torch.randint(0, 49152, (batch, 1), device=dev)
        pos = torch.full((batch, 1), context - 1, device=dev)

        def run():  # one new token per sequence over context - 1 cached keys, then the cache is rolled back
            with torch.no_grad():
                out = m(input_ids=tok, past_key_values=cache, position_ids=pos, use_cache=True, logits_to_keep=1)
            cache.crop(-1)
            return out.logits
        return run
    return build


def _lora_train(src: _SmolLM2, seq: int) -> Callable[[str], Callable[[], object]]:
    def build(dev: str):
        m = src.get().to(dev)
        ids = torch.randint(0, 49152, (1, seq), device=dev)
        params = [p for p in m.parameters() if p.requires_grad]

        def step():
            for p in params:
                p.grad = None
            logits = m(input_ids=ids).logits
            F.cross_entropy(logits.flatten(0, 1), ids.flatten()).backward()
        m.train()
        return step
    return build


def cpu_cases(quick: bool, case_cls) -> list:
    """`case_cls(name, "llm", build, reps, analytic)` objects for hw_accuracy's Case list."""
    s = sizes(quick)
    src = _SmolLM2(random_init=quick)
    p, ts = s["prompt"], s["train_seq"]
    out = [case_cls(f"SmolLM2 LoRA-r{LORA_RANK} train step s{ts}", "llm", _lora_train(src, ts), 2,
                    lambda dev: predict_llm_train("smollm2-135m", dev, "fp32", 1, ts, lora_rank=LORA_RANK).time_s),
           case_cls(f"SmolLM2 prefill {p}", "llm", _prefill(src, p), 2,
                    lambda dev: predict_prefill("smollm2-135m", dev, "fp32", 1, p).time_s)]
    for b in s["decode_batches"]:
        out.append(case_cls(f"SmolLM2 decode b{b} ctx{p}", "llm", _decode(src, b, p), 3,
                            lambda dev, b=b: decode_step("smollm2-135m", dev, "fp32", b, p).time_s))
    return out


# ---------------------------------------------------------------- GPU: CUDA events, bf16, random weights
def cuda_time(fn: Callable[[], object], reps: int = 10) -> float:
    """Median seconds of ``fn`` between CUDA events (after 3 warm-up calls)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) / 1e3)
    return statistics.median(ts)


def _decode_step_fn(m, vocab: int, batch: int, context: int) -> Callable[[], object]:
    from transformers import DynamicCache

    cache = DynamicCache()
    with torch.no_grad():
        m(input_ids=torch.randint(0, vocab, (batch, context - 1), device="cuda"), past_key_values=cache,
          use_cache=True, logits_to_keep=1)
    tok = torch.randint(0, vocab, (batch, 1), device="cuda")
    pos = torch.full((batch, 1), context - 1, device="cuda")

    def step():
        with torch.no_grad():
            m(input_ids=tok, past_key_values=cache, position_ids=pos, use_cache=True, logits_to_keep=1)
        cache.crop(-1)
    return step


def _train_step_fn(m, vocab: int, seq: int) -> Callable[[], object]:
    from peft import LoraConfig, get_peft_model

    lm = get_peft_model(m, LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK, lora_dropout=0.0,
                                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    ids = torch.randint(0, vocab, (1, seq), device="cuda")
    params = [p for p in lm.parameters() if p.requires_grad]

    def step():
        for p in params:
            p.grad = None
        F.cross_entropy(lm(input_ids=ids).logits.flatten(0, 1).float(), ids.flatten()).backward()
    return step


def _gpu_model_rows(name: str, device) -> list[dict]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from leanml.hw.llm_ops import PRESETS

    sh = PRESETS[name]
    cfg = LlamaConfig(hidden_size=sh.hidden, num_hidden_layers=sh.layers, num_attention_heads=sh.heads,
                      num_key_value_heads=sh.kv_heads, intermediate_size=sh.intermediate, vocab_size=sh.vocab,
                      max_position_embeddings=sh.max_context, tie_word_embeddings=sh.tie_embeddings)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    ids = torch.randint(0, sh.vocab, (1, 512), device="cuda")

    def prefill():
        with torch.no_grad():
            model(input_ids=ids, use_cache=True, logits_to_keep=1)
    rows = [{"case": f"{name} prefill 512", "measured_s": cuda_time(prefill),
             "predicted_s": predict_prefill(name, device, "bf16", 1, 512).time_s}]
    for b in (1, 16, 64):
        rows.append({"case": f"{name} decode b{b} ctx513",
                     "measured_s": cuda_time(_decode_step_fn(model, sh.vocab, b, 513)),
                     "predicted_s": decode_step(name, device, "bf16", b, 513).time_s})
    model.train()
    rows.append({"case": f"{name} LoRA-r{LORA_RANK} train step s512",
                 "measured_s": cuda_time(_train_step_fn(model, sh.vocab, 512), reps=5),
                 "predicted_s": predict_llm_train(name, device, "bf16", 1, 512, lora_rank=LORA_RANK).time_s})
    return rows


def gpu_llm_rows(device, datasheet, quick: bool) -> list[dict]:
    """Measured (CUDA events) vs predicted LLM phases in bf16 on this GPU, random-initialised models.

    ``device``: this GPU calibrated in-process (measured curves); ``datasheet``: its catalog entry or None."""
    rows = []
    for name in ("smollm2-135m",) + (() if quick else ("llama-7b",)):
        got = _gpu_model_rows(name, device)
        if datasheet is not None:
            for r, d in zip(got, _gpu_predictions(name, datasheet), strict=True):
                r["predicted_datasheet_s"] = d
        rows += got
        torch.cuda.empty_cache()
    for r in rows:
        r["pct_error"] = 100.0 * (r["predicted_s"] - r["measured_s"]) / r["measured_s"]
    return rows


def _gpu_predictions(name: str, device) -> list[float]:
    """The same cases' predictions on another device entry (order of `_gpu_model_rows`)."""
    return ([predict_prefill(name, device, "bf16", 1, 512).time_s]
            + [decode_step(name, device, "bf16", b, 513).time_s for b in (1, 16, 64)]
            + [predict_llm_train(name, device, "bf16", 1, 512, lora_rank=LORA_RANK).time_s])
