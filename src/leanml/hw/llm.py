"""LLM phases on a device from the model's shape: prefill, decode (per step, KV cache), LoRA training.

The API the serving planner and simulator call to cost an LLM variant on a device nobody profiled:

    from leanml.hw.llm import predict_llm_phases
    c = predict_llm_phases("smollm2-135m", "h200", dtype="bf16", batch=16, prompt_len=512, gen_len=128)
    c.ttft_s, c.tpot_s, c.tokens_per_s, c.bound, c.source   # source == "predicted"

Kernels come from `leanml.hw.llm_ops` (written from the shape, no weights); each is costed by the same
roofline + efficiency-curve `CostModel` as traced workloads (`leanml.hw.predict.predict`), so per-op
accounting (GEMMs, attention fused or not, norms, elementwise, per-kernel launch overhead) is the same.

* TTFT = the prefill of the batch's prompts (it produces the first token);
* TPOT = mean time of decode steps 1 .. gen_len-1, step t attending over ``prompt_len + t`` cached keys,
  each step reading every weight and the whole KV cache;
* tokens/s = ``batch * gen_len / (TTFT + (gen_len - 1) * TPOT)`` (output tokens of the whole batch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from leanml.hw.catalog import get_device
from leanml.hw.errors import HwError
from leanml.hw.llm_ops import (
    LLAMA_LORA_TARGETS,
    LLMShape,
    Lora,
    check_run,
    decode_step_ops,
    get_shape,
    prefill_ops,
    train_ops,
)
from leanml.hw.precision import resolve_dtype
from leanml.hw.predict import Prediction, calibration_source, predict
from leanml.hw.schema import DTYPE_BYTES, Device

__all__ = ["LLMPhaseCost", "LLMShape", "Lora", "decode_step", "predict_llm_phases", "predict_llm_train",
           "predict_prefill"]

# Decode steps costed exactly (one by one) up to this many; longer generations are integrated by the
# trapezoid rule over this many evenly spaced steps (step time is linear in the context length).
_MAX_EXACT_STEPS = 64


@dataclass
class LLMPhaseCost:
    """Predicted serving cost of one batch of an LLM on a device (all times in seconds)."""

    model: str
    device: str
    dtype: str
    batch: int
    prompt_len: int
    gen_len: int
    ttft_s: float  # prefill of the batch = time to first token
    tpot_s: float  # mean time per output token after the first (one decode step of the batch)
    tokens_per_s: float  # output tokens of the batch per second over the whole generation
    bound: str  # decode's bound ("memory" at small batch), or prefill's when gen_len <= 1
    prefill_bound: str
    decode_bound: str
    prefill: Prediction
    decode_first: Prediction  # the first decode step (context prompt_len + 1)
    kv_cache_bytes: float  # at the end of the generation
    weight_bytes: float
    source: str = "predicted"  # never measured: a roofline prediction from the catalog entry
    calibration: str = ""  # "measured: ..." when the device was calibrated, else "datasheet: ..."
    notes: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("prefill", "decode_first")}
        d["prefill_flops"], d["decode_step_bytes"] = self.prefill.flops, self.decode_first.bytes
        return d


def _setup(model: Any, device: str | Device, dtype: str, dtype_fallback: str | None):
    shape, dev = get_shape(model), get_device(device)
    gemm_dt, note = resolve_dtype(dev, dtype, dtype_fallback)
    return shape, dev, gemm_dt, note


def _cost(ops: list, dev: Device, dtype: str, gemm_dt: str, overhead: bool) -> Prediction:
    if gemm_dt != dtype:  # stated fallback: bytes at dtype sizes, GEMM rate of gemm_dt
        from dataclasses import replace

        ops = [replace(o, dtype=gemm_dt) if o.kind in ("matmul", "attention") else o for o in ops]
    return predict(ops, dev, overhead=overhead, modules=[o.name for o in ops])


def predict_prefill(model: Any, device: str | Device, dtype: str = "bf16", batch: int = 1, prompt_len: int = 512,
                    *, fused_attention: bool = True, overhead: bool = True,
                    dtype_fallback: str | None = None) -> Prediction:
    """Predicted prefill of ``batch`` prompts of ``prompt_len`` tokens (per-op breakdown in ``by_module``)."""
    shape, dev, gemm_dt, note = _setup(model, device, dtype, dtype_fallback)
    check_run(shape, batch, prompt_len, 0, dtype)
    p = _cost(prefill_ops(shape, batch, prompt_len, dtype, fused_attention), dev, dtype, gemm_dt, overhead)
    p.notes["dtype"] = note
    return p


def decode_step(model: Any, device: str | Device, dtype: str = "bf16", batch: int = 1, context: int = 512, *,
                fused_attention: bool = True, overhead: bool = True, dtype_fallback: str | None = None) -> Prediction:
    """Predicted time of one decode step of ``batch`` sequences over ``context`` cached tokens."""
    shape, dev, gemm_dt, note = _setup(model, device, dtype, dtype_fallback)
    check_run(shape, batch, context, 0, dtype)
    p = _cost(decode_step_ops(shape, batch, context, dtype, fused_attention), dev, dtype, gemm_dt, overhead)
    p.notes["dtype"] = note
    return p


def predict_llm_phases(model: Any, device: str | Device, dtype: str = "bf16", batch: int = 1,
                       prompt_len: int = 512, gen_len: int = 128, *, fused_attention: bool = True,
                       overhead: bool = True, dtype_fallback: str | None = None) -> LLMPhaseCost:
    """TTFT, TPOT and tokens/s of serving ``batch`` sequences on ``device`` (a prediction, never a measurement).

    ``model``: a preset name (``smollm2-135m``, ``llama-7b``), an `LLMShape`, or a Llama-style config.
    ``overhead=False`` drops the per-kernel launch cost (CUDA-graph serving engines hide most of it).
    """
    shape, dev, gemm_dt, note = _setup(model, device, dtype, dtype_fallback)
    check_run(shape, batch, prompt_len, gen_len, dtype)
    pre = _cost(prefill_ops(shape, batch, prompt_len, dtype, fused_attention), dev, dtype, gemm_dt, overhead)
    steps = list(range(1, gen_len))  # step t produces token t+1 at context prompt_len + t
    if not steps:
        steps_t = [1]
    elif len(steps) <= _MAX_EXACT_STEPS:
        steps_t = steps
    else:
        n = _MAX_EXACT_STEPS
        steps_t = sorted({1 + round(i * (gen_len - 2) / (n - 1)) for i in range(n)})
    preds = {t: _cost(decode_step_ops(shape, batch, prompt_len + t, dtype, fused_attention), dev, dtype, gemm_dt,
                      overhead) for t in steps_t}
    if steps and len(steps) > _MAX_EXACT_STEPS:
        import numpy as np

        xs = np.array(steps_t, float)
        ys = np.array([preds[t].time_s for t in steps_t])
        tpot = float(np.trapezoid(ys, xs) / (xs[-1] - xs[0])) if len(xs) > 1 else float(ys[0])
    else:
        tpot = sum(preds[t].time_s for t in steps_t) / len(steps_t)
    first = preds[steps_t[0]]
    total = pre.time_s + max(gen_len - 1, 0) * tpot
    b = DTYPE_BYTES[dtype if dtype not in ("fp8", "int8") else "bf16"]
    kv = 2.0 * shape.layers * batch * (prompt_len + gen_len) * shape.kv_heads * shape.head_dim * b
    return LLMPhaseCost(
        model=shape.name, device=dev.id, dtype=dtype, batch=batch, prompt_len=prompt_len, gen_len=gen_len,
        ttft_s=pre.time_s, tpot_s=tpot, tokens_per_s=(batch * gen_len / total) if gen_len else 0.0,
        bound=first.bound if gen_len > 1 else pre.bound, prefill_bound=pre.bound, decode_bound=first.bound,
        prefill=pre, decode_first=first, kv_cache_bytes=kv, weight_bytes=float(shape.params * DTYPE_BYTES[dtype]),
        calibration=calibration_source(dev),
        notes={"dtype": note, "attention": "fused (flash)" if fused_attention else "unfused (scores materialised)",
               "overhead": f"{dev.op_overhead * 1e6:.3g} us per kernel ({'included' if overhead else 'excluded'})",
               "tpot": f"mean of decode steps 1..{max(gen_len - 1, 1)}"
                       + (f" (trapezoid over {len(steps_t)} steps)" if len(steps) > _MAX_EXACT_STEPS else ""),
               "source": "predicted by leanml.hw's roofline from the device entry; no profile of this device"},
    )


def predict_llm_train(model: Any, device: str | Device, dtype: str = "bf16", batch: int = 1, seq: int = 512, *,
                      lora_rank: int | None = None, lora_targets: tuple[str, ...] = LLAMA_LORA_TARGETS,
                      fused_attention: bool = True, overhead: bool = True,
                      dtype_fallback: str | None = None) -> Prediction:
    """Predicted training step (forward, loss, backward, Adam); ``lora_rank`` trains adapters only."""
    shape, dev, gemm_dt, note = _setup(model, device, dtype, dtype_fallback)
    check_run(shape, batch, seq, 0, dtype)
    lora = Lora(lora_rank, tuple(lora_targets)) if lora_rank is not None else None
    if lora_rank is None and tuple(lora_targets) != LLAMA_LORA_TARGETS:
        raise HwError("lora_targets: given without lora_rank; pass lora_rank (e.g. 128) to train adapters")
    p = _cost(train_ops(shape, batch, seq, dtype, lora, fused_attention), dev, dtype, gemm_dt, overhead)
    p.notes["dtype"] = note
    p.notes["training"] = (f"LoRA r{lora.rank} on {','.join(lora.targets)}: {lora.params(shape):,} trained params; "
                           "frozen base: forward + input-gradient backward only") if lora else "full fine-tuning"
    return p
