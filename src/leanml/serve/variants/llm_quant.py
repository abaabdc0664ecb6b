"""int8 for Llama-style decoders on x86 CPUs: SmoothQuant smoothing + fbgemm dynamic int8, per-channel weights.

Why this and not weight-only int8/int4 from a library, measured on this AVX2-only CPU at SmolLM2 shapes
(see docs/serve.md): torchao's Int8WeightOnly and ``torch._weight_int8pack_mm`` run 2.6-10x *slower*
than float32 (weights are dequantized per call, no fused int8 GEMV), torchao's int4 needs the ``mslk``
kernels (absent), optimum-quanto's int8 is 5x slower. fbgemm's dynamic int8
(``torch.ao.quantization.quantize_dynamic``) is the one int8 path that is *faster* here (about 3x), but it
quantizes each activation tensor with one scale, and LLM activations have outlier channels (Dettmers et
al., LLM.int8(), 2022): the plain variant keeps 2% of float32's greedy text.

SmoothQuant (Xiao et al., ICML 2023) removes the outliers before quantizing: for a Linear whose input
channel j has activation range a_j (calibrated on real text) and weight range w_j, divide the activation
by s_j = a_j^alpha / w_j^(1-alpha) and multiply the weight column by s_j. The product is unchanged in
exact arithmetic; the division is folded into the preceding RMSNorm's weight (for q/k/v and gate/up)
or into ``up_proj``'s rows (for ``down_proj``, whose input is silu(gate) * up), so inference costs
nothing extra. ``o_proj`` is not smoothed: with grouped-query attention a value channel feeds several
query heads, so no per-channel fold exists. After smoothing, every Linear is quantized with fbgemm's
dynamic int8 and *per-channel* weight scales (``per_channel_dynamic_qconfig``). Layers matching
``keep_float`` stay float32: by default ``lm_head`` and every ``down_proj``. Measured on SmolLM2 (4 held-out
passages): the inputs of ``down_proj`` have outlier channels up to 2,900x their median (layer 11), which no
alpha smooths away (int8 down_proj: perplexity +23% or worse at alpha 0.75-0.9, even with the 3 worst
layers kept float), and an int8 ``lm_head`` adds +3.7%; smoothing at alpha 0.75 with those kept float
costs +0.9%.

torch.ao.quantization has no SmoothQuant, and torchao (not a leanml dependency) would pair it with its own
int8 matmuls, the slow path measured above; so the calibration and the folding are written here (about
60 lines) and the int8 GEMMs are fbgemm's.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn


def _blocks(model) -> list[nn.Module]:
    layers = getattr(getattr(model, "model", model), "layers", None)
    if layers is None:
        raise TypeError("smoothquant: model has no .model.layers (not a Llama-style decoder)")
    return list(layers)


def activation_ranges(model, texts: Iterable[str], tok, max_tokens: int = 256) -> dict[nn.Linear, torch.Tensor]:
    """Per input channel, max |activation| entering each Linear of the decoder blocks, over ``texts``."""
    ranges: dict[nn.Linear, torch.Tensor] = {}

    def hook(mod, args):
        x = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0).float()
        ranges[mod] = torch.maximum(ranges[mod], x) if mod in ranges else x

    hs = [m.register_forward_pre_hook(hook) for b in _blocks(model) for m in b.modules() if isinstance(m, nn.Linear)]
    try:
        with torch.inference_mode():
            for t in texts:
                model(input_ids=torch.tensor([tok(t)["input_ids"][:max_tokens]]))
    finally:
        for h in hs:
            h.remove()
    return ranges


def _scales(act: torch.Tensor, linears: list[nn.Linear], alpha: float) -> torch.Tensor:
    w = torch.stack([lin.weight.abs().amax(0) for lin in linears]).amax(0).float()
    s = act.clamp(min=1e-5).pow(alpha) / w.clamp(min=1e-5).pow(1 - alpha)
    return s.clamp(min=1e-5)


@torch.no_grad()
def smooth(model, ranges: dict[nn.Linear, torch.Tensor], alpha: float = 0.5, down_alpha: float | None = None) -> None:
    """Fold SmoothQuant scales into ``model`` in place (q/k/v <- input norm, gate/up <- post-attention norm,
    down <- up_proj rows; ``down_alpha`` for down_proj, default ``alpha``). The float model computes the
    same function afterwards (up to rounding)."""
    for b in _blocks(model):
        at, mlp = b.self_attn, b.mlp
        for norm, lins in ((b.input_layernorm, [at.q_proj, at.k_proj, at.v_proj]),
                           (b.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj])):
            s = _scales(ranges[lins[0]], lins, alpha)
            norm.weight.div_(s.to(norm.weight.dtype))
            for lin in lins:
                lin.weight.mul_(s.to(lin.weight.dtype))
        s = _scales(ranges[mlp.down_proj], [mlp.down_proj], alpha if down_alpha is None else down_alpha)
        mlp.up_proj.weight.div_(s[:, None])
        if mlp.up_proj.bias is not None:
            mlp.up_proj.bias.div_(s)
        mlp.down_proj.weight.mul_(s)


KEEP_FLOAT = ("lm_head", "*.down_proj")  # measured most sensitive on SmolLM2 (docs/serve.md)


def quantize_int8(model, *, per_channel: bool = True, keep_float: tuple[str, ...] = KEEP_FLOAT):
    """fbgemm dynamic int8 for every Linear except those whose name matches a ``keep_float`` pattern
    (fnmatch, e.g. ``"*.down_proj"``); returns a copy."""
    from fnmatch import fnmatch

    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    from leanml.serve.variants.torch_variants import _quiet_quant

    qc = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    spec = {n: qc for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and not any(fnmatch(n, k) for k in keep_float)}
    ctx = _quiet_quant()
    try:
        return quantize_dynamic(copy.deepcopy(model).eval(), spec, dtype=torch.qint8)
    finally:
        ctx.__exit__(None, None, None)


@torch.no_grad()
def smooth_lm_head(model, texts: Iterable[str], tok, alpha: float = 0.5, max_tokens: int = 256) -> None:
    """Untie ``lm_head`` from the input embeddings (its own copy of the weight) and fold SmoothQuant scales
    for it into the final RMSNorm, in place: the float model computes the same logits afterwards."""
    head, norm = model.lm_head, getattr(model, "model", model).norm
    head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=False)
    acc: list[torch.Tensor] = []

    def hook(mod, args):
        x = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0).float()
        acc[:] = [torch.maximum(acc[0], x)] if acc else [x]

    h = head.register_forward_pre_hook(hook)
    try:
        with torch.inference_mode():
            for t in texts:
                model(input_ids=torch.tensor([tok(t)["input_ids"][:max_tokens]]))
    finally:
        h.remove()
    s = _scales(acc[0], [head], alpha)
    norm.weight.div_(s.to(norm.weight.dtype))
    head.weight.mul_(s.to(head.weight.dtype))


def smoothquant_int8(model, tok, calibration: Iterable[str], *, alpha: float = 0.75,
                     keep_float: tuple[str, ...] = KEEP_FLOAT, head_alpha: float | None = None):
    """A SmoothQuant-smoothed copy of ``model`` with per-channel dynamic int8 Linears. With ``head_alpha``
    the (untied) ``lm_head`` is smoothed too, at that alpha (fold into the final norm); list it in
    ``keep_float`` or not to keep it float or quantize it."""
    texts = list(calibration)
    smoothed = copy.deepcopy(model).eval()
    smooth(smoothed, activation_ranges(smoothed, texts, tok), alpha)
    if head_alpha is not None:
        smooth_lm_head(smoothed, texts, tok, head_alpha)
    return quantize_int8(smoothed, per_channel=True, keep_float=keep_float)


def calibration_texts(n: int = 32, seed: int = 0) -> list[str]:
    """Calibration text disjoint from every evaluation set: GSM8K *train* questions with their worked answers."""
    import json

    import numpy as np

    from leanml.data.root import data_root

    path = data_root() / "instruct" / "gsm8k" / "train.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"calibration text {path} is missing: set LEANML_DATA to the data root")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    order = np.random.default_rng(seed).permutation(len(rows))
    return [f"{rows[i]['question']}\n{rows[i]['answer']}" for i in order[:n]]
