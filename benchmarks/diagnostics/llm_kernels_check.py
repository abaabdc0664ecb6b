"""The kernel and attention timings behind `leanml.serve.variants.llm_weight_only` and `llm_attention`.

    OMP_NUM_THREADS=1 python benchmarks/diagnostics/llm_kernels_check.py           # ~30 s
    OMP_NUM_THREADS=1 python benchmarks/diagnostics/llm_kernels_check.py --model   # + SmolLM2 decode, ~1 min

Backs docs/serve.md ("SmolLM2 weight-only int8 / int4", "Continuous batching with these variants") and
docs/planner.md ("Measured profiles"). Prints one line per figure, one torch thread:

1. ``lm_head`` (49152 x 576) at one row: fp32, bf16, torch's int8 and int4 weight-only kernels, and torchao's
   ``Int8WeightOnlyConfig`` where torchao is installed (`make peer-envs`).
2. Attention of one query over 1,024 cached tokens (9 heads on 3 KV heads), at 1 and 16 rows, and a
   128-token prefill chunk over 512: bf16 against float32 with the upcast included.
3. Whether each weight-only kernel gives a row the same result alone as among 1-300 rows.
4. With ``--model``: `int8_wo`'s decode step after a 1,000-token prefill, with bf16 and float32 attention.
"""

from __future__ import annotations

import argparse
import copy
import time


def best_ms(f, n: int = 30) -> float:
    f()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2] * 1000.0  # median


def head_section(torch) -> None:
    from torch import nn

    from leanml.serve.variants.llm_weight_only import Int4WeightLinear, Int8WeightLinear

    torch.manual_seed(0)
    lin = nn.Linear(576, 49152, bias=False)
    x = torch.randn(1, 576)
    mods = {"fp32": lin, "bf16": copy.deepcopy(lin).to(torch.bfloat16), "int8 kernel": Int8WeightLinear(lin),
            "int4 kernel (group 32)": Int4WeightLinear(lin, 32)}
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        m = nn.Sequential(copy.deepcopy(lin).to(torch.bfloat16))
        quantize_(m, Int8WeightOnlyConfig())
        mods["torchao Int8WeightOnlyConfig"] = m
    except ImportError:
        print("torchao not installed (`make peer-envs`): its row is skipped")
    with torch.inference_mode():
        for name, m in mods.items():
            xx = x if name == "fp32" else x.to(torch.bfloat16)
            print(f"lm_head 49152 x 576, 1 row, {name}: {best_ms(lambda m=m, xx=xx: m(xx)):.2f} ms")


def attention_section(torch) -> None:
    import torch.nn.functional as F

    def both(q, k, v):
        bf = best_ms(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
        up = best_ms(lambda: F.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                                            enable_gqa=True).to(torch.bfloat16))
        return bf, up

    for rows in (1, 16):
        q = torch.randn(rows, 9, 1, 64, dtype=torch.bfloat16)
        k, v = (torch.randn(rows, 3, 1024, 64, dtype=torch.bfloat16) for _ in range(2))
        bf, up = both(q, k, v)
        print(f"attention, 1 query over 1,024 cached, {rows} rows: bf16 {bf:.3f} ms, float32 with upcast {up:.3f} ms")
    q = torch.randn(1, 9, 128, 64, dtype=torch.bfloat16)
    k, v = (torch.randn(1, 3, 512, 64, dtype=torch.bfloat16) for _ in range(2))
    bf, up = both(q, k, v)
    print(f"attention, 128-token chunk over 512: bf16 {bf:.3f} ms, float32 with upcast {up:.3f} ms")


def invariance_section(torch) -> None:
    from torch import nn

    from leanml.serve.variants.llm_weight_only import Int4WeightLinear, Int8WeightLinear

    torch.manual_seed(0)
    for n_out, n_in, rows in ((1536, 576, 300), (576, 1536, 300), (49152, 576, 64)):
        lin = nn.Linear(n_in, n_out, bias=False)
        x = torch.randn(rows, n_in).to(torch.bfloat16)
        for name, q in (("int8", Int8WeightLinear(lin)), ("int4", Int4WeightLinear(lin, 32))):
            with torch.inference_mode():
                full = q(x)
                alone = torch.cat([q(x[i:i + 1]) for i in range(rows)])
                prefixes = all(torch.equal(q(x[:m]), full[:m]) for m in range(1, rows + 1, 7))
            print(f"{name} {n_out} x {n_in}: each row alone == among {rows}: {torch.equal(alone, full)}; "
                  f"every 7th prefix == the full product: {prefixes}")


def model_section(torch) -> None:
    from leanml.serve.variants.llm import load_smollm2, variant_model
    from leanml.serve.variants.llm_weight_only import quantize_weight_only

    base, tok = load_smollm2()
    ids = tok(" ".join(["The history of Rome is long and full of emperors."] * 90))["input_ids"][:1000]

    def step(m, rows: int) -> float:
        with torch.inference_mode():
            cache = m(input_ids=torch.tensor([ids] * rows), use_cache=True).past_key_values
            nxt = torch.full((rows, 1), ids[-1])
            ts = []
            for _ in range(6):
                t0 = time.perf_counter()
                m(input_ids=nxt, past_key_values=cache, use_cache=True)
                ts.append(time.perf_counter() - t0)
        return sorted(ts[1:])[2] * 1000.0

    plain = quantize_weight_only(copy.deepcopy(base), 8)  # bf16 attention (transformers' SDPA)
    fp32_attn = variant_model(base, "int8_wo")  # the variant as served: float32 attention
    for rows in (1, 4):
        print(f"int8_wo decode step after 1,000 tokens, {rows} rows: bf16 attention {step(plain, rows):.1f} ms, "
              f"float32 attention {step(fp32_attn, rows):.1f} ms, fp32 model {step(base, rows):.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="store_true", help="also time SmolLM2's long-context decode step")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    head_section(torch)
    attention_section(torch)
    invariance_section(torch)
    if a.model:
        model_section(torch)


if __name__ == "__main__":
    main()
