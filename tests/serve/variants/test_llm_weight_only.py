"""Weight-only int8/int4 linears: each multiplies by exactly the weight it stores, the quantization error stays
within half a step, a grid the weights already lie on is reproduced, and SmolLM2 keeps its perplexity."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from leanml.serve.variants.llm_weight_only import (
    Float32Stream,
    Int4WeightLinear,
    Int8WeightLinear,
    quantize_weight_only,
)


def _linear(n_out: int = 64, n_in: int = 96, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(n_in, n_out)
    nn.init.normal_(lin.weight, std=0.05)
    return lin


def _int4_reference(w: torch.Tensor, group: int) -> torch.Tensor:
    """The int4 weight the module should store, computed here without the kernel: per group of inputs, an
    asymmetric grid of 16 steps over [min, max], scale and zero rounded to bf16 as the kernel reads them."""
    n, k = w.shape
    g = w.float().reshape(n, k // group, group)
    lo, hi = g.amin(-1), g.amax(-1)
    scale = ((hi - lo) / 15.0).clamp_min(1e-8).to(torch.bfloat16).float()
    zero = (lo + 8.0 * scale).to(torch.bfloat16).float()
    q = torch.clamp(torch.round((g - zero[..., None]) / scale[..., None]) + 8, 0, 15)
    return ((q - 8) * scale[..., None] + zero[..., None]).reshape(n, k)


@pytest.mark.parametrize("bits", [8, 4])
def test_kernel_multiplies_by_the_stored_weight(bits):
    """The packed kernel's product equals a float product with the weight the module should hold, for 1 and
    8 rows. The reference is computed without the kernel: from the stored int8 codes and scales, or (int4,
    whose packed layout is opaque) from the original weight by the quantization rule."""
    lin = _linear()
    q = Int8WeightLinear(lin) if bits == 8 else Int4WeightLinear(lin, 32)
    w = q.dequantized() if bits == 8 else _int4_reference(lin.weight.detach(), 32)
    for rows in (1, 8):
        x = torch.randn(2, rows, 96)
        ref = x.to(torch.bfloat16).float() @ w.t() + lin.bias.to(torch.bfloat16).float()
        got = q(x).float()
        assert got.shape == (2, rows, 64)
        assert torch.allclose(got, ref, atol=2e-2, rtol=2e-2), float((got - ref).abs().max())
    if bits == 4:  # the kernel-derived dequantization the other tests read is the same weight
        assert torch.allclose(q.dequantized(), w, atol=w.abs().max().item() / 128)


def test_int8_error_is_at_most_half_a_step_per_channel():
    lin = _linear()
    q = Int8WeightLinear(lin)
    step = q.scales.float()[:, None]
    err = (q.dequantized() - lin.weight.detach()).abs()
    assert bool((err <= step * 0.5 + 1e-3 * step.max()).all())
    assert bool((q.qweight.abs() <= 127).all())


def test_int4_error_is_at_most_half_a_step_per_group():
    lin = _linear()
    q = Int4WeightLinear(lin, 32)
    w = lin.weight.detach().reshape(64, 3, 32)
    step = ((w.amax(-1) - w.amin(-1)) / 15.0)[..., None]
    err = (q.dequantized().reshape(64, 3, 32) - w).abs()
    # half a step, plus the bf16 rounding of the scale and zero (8 significant bits of a value <= |w|max)
    assert bool((err <= 0.5 * step + w.abs().amax() / 128).all())


def test_int4_reproduces_weights_already_on_a_group_grid():
    """Weights that are ``q * d + m`` per 32-input group (GGUF Q4_1's grid, with bf16-exact d and m) come back
    exactly: the known answer for the packaged SmolLM2 blocks, which ship in that format."""
    torch.manual_seed(1)
    n, k, g = 32, 64, 32
    d = torch.tensor([2.0 ** -e for e in torch.randint(5, 9, (n * k // g,)).tolist()]).reshape(n, k // g, 1)
    m = -8 * d  # zero at code 8, so the kernel's (q - 8) * scale + zero is q * d + m with no rounding
    codes = torch.randint(0, 16, (n, k // g, g)).float()
    codes[..., 0], codes[..., 1] = 0, 15  # every group spans the full range, so min and max fix d and m
    lin = nn.Linear(k, n, bias=False)
    with torch.no_grad():
        lin.weight.copy_((codes * d + m).reshape(n, k))
    assert torch.equal(Int4WeightLinear(lin, g).dequantized(), lin.weight.detach())


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def test_quantize_replaces_every_linear_unties_the_head_and_keeps_the_outputs():
    pytest.importorskip("transformers")
    import copy

    m = _tiny_llama()
    ref = copy.deepcopy(m).to(torch.bfloat16)
    emb = m.model.embed_tokens.weight.detach().to(torch.bfloat16).clone()
    q = quantize_weight_only(m, 8)
    assert not any(type(x) is nn.Linear for x in q.modules())
    assert sum(isinstance(x, Int8WeightLinear) for x in q.modules()) == 2 * 7 + 1
    assert q.config.tie_word_embeddings is False and torch.equal(q.model.embed_tokens.weight, emb)
    ids = torch.randint(0, 128, (2, 12))
    with torch.inference_mode():
        a, b = ref(input_ids=ids).logits.float(), q(input_ids=ids).logits.float()
    kl = (a.log_softmax(-1).exp() * (a.log_softmax(-1) - b.log_softmax(-1))).sum(-1).mean()
    assert float(kl) < 1e-3


def test_head_bits_sets_the_head_apart():
    pytest.importorskip("transformers")
    q = quantize_weight_only(_tiny_llama(), 4, group=32, head_bits=16)
    assert type(q.lm_head) is nn.Linear and q.lm_head.weight.dtype == torch.bfloat16
    assert sum(isinstance(x, Int4WeightLinear) for x in q.modules()) == 2 * 7
    q = quantize_weight_only(_tiny_llama(), 4, group=32, head_bits=8)
    assert isinstance(q.lm_head, Int8WeightLinear)


def test_float32_stream_keeps_the_model_float32_and_only_the_linears_16_bit():
    """``float32_stream``: embeddings, norms and the residual stream stay float32 (so do the logits); each
    linear is its narrow form behind a bf16 cast, the head bf16; and it tracks float32 closer than the same
    quantized weights in a bf16 model (the stream's rounding is gone, the weights' is the same)."""
    pytest.importorskip("transformers")
    import copy

    m = _tiny_llama()
    ref = copy.deepcopy(m)
    bf = quantize_weight_only(copy.deepcopy(m), 4, group=32, head_bits=16)
    q = quantize_weight_only(m, 4, group=32, head_bits=16, float32_stream=True)
    assert not any(type(x) is nn.Linear and x.weight.dtype == torch.float32 for x in q.modules())
    wrapped = [x for x in q.modules() if isinstance(x, Float32Stream)]
    assert len(wrapped) == 2 * 7 + 1 and sum(isinstance(x.inner, Int4WeightLinear) for x in wrapped) == 2 * 7
    assert type(q.lm_head.inner) is nn.Linear and q.lm_head.inner.weight.dtype == torch.bfloat16
    assert q.model.embed_tokens.weight.dtype == torch.float32 and q.model.norm.weight.dtype == torch.float32
    assert q.config.tie_word_embeddings is False
    ids = torch.randint(0, 128, (2, 12))
    with torch.inference_mode():
        a, b, c = ref(input_ids=ids).logits, q(input_ids=ids).logits, bf(input_ids=ids).logits.float()
    assert b.dtype == torch.float32
    la = a.log_softmax(-1)
    kl = (la.exp() * (la - b.log_softmax(-1))).sum(-1).mean()
    kl_bf16 = (la.exp() * (la - c.log_softmax(-1))).sum(-1).mean()
    assert float(kl) < 1e-3 and float(kl) < float(kl_bf16)


def test_the_f32_variants_are_the_recipe_the_family_serves():
    """`variant_model` (the one recipe the family, the profiles and the replay build from) makes ``int4_wo_f32``
    a float32 model of wrapped int4 linears with a bf16 head, ``int8_wo`` a bf16 model with an int8 head,
    leaves the base untouched, and the profile params say what each computes in."""
    pytest.importorskip("transformers")
    from leanml.serve.variants.llm import variant_model, weight_only_params

    base = _tiny_llama()
    w0 = base.model.layers[0].mlp.up_proj.weight.detach().clone()
    f32 = variant_model(base, "int4_wo_f32")
    assert isinstance(f32.model.layers[0].mlp.up_proj, Float32Stream)
    assert isinstance(f32.model.layers[0].mlp.up_proj.inner, Int4WeightLinear)
    assert type(f32.lm_head.inner) is nn.Linear and f32.lm_head.inner.weight.dtype == torch.bfloat16
    assert f32.model.embed_tokens.weight.dtype == torch.float32
    wo = variant_model(base, "int8_wo")
    assert isinstance(wo.lm_head, Int8WeightLinear) and wo.model.embed_tokens.weight.dtype == torch.bfloat16
    assert torch.equal(base.model.layers[0].mlp.up_proj.weight, w0) and type(base.lm_head) is nn.Linear
    p = weight_only_params("int4_wo_f32")
    assert p["lm_head"] == "bf16" and p["activations"].startswith("float32")
    assert weight_only_params("int8_wo")["lm_head"] == "int8" and weight_only_params("int8_wo")["activations"] == "bf16"


def test_bad_settings_name_the_parameter():
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        quantize_weight_only(nn.Sequential(nn.Linear(4, 4)), 6)
    with pytest.raises(ValueError, match="head_bits must be 4 or 8"):
        quantize_weight_only(nn.Sequential(nn.Linear(4, 4)), 8, head_bits=2)
    with pytest.raises(ValueError, match="not a multiple of the group size 32"):
        Int4WeightLinear(nn.Linear(48, 8), 32)


PPL_BOUND_PCT = 1.5  # int8_wo perplexity at most this much above float32 (measured +0.2-0.6% on 4-12 passages)


@pytest.mark.slow
@pytest.mark.llm
def test_smollm2_weight_only_int8_keeps_perplexity_and_int4_keeps_the_ggufs_own_grid(smollm2_lm):
    """On held-out Wikipedia passages: int8_wo within PPL_BOUND_PCT of fp32; int4 with the GGUF's own
    32-input groups is near-lossless (the blocks ship as Q4_1), int4 on 64-input groups is not."""
    import copy

    from leanml.serve.variants.llm_quality import perplexity_kl

    m, tok = smollm2_lm.model, smollm2_lm.tok
    cache: dict = {}
    base = perplexity_kl(m, tok, n=8, max_tokens=96)
    w8 = perplexity_kl(quantize_weight_only(copy.deepcopy(m), 8), tok, m, n=8, max_tokens=96, ref_cache=cache)
    g32 = perplexity_kl(quantize_weight_only(copy.deepcopy(m), 4, group=32, head_bits=8), tok, m, n=8,
                        max_tokens=96, ref_cache=cache)
    g64 = perplexity_kl(quantize_weight_only(copy.deepcopy(m), 4, group=64, head_bits=8), tok, m, n=8,
                        max_tokens=96, ref_cache=cache)
    print("fp32", base, "\nint8_wo", w8, "\nint4 g32", g32, "\nint4 g64", g64)
    assert w8["perplexity"] <= base["perplexity"] * (1 + PPL_BOUND_PCT / 100)
    assert w8["kl_to_fp32"] < 0.02
    assert g32["kl_to_fp32"] < g64["kl_to_fp32"] / 10
    assert g64["perplexity"] > base["perplexity"] * 1.05  # a grid the weights were not on costs real quality


def test_perplexity_kl_scores_the_texts_it_is_given():
    """``perplexity_kl(texts=)`` (the SST-2 diagnostic's KL on GSM8K train texts) reads exactly those texts:
    their token count, zero KL of a model to itself, and a positive KL to its int4 copy."""
    pytest.importorskip("transformers")
    import copy

    from leanml.serve.variants.llm_quality import perplexity_kl

    m = _tiny_llama()

    def tok(text: str) -> dict:
        return {"input_ids": [ord(c) % 128 for c in text]}

    texts = ["the quick brown fox", "jumps over the lazy dog again"]
    same = perplexity_kl(m, tok, m, texts=texts)
    assert same["ppl_passages"] == 2 and same["ppl_tokens"] == sum(len(t) - 1 for t in texts)
    assert same["kl_to_fp32"] == 0.0 and "2 given texts" in same["ppl_text"]
    assert perplexity_kl(quantize_weight_only(copy.deepcopy(m), 4), tok, m, texts=texts)["kl_to_fp32"] > 0
