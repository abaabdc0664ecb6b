"""Float32 attention for bf16 models on CPU: switched on only where it applies; same function, also with a cache."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("transformers")


def _tiny(dtype=torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(cfg).eval().to(dtype)


def test_fp32_attention_applies_to_16_bit_cpu_models_only():
    from leanml.serve.variants.llm_attention import ATTENTION, use_fp32_attention

    m32 = use_fp32_attention(_tiny())
    assert m32.config._attn_implementation != ATTENTION
    m16 = use_fp32_attention(_tiny(torch.bfloat16))
    assert m16.config._attn_implementation == ATTENTION


def test_fp32_attention_computes_the_model_and_decodes_with_a_cache():
    from leanml.serve.variants.llm_attention import use_fp32_attention

    ref = _tiny()
    plain = copy.deepcopy(ref).to(torch.bfloat16)
    up = use_fp32_attention(copy.deepcopy(ref).to(torch.bfloat16))
    ids = torch.randint(0, 128, (2, 40))
    with torch.inference_mode():
        r, a, b = (m(input_ids=ids).logits.float() for m in (ref, plain, up))
        assert not torch.equal(a, b)  # the attention really took the other path
        assert torch.allclose(b, r, atol=0.05) and (b - r).abs().mean() < 0.01
        out = up(input_ids=ids[:, :39], use_cache=True)  # one decode step over the cache gives the last position
        step = up(input_ids=ids[:, 39:], past_key_values=out.past_key_values, use_cache=True).logits.float()
    assert step.dtype == torch.float32 and torch.allclose(step[:, -1], b[:, -1], atol=0.1)


def test_fp32_attention_masks_left_padding_like_sdpa():
    """A left-padded batch gives each row the logits it gets alone: the padding mask is built for the new
    attention too (transformers builds none for a registered name without a mask function)."""
    from leanml.serve.variants.llm_attention import use_fp32_attention

    m = use_fp32_attention(_tiny(torch.bfloat16))
    short, long = torch.randint(0, 128, (1, 6)), torch.randint(0, 128, (1, 10))
    ids = torch.cat([torch.zeros(1, 4, dtype=torch.long), short], dim=1)
    batch = torch.cat([ids, long])
    mask = torch.cat([torch.tensor([[0] * 4 + [1] * 6]), torch.ones(1, 10, dtype=torch.long)])
    with torch.inference_mode():
        both = m(input_ids=batch, attention_mask=mask).logits.float()
        alone = m(input_ids=short).logits.float()
    assert torch.allclose(both[0, 4:], alone[0], atol=0.05)
