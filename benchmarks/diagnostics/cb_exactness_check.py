"""Continuous batching against generating alone for the 16-bit SmolLM2 variants, with bf16 and float32 attention.

    OMP_NUM_THREADS=1 python benchmarks/diagnostics/cb_exactness_check.py     # ~2 min

Backs docs/serve.md, "Continuous batching with these variants": the exactness test's five prompts and limits
(`tests/serve/dataplane/test_generation_cb.py`, which covers fp32), generated alone and by the CB engine at
(2 rows, 7-token chunks) and (4 rows, 256-token chunks). Prints, per variant and attention, how many of the
five requests got exactly the tokens they get alone.
"""

from __future__ import annotations

import copy

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "2+2=?",
           "Name three colours, and say which one you like best and why.", "Hi"]
LIMITS = [(6, None, None), (3, None, None), (8, 4, None), (5, None, 20), (4, None, None)]  # (max, min, KV cap)


def main() -> None:
    import torch

    from leanml.serve.dataplane.generation import ContinuousBatcher
    from leanml.serve.variants.llm import CausalLM, load_smollm2, variant_model
    from leanml.serve.variants.llm_weight_only import quantize_weight_only

    torch.set_num_threads(1)
    base, tok = load_smollm2()
    builds = {  # the served variants attend in float32; the "bf16 attention" forms are the same without it
        ("bf16", "float32"): lambda: variant_model(base, "bf16"),
        ("int8_wo", "float32"): lambda: variant_model(base, "int8_wo"),
        ("int4_wo", "float32"): lambda: variant_model(base, "int4_wo"),
        ("bf16", "bf16"): lambda: copy.deepcopy(base).to(torch.bfloat16),
        ("int8_wo", "bf16"): lambda: quantize_weight_only(copy.deepcopy(base), 8),
        ("int4_wo", "bf16"): lambda: quantize_weight_only(copy.deepcopy(base), 4, group=32, head_bits=8),
    }
    for (name, attention), build in builds.items():
        lm = CausalLM(build(), tok, 6)
        ids = [lm._ids(p) for p in PROMPTS]
        alone = [lm.generate_ids([i], [m], [cap], [mn] if mn else None)[0]
                 for i, (m, mn, cap) in zip(ids, LIMITS, strict=True)]
        got = []
        for rows, chunk in ((2, 7), (4, 256)):
            cb = ContinuousBatcher(lm, max_batch=rows, prefill_chunk=chunk)
            seqs = cb.run([cb.sequence(i, m, cap, mn) for i, (m, mn, cap) in zip(ids, LIMITS, strict=True)])
            got.append(sum(a == s.tokens for a, s in zip(alone, seqs, strict=True)))
        print(f"{name}, {attention} attention: same tokens as alone for {got[0]} of 5 at (2 rows, chunk 7), "
              f"{got[1]} of 5 at (4 rows, chunk 256)", flush=True)


if __name__ == "__main__":
    main()
