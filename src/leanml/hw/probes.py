"""Framework-overhead probes for calibration: the Python time an nn.Module model spends around its kernels.

A model's eager forward runs Python in every module call (argument handling, hooks; in library modules
also masks, cache bookkeeping, attention dispatch) on top of each kernel's dispatch. At tiny widths the
kernels cost nothing, so a tiny model's step time minus its kernels' dispatch overhead, divided by its
module calls, is that per-call time. Two families are measured, because they differ by an order of
magnitude: torch.nn's own modules (a Sequential of Linear/ReLU/LayerNorm) and library modules (a tiny
transformers Llama decoder, when transformers is installed; its torch.nn leaves are charged at the first
figure). Which probes ran is recorded in the device file.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from leanml.hw.timing import best_time


def _per_call(fn: Callable[[], object], reps: int, sync, op_ovh: float, view_ovh: float,
              torch_call: float | None) -> float:
    """Seconds per module call of ``fn`` beyond kernel dispatch; with ``torch_call`` given, per library call
    after charging the torch.nn calls at ``torch_call``."""
    from leanml.hw.trace import trace_callable

    with torch.no_grad():
        fn()
        prof = trace_callable(fn, "module probe")
        t = best_time(fn, reps, sync=sync)
    kernels = sum(1 for o in prof.ops if o.kind != "view")
    rest = t - kernels * op_ovh - (len(prof.ops) - kernels) * view_ovh
    if torch_call is None:
        return max(rest / max(sum(prof.module_calls.values()), 1), 0.0)
    rest -= prof.module_calls.get("torch", 0) * torch_call
    return max(rest / max(prof.module_calls.get("library", 0), 1), 0.0)


def module_overheads(dev: str, reps: int, sync, op_ovh: float, view_ovh: float) -> tuple[float, float, str]:
    """(seconds per torch.nn module call, per library module call, which probes measured them)."""
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for _ in range(8):
        layers += [torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers).to(dev).eval()
    x = torch.randn(2, 8, device=dev)
    plain = _per_call(lambda: net(x), reps, sync, op_ovh, view_ovh, None)
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        return plain, plain, "torch.nn Sequential (24 modules); no transformers: library modules at the same figure"
    cfg = LlamaConfig(hidden_size=32, intermediate_size=32, num_hidden_layers=4, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=64, max_position_embeddings=64)
    llama = LlamaForCausalLM(cfg).to(dev).eval()
    ids = torch.randint(0, 64, (1, 8), device=dev)
    lib = _per_call(lambda: llama(input_ids=ids, use_cache=False), reps, sync, op_ovh, view_ovh, plain)
    return plain, lib, "torch.nn Sequential (24 modules); transformers LlamaForCausalLM (4 layers, width 32)"

