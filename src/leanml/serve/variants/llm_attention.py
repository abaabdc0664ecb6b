"""Float32 attention for bf16 LLMs on CPU: transformers' SDPA path with q, k and v upcast, the output cast back.

Why: torch's CPU ``scaled_dot_product_attention`` in bf16 is several times slower than in float32 where
decoding attends over a long cache. One query token over 1,024 cached ones, 9 heads on 3 KV heads, one
thread: 0.77 ms in bf16 against 0.11 ms upcast, and 13.0 against 2.5 ms at 16 rows; per layer, so about
20 ms of a 30-layer SmolLM2 step at one row (``int8_wo`` after 1,000 tokens: 40.2 -> 21.6 ms). Prefill
chunks gain little (1.9 against 1.8 ms at 128 x 512). All from ``benchmarks/diagnostics/llm_kernels_check.py``.
The KV cache stays bf16 (its memory is what admission counts); only the attention arithmetic is float32.
"""

from __future__ import annotations

import torch

ATTENTION = "sdpa_fp32"  # the name registered with transformers' AttentionInterface


def sdpa_fp32_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention computed in float32 (same signature and return as ``sdpa_attention_forward``)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    dtype = query.dtype
    if dtype == torch.float32:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)
    return out.to(dtype), weights


def use_fp32_attention(model):
    """Switch a transformers model's attention to `sdpa_fp32_attention`, in place, where it runs on CPU in a
    16-bit dtype (elsewhere the model is left as it is); returns ``model``."""
    p = next(model.parameters())
    if p.device.type != "cpu" or p.dtype not in (torch.bfloat16, torch.float16):
        return model
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTENTION, sdpa_fp32_attention)
    # the mask too: for a name without one, transformers builds no mask at all (padding would be attended)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)
    model.set_attn_implementation(ATTENTION)
    return model
