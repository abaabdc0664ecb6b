"""SST-2 accuracy change of bf16 and weight-only SmolLM2 variants against float32, paired over the same sentences.

    OMP_NUM_THREADS=1 python benchmarks/diagnostics/sst2_weight_only_check.py --variants bf16,w8_head16,w4_head16

Backs docs/serve.md, "SmolLM2 weight-only int8 / int4": whether keeping ``lm_head`` in bf16 recovers the
SST-2 points that ``int8_wo`` loses (it recovers about half). ``w8`` / ``w4`` quantize every linear
(``lm_head`` int8 / int4 g32), the ``_head16`` forms keep ``lm_head`` bf16, ``w8_smooth50`` / ``w8_smooth25``
fold SmoothQuant scales (alpha 0.5 / 0.25, 32 GSM8K calibration texts) into the float model before ``w8``.
All keep transformers' bf16 attention, as when the docs' figures were taken. Prints one line per variant.

    OMP_NUM_THREADS=1 python benchmarks/diagnostics/sst2_weight_only_check.py --variants w8_smooth50,w8_smooth25
"""

from __future__ import annotations

import argparse
import copy

RECIPES = {"bf16": None, "w8": (8, 32, None), "w8_head16": (8, 32, 16), "w4": (4, 32, None),
           "w4_head16": (4, 32, 16), "w4_head8": (4, 32, 8)}  # (bits, int4 group, head bits)
SMOOTHED = {"w8_smooth50": 0.5, "w8_smooth25": 0.25}  # SmoothQuant-style scales folded in first, then w8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="bf16,w8_head16,w4_head16", help=f"from {sorted({**RECIPES, **SMOOTHED})}")
    ap.add_argument("--n", type=int, default=872, help="GLUE-dev sentences (872 = all)")
    a = ap.parse_args()
    import torch

    from leanml.serve.variants.llm import load_smollm2
    from leanml.serve.variants.llm_quality import paired_delta, sst2_accuracy
    from leanml.serve.variants.llm_weight_only import quantize_weight_only

    torch.set_num_threads(1)
    base, tok = load_smollm2()
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
            bits, group, head = RECIPES[name]
            m = quantize_weight_only(m, bits, group=group, head_bits=head)
        else:
            m = m.to(torch.bfloat16)
        r = sst2_accuracy(m, tok, n=a.n)
        d = paired_delta(r["sst2_correct"], ref["sst2_correct"])
        print(f"{name}: accuracy {r['sst2_accuracy']}, change {d['delta_points']:+.2f} points "
              f"(paired 95% CI {d['delta_ci_points'][0]:+.2f} to {d['delta_ci_points'][1]:+.2f}; "
              f"lost {d['lost']}, gained {d['gained']})", flush=True)


if __name__ == "__main__":
    main()
