"""SST-2 accuracy change of bf16 and weight-only SmolLM2 variants against float32, paired over the same sentences.

    OMP_NUM_THREADS=1 python benchmarks/diagnostics/sst2_weight_only_check.py --variants bf16,w8_head16,w4_head16

Backs docs/serve.md, "SmolLM2 weight-only int8 / int4": whether keeping ``lm_head`` in bf16 recovers the
SST-2 points that ``int8_wo`` loses (it recovers about half). ``w8`` / ``w4`` quantize every linear
(``lm_head`` int8 / int4 g32), the ``_head16`` forms keep ``lm_head`` bf16, the ``_f32`` forms keep the model
float32 around the linears (`quantize_weight_only(float32_stream=True)`), ``w8_smooth50`` / ``w8_smooth25``
fold SmoothQuant scales (alpha 0.5 / 0.25, 32 GSM8K calibration texts) into the float model before ``w8``.
The bf16-stream forms keep transformers' bf16 attention, as when the docs' first figures were taken (the
served variants attend in float32); the ``_f32`` forms attend in float32. Prints one line per variant.

    OMP_NUM_THREADS=1 python benchmarks/diagnostics/sst2_weight_only_check.py --fp32-attention \
        --variants w4_head16,w4_head16_f32,w8_head16,w8_head16_f32,w4_head8_f32

    OMP_NUM_THREADS=1 python benchmarks/diagnostics/sst2_weight_only_check.py --variants w8_smooth50,w8_smooth25
"""

from __future__ import annotations

import argparse
import copy

RECIPES = {"bf16": None, "w8": (8, 32, None, False), "w8_head16": (8, 32, 16, False), "w4": (4, 32, None, False),
           "w4_head16": (4, 32, 16, False), "w4_head8": (4, 32, 8, False),
           "w8_head16_f32": (8, 32, 16, True), "w4_head16_f32": (4, 32, 16, True), "w4_head8_f32": (4, 32, 8, True),
           "w8_f32": (8, 32, None, True)}  # (bits, int4 group, head bits, float32 stream)
SMOOTHED = {"w8_smooth50": 0.5, "w8_smooth25": 0.25}  # SmoothQuant-style scales folded in first, then w8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="bf16,w8_head16,w4_head16", help=f"from {sorted({**RECIPES, **SMOOTHED})}")
    ap.add_argument("--n", type=int, default=872, help="GLUE-dev sentences (872 = all)")
    ap.add_argument("--fp32-attention", action="store_true",
                    help="bf16-stream forms attend in float32 too (`use_fp32_attention`, as the served variants do)")
    ap.add_argument("--kl-texts", type=int, default=16,
                    help="also KL to fp32 on this many GSM8K train texts (used by no evaluation; 0: skip)")
    a = ap.parse_args()
    import torch

    from leanml.serve.variants.llm import load_smollm2
    from leanml.serve.variants.llm_quality import paired_delta, perplexity_kl, sst2_accuracy
    from leanml.serve.variants.llm_weight_only import quantize_weight_only

    torch.set_num_threads(1)
    base, tok = load_smollm2()
    from leanml.serve.variants.llm_attention import use_fp32_attention
    from leanml.serve.variants.llm_quant import calibration_texts

    texts, ref_cache = (calibration_texts(a.kl_texts) if a.kl_texts else []), {}

    def kl(m) -> float:  # noqa: ANN001
        return perplexity_kl(m, tok, base, texts=texts, ref_cache=ref_cache)["kl_to_fp32"]

    ref = sst2_accuracy(base, tok, n=a.n)
    print(f"fp32: accuracy {ref['sst2_accuracy']} (n = {ref['sst2_n']})", flush=True)
    for name in a.variants.split(","):
        if name not in RECIPES and name not in SMOOTHED:
            raise SystemExit(f"--variants: unknown {name!r}; choose from {sorted({**RECIPES, **SMOOTHED})}")
        m = copy.deepcopy(base)
        if name in SMOOTHED:
            from leanml.serve.variants.llm_quant import activation_ranges, calibration_texts, smooth

            smooth(m, activation_ranges(m, calibration_texts(32), tok), SMOOTHED[name])
            m = quantize_weight_only(m, 8)
        elif RECIPES[name] is not None:
            bits, group, head, f32 = RECIPES[name]
            m = quantize_weight_only(m, bits, group=group, head_bits=head, float32_stream=f32)
        else:
            m = m.to(torch.bfloat16)
        if a.fp32_attention:
            m = use_fp32_attention(m)  # a float32 model is left as it is
        r = sst2_accuracy(m, tok, n=a.n)
        d = paired_delta(r["sst2_correct"], ref["sst2_correct"])
        print(f"{name}: accuracy {r['sst2_accuracy']}, change {d['delta_points']:+.2f} points "
              f"(paired 95% CI {d['delta_ci_points'][0]:+.2f} to {d['delta_ci_points'][1]:+.2f}; "
              f"lost {d['lost']}, gained {d['gained']})" + (f"; KL to fp32 on {len(texts)} GSM8K train texts "
                                                           f"{kl(m):.5f}" if texts else ""), flush=True)


if __name__ == "__main__":
    main()
