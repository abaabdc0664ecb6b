"""Framework-overhead probes for calibration: the Python time an nn.Module model spends around its kernels.

A model's eager forward runs Python in every module call (argument handling, hooks, masks, cache
bookkeeping in transformers' decoders) on top of each kernel's dispatch. At tiny widths the kernels cost
nothing, so a tiny model's step time minus its kernels' dispatch overhead, divided by its module calls,
is that per-call time. The probe is a tiny Llama-style decoder when transformers is installed (what the
LLM workloads run), else a tiny ``torch.nn.TransformerEncoder``; which one is recorded in the device file.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from leanml.hw.timing import best_time


def _tiny_model(dev: str) -> tuple[torch.nn.Module, Callable[[], object], str]:
    torch.manual_seed(0)
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        net = torch.nn.TransformerEncoder(layer, 4, enable_nested_tensor=False).to(dev).eval()
        x = torch.randn(1, 8, 16, device=dev)
        return net, lambda: net(x), "torch.nn.TransformerEncoder (4 layers, width 16)"
    cfg = LlamaConfig(hidden_size=32, intermediate_size=32, num_hidden_layers=4, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=64, max_position_embeddings=64)
    net = LlamaForCausalLM(cfg).to(dev).eval()
    ids = torch.randint(0, 64, (1, 8), device=dev)
    return net, lambda: net(input_ids=ids, use_cache=False), "transformers LlamaForCausalLM (4 layers, width 32)"


def module_overhead(dev: str, reps: int, sync, op_ovh: float, view_ovh: float) -> tuple[float, str]:
    """(seconds per nn.Module forward call beyond kernel dispatch, which probe measured it)."""
    from leanml.hw.trace import trace_callable

    net, fn, what = _tiny_model(dev)
    with torch.no_grad():
        fn()
        prof = trace_callable(fn, "module probe")
        t = best_time(fn, reps, sync=sync)
    kernels = sum(1 for o in prof.ops if o.kind != "view")
    views = len(prof.ops) - kernels
    return max((t - kernels * op_ovh - views * view_ovh) / max(prof.module_calls, 1), 0.0), what
