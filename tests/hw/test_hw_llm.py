"""Precision, LoRA training and LLM phases: hand arithmetic, peak ratios, bounds and clear errors."""

from __future__ import annotations

import pytest
import torch

from leanml.hw import CostModel, get_device, load_catalog, predict, trace_train_step
from leanml.hw import costmodel as cm
from leanml.hw.errors import HwError
from leanml.hw.llm import decode_step, predict_llm_phases, predict_llm_train, predict_prefill
from leanml.hw.llm_ops import LLMShape, Lora, prefill_ops, train_ops
from leanml.hw.precision import cast_ops

TINY = LLMShape("tiny-llama", hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=100,
                max_context=256, tie_embeddings=False)
GPUS = sorted(d for d, dev in load_catalog(include_local=False).devices.items() if dev.cls == "gpu")


def _gemm_flops(ops):
    return sum(o.flops * o.count for o in ops if o.kind in ("matmul", "attention"))


@pytest.mark.parametrize("dev", ["h200", "h100_sxm", "a100_80gb", "l4"])
def test_dtype_scales_compute_bound_by_peak_ratio_not_memory_bound(dev):
    d = get_device(dev)
    m = CostModel(d, overhead=False)
    big = cm.matmul(8192, 8192, 8192, "fp32")
    for dt in ("tf32", "bf16", "fp16", "int8") + (("fp8",) if "fp8" in d.peak_flops else ()):
        [cast] = cast_ops([big], dt)
        assert m.estimate(cast).bound == "compute"
        assert m.time(big) / m.time(cast) == pytest.approx(d.peak(dt) / d.peak("fp32"), rel=1e-9)
    gemv = cm.matmul(1, 8192, 8192, "fp32")  # decode-like: reads the weight once, 2 FLOP per weight
    [tf32] = cast_ops([gemv], "tf32")
    [bf16] = cast_ops([gemv], "bf16")
    assert m.estimate(gemv).bound == m.estimate(bf16).bound == "memory"
    assert m.time(tf32) == pytest.approx(m.time(gemv))  # same bytes: the faster tensor cores do not help
    ratio = m.time(gemv) / m.time(bf16)
    assert ratio < 2.5 < d.peak("bf16") / d.peak("fp32")  # halves the bytes, not the peak ratio


def test_traced_profile_recast_and_missing_peak_errors():
    from leanml.models import build_mlp

    prof = trace_train_step(build_mlp(512, 10, (2048, 2048)), torch.randn(256, 512), torch.randint(0, 10, (256,)))
    fp32, bf16 = predict(prof, "h200"), predict(prof, "h200", dtype="bf16")
    assert bf16.time_s < fp32.time_s and bf16.bytes == pytest.approx(fp32.bytes / 2, rel=0.05)
    assert "bf16" in bf16.notes["dtype"] and "fp32" in fp32.notes["dtype"]
    with pytest.raises(HwError, match="no fp8 peak.*fallback"):
        predict(prof, "a100_80gb", dtype="fp8")  # Ampere has no FP8 tensor cores
    fb = predict(prof, "a100_80gb", dtype="fp8", dtype_fallback="bf16")
    assert "FALLBACK" in fb.notes["dtype"]
    with pytest.raises(HwError, match="unknown dtype 'fp7'"):
        predict(prof, "h200", dtype="fp7")
    with pytest.raises(HwError, match="has no bf16 peak"):
        predict(prof, "grace", dtype="bf16")


def test_lora_training_flops_equal_hand_arithmetic():
    b, s, r = 2, 16, 8
    m = b * s
    lora = Lora(r, ("q_proj", "v_proj"))
    h, kvd, L, V = TINY.hidden, TINY.kv_heads * TINY.head_dim, TINY.layers, TINY.vocab
    block = L * (h * h + h * kvd + h * kvd + h * h + 3 * h * TINY.intermediate)
    assert TINY.block_params == block
    lora_params = L * r * ((h + h) + (h + kvd))  # A: in x r, B: r x out, for q (h->h) and v (h->kvd)
    assert lora.params(TINY) == lora_params
    pairs = b * s * (s + 1) / 2
    attention = 4 * h * pairs * L * (1 + 2.5)  # forward QK^T + PV, flash backward 5 GEMMs
    base = 2 * m * (block + V * h)  # frozen: forward, and input-gradient backward only
    hand = 2 * base + 3 * 2 * m * lora_params + attention
    assert _gemm_flops(train_ops(TINY, b, s, "bf16", lora)) == pytest.approx(hand, rel=1e-12)
    full = _gemm_flops(train_ops(TINY, b, s, "bf16", None))
    assert full == pytest.approx(3 * base + attention, rel=1e-12)  # + weight gradients
    p = predict_llm_train(TINY, "h200", "bf16", b, s, lora_rank=r, lora_targets=("q_proj", "v_proj"))
    assert "LoRA r8" in p.notes["training"]


def test_traced_lora_skips_frozen_weight_gradients():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=128, vocab_size=100, max_position_embeddings=256)
    with torch.device("meta"):
        base = LlamaForCausalLM(cfg)
        ids = torch.randint(0, 100, (2, 16))
    full = trace_train_step(base, {"input_ids": ids}, ids)
    lora = get_peft_model(base, LoraConfig(r=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    ada = trace_train_step(lora, {"input_ids": ids}, ids)
    mm = lambda p: sum(o.flops for o in p.ops if o.kind == "matmul")  # noqa: E731
    # frozen base: no weight-gradient GEMMs, so about 2/3 of full fine-tuning's GEMM work (+ adapters)
    assert mm(ada) < 0.75 * mm(full)
    assert LLMShape.from_config(cfg).block_params == TINY.block_params


@pytest.mark.parametrize("model", ["smollm2-135m", "llama-7b"])
def test_prefill_flops_are_2_params_tokens_plus_attention(model):
    from leanml.hw.llm_ops import get_shape

    sh = get_shape(model)
    b, s = 4, 512
    ops = prefill_ops(sh, b, s, "bf16")
    attention = 4 * sh.hidden * b * s * (s + 1) / 2 * sh.layers
    expected = 2 * sh.block_params * b * s + 2 * sh.vocab * sh.hidden * b + attention  # logits of the last position
    total = sum(o.flops * o.count for o in ops)  # everything: GEMMs, attention, norms, elementwise
    assert total == pytest.approx(expected, rel=0.01)
    assert predict_prefill(model, "h200", "bf16", b, s).flops == pytest.approx(total)


@pytest.mark.parametrize("dev", GPUS)
def test_decode_batch_1_is_memory_bound_on_every_gpu(dev):
    for model in ("smollm2-135m", "llama-7b"):
        c = predict_llm_phases(model, dev, "bf16", batch=1, prompt_len=512, gen_len=32, overhead=False)
        assert c.decode_bound == "memory", (dev, model)
        assert c.source == "predicted" and c.tpot_s > 0 and c.tokens_per_s > 0
    # with eager launch overhead included the 7B model is still memory-bound (135M becomes launch-bound)
    assert predict_llm_phases("llama-7b", dev, "bf16", 1, 512, 32).decode_bound == "memory"
    # decode reads every weight each step: a step is at least weight bytes / bandwidth
    d = get_device(dev)
    step = decode_step("llama-7b", dev, "bf16", 1, 512, overhead=False)
    assert step.time_s >= 2 * 6.7e9 / d.main_memory.bandwidth


def test_phase_costs_scale_as_they_should():
    small = predict_llm_phases("llama-7b", "h200", "bf16", 1, 512, 128)
    big = predict_llm_phases("llama-7b", "h200", "bf16", 64, 512, 128)
    assert big.tokens_per_s > 10 * small.tokens_per_s  # batching amortises weight reads
    assert big.tpot_s < 8 * small.tpot_s
    assert big.ttft_s > 30 * small.ttft_s  # prefill is compute-bound: ~linear in tokens
    assert predict_prefill("llama-7b", "h200", "bf16", 8, 512).bound == "compute"
    long = predict_llm_phases("llama-7b", "h200", "bf16", 16, 3000, 512)
    assert long.tpot_s > big.tpot_s / 4  # KV-cache reads grow with context
    unf = predict_llm_phases("llama-7b", "h200", "bf16", 16, 2048, 8, fused_attention=False)
    fus = predict_llm_phases("llama-7b", "h200", "bf16", 16, 2048, 8)
    assert unf.ttft_s > fus.ttft_s
    assert {"prefill_flops", "ttft_s", "tpot_s", "tokens_per_s", "source"} <= set(fus.to_dict())
    assert fus.calibration.startswith("datasheet")
    assert predict_llm_phases("smollm2-135m", "dev_vm", "fp32", 1, 16, 4).calibration.startswith("measured")


def test_bad_inputs_give_clear_errors():
    with pytest.raises(HwError, match="unknown dtype 'float7'"):
        predict_llm_phases("llama-7b", "h200", "float7")
    with pytest.raises(HwError, match="lora_rank must be an integer >= 1"):
        predict_llm_train("llama-7b", "h200", lora_rank=0)
    with pytest.raises(HwError, match="lora_rank"):
        predict_llm_train("llama-7b", "h200", lora_rank=-4)
    with pytest.raises(HwError, match="lora_targets: unknown projection"):
        predict_llm_train("llama-7b", "h200", lora_rank=8, lora_targets=("qkv",))
    with pytest.raises(HwError, match="longer than llama-7b's maximum context of 4096"):
        predict_llm_phases("llama-7b", "h200", "bf16", 1, 4000, 200)
    with pytest.raises(HwError, match="batch must be"):
        predict_llm_phases("llama-7b", "h200", "bf16", 0)
    with pytest.raises(HwError, match="unknown LLM preset"):
        predict_llm_phases("gpt-9", "h200")
    with pytest.raises(HwError, match="no fp8 peak"):
        predict_llm_phases("llama-7b", "a100_80gb", "fp8")
    fb = predict_llm_phases("llama-7b", "a100_80gb", "fp8", dtype_fallback="bf16")
    assert "FALLBACK" in fb.notes["dtype"]


def test_reuse_distance_puts_streamed_weights_in_main_memory():
    from leanml.hw import CostModel, trace_callable

    ws = [torch.randn(512, 512) for _ in range(40)]  # 1 MiB each: fits L2/L3 alone, 40 MiB together does not
    x = torch.randn(1, 512)

    def stream():
        for w in ws:
            torch.nn.functional.linear(x, w)

    prof = trace_callable(stream)
    mm = [o for o in prof.ops if o.kind == "matmul"]
    assert len(mm) == 40 and all(o.reuse_bytes >= 39 * 512 * 512 * 4 for o in mm)  # all the other weights between
    dev = get_device("dev_vm")
    m = CostModel(dev, overhead=False)
    alone = trace_callable(lambda: torch.nn.functional.linear(x, ws[0])).ops
    [one] = [o for o in alone if o.kind == "matmul"]
    assert one.reuse_bytes == pytest.approx(one.bytes)  # repeated alone: its own bytes since the last call
    assert dev.level_for(mm[0].spec().working_set).name == dev.main_memory.name
    assert m.time(mm[0].spec()) > 2 * m.time(one.spec())  # streamed from DRAM, not served by the cache


def test_embedding_reads_rows_not_table_and_module_calls_counted():
    from leanml.hw import trace_inference
    from leanml.models import build_mlp

    emb = torch.nn.Embedding(50_000, 64)
    ids = torch.randint(0, 50_000, (4, 8))
    [op] = [o for o in trace_inference(emb, ids).ops if "embedding" in o.aten]
    assert op.bytes == 2 * 4 * 8 * 64 * 4 + ids.numel() * 8  # gathered rows read + written, and the indices
    prof = trace_inference(build_mlp(8, 2, (16, 16)), torch.randn(4, 8))
    assert prof.module_calls == {"torch": 1 + len(list(build_mlp(8, 2, (16, 16)).children())), "library": 0}
    from dataclasses import replace

    dev = replace(get_device("dev_vm"), module_overhead=1e-3, library_module_overhead=1.0)
    p = predict(prof, dev)
    assert p.by_kind["framework"] == pytest.approx(prof.module_calls["torch"] * 1e-3)
    assert predict(prof, dev, overhead=False).time_s < p.time_s - prof.module_calls["torch"] * 1e-3 * 0.99


def test_per_example_grads_of_frozen_base_skip_its_weight_gradients():
    from leanml.hw import trace_per_example_grads
    from leanml.models import build_mlp

    x, y = torch.randn(8, 64), torch.randint(0, 10, (8,))
    model = build_mlp(64, 10, (256,))
    full = trace_per_example_grads(model, x, y)
    for p in model[0].parameters():  # freeze the first (largest) layer, as a LoRA base is frozen
        p.requires_grad_(False)
    part = trace_per_example_grads(model, x, y)
    mm = lambda p: sum(o.flops for o in p.ops if o.kind == "matmul")  # noqa: E731
    # gone: the first layer's per-example weight gradient (2 x 8 x 64 x 256) and, as nothing below the last
    # layer is trained any more, the last layer's input gradient (2 x 8 x 256 x 10)
    assert mm(full) - mm(part) == 2 * 8 * 64 * 256 + 2 * 8 * 256 * 10
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(HwError, match="requires_grad"):
        trace_per_example_grads(model, x, y)
