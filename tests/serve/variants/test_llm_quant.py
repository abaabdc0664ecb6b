"""SmoothQuant int8 for SmolLM2 keeps perplexity on real held-out text; the smoothing itself is exact."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.llm]

PPL_BOUND_PCT = 4.0  # int8_sq perplexity at most this much above float32 (measured +3.1% here, 8 passages)


def test_smoothing_alone_leaves_the_float_model_unchanged(smollm2_lm):
    """Folding the SmoothQuant scales into norms and weights is an exact re-parameterisation (up to rounding)."""
    import copy

    import torch

    from leanml.serve.variants.llm_quant import activation_ranges, calibration_texts, smooth

    m, tok = smollm2_lm.model, smollm2_lm.tok
    sm = copy.deepcopy(m)
    ranges = activation_ranges(sm, calibration_texts(4), tok, max_tokens=64)
    assert len(ranges) == 7 * len(sm.model.layers)
    smooth(sm, ranges, 0.5)
    ids = torch.tensor([tok("The river flows through the old town towards the sea.")["input_ids"]])
    with torch.inference_mode():
        a, b = m(input_ids=ids).logits, sm(input_ids=ids).logits
    assert not torch.equal(m.model.layers[0].mlp.down_proj.weight, sm.model.layers[0].mlp.down_proj.weight)
    assert torch.allclose(a, b, atol=2e-3, rtol=1e-3)


def test_smoothquant_int8_keeps_perplexity_within_bound_where_plain_int8_does_not(smollm2_lm):
    """On held-out Wikipedia passages: int8_sq within PPL_BOUND_PCT of fp32, KL far below per-tensor int8's."""
    from leanml.serve.variants.llm_quality import perplexity_kl
    from leanml.serve.variants.llm_quant import calibration_texts, smoothquant_int8
    from leanml.serve.variants.torch_variants import quantize_dynamic_int8

    m, tok = smollm2_lm.model, smollm2_lm.tok
    cache: dict = {}
    base = perplexity_kl(m, tok, n=8, max_tokens=96)
    sq = perplexity_kl(smoothquant_int8(m, tok, calibration_texts(16)), tok, m, n=8, max_tokens=96, ref_cache=cache)
    plain = perplexity_kl(quantize_dynamic_int8(m), tok, m, n=8, max_tokens=96, ref_cache=cache)
    print("fp32", base, "\nint8_sq", sq, "\nint8", plain)
    assert base["ppl_passages"] == 8 and base["perplexity_ci"][0] < base["perplexity"] < base["perplexity_ci"][1]
    assert sq["perplexity"] <= base["perplexity"] * (1 + PPL_BOUND_PCT / 100)
    assert plain["perplexity"] > base["perplexity"] * (1 + PPL_BOUND_PCT / 100)  # per-tensor int8 does not keep it
    assert sq["kl_to_fp32"] < plain["kl_to_fp32"] / 10


def test_lm_head_smoothing_unties_the_head_and_leaves_the_logits_unchanged(smollm2_lm):
    """int8_sq_head's fold of SmoothQuant scales into the final norm is exact and leaves the embeddings alone."""
    import copy

    import torch

    from leanml.serve.variants.llm_quant import calibration_texts, smooth_lm_head

    m, tok = smollm2_lm.model, smollm2_lm.tok
    sm = copy.deepcopy(m)
    smooth_lm_head(sm, calibration_texts(2), tok, 0.5, max_tokens=32)
    assert sm.lm_head.weight.data_ptr() != sm.model.embed_tokens.weight.data_ptr()  # untied
    assert torch.equal(sm.model.embed_tokens.weight, m.model.embed_tokens.weight)
    assert not torch.equal(sm.lm_head.weight, m.lm_head.weight)
    ids = torch.tensor([tok("The river flows through the old town towards the sea.")["input_ids"]])
    with torch.inference_mode():
        a, b = m(input_ids=ids).logits, sm(input_ids=ids).logits
    assert torch.allclose(a, b, atol=2e-3, rtol=1e-3)
