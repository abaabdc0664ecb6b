"""Does a mixed iteration of the live CB engine cost more than its parts? (the simulator prices it as the sum)

    OMP_NUM_THREADS=1 python benchmarks/diagnostics/llm_iteration_cost_check.py     # ~1 min

Backs docs/planner.md, "Live on loopback" of the 2026-12-07 run: for dynamic int8 and `int8_wo`, the engine's
decode-only iteration at 4 rows (`llm_live.engine_decode_ms`) and its 64-token chunked-prefill pass
(`llm_live.engine_prefill_chunk_ms`), against iterations of the engine carrying both (4 rows decoding while
256-token prompts arrive every 4 iterations). Prints each iteration's ms; the ones where a prompt completes and
joins the batch are marked.
"""

from __future__ import annotations

import statistics
import time


def main() -> None:
    import torch

    from leanml.serve.dataplane.generation import ContinuousBatcher
    from leanml.serve.sim.llm_live import engine_decode_ms, engine_prefill_chunk_ms
    from leanml.serve.variants.llm import CausalLM, load_smollm2, variant_model

    torch.set_num_threads(1)
    base, tok = load_smollm2()
    for v in ("int8", "int8_wo"):
        lm = CausalLM(variant_model(base, v), tok)
        ids = lm._ids(" ".join(["The history of Rome is long and full of emperors and wars."] * 60))
        dec = engine_decode_ms(lm, ids[:200], 4)
        pre = engine_prefill_chunk_ms(lm, ids[:256], 64)
        cb = ContinuousBatcher(lm, max_batch=8, prefill_chunk=64)
        cb.add([cb.sequence(ids[:200], 60, min_new_tokens=60) for _ in range(4)])
        while len(cb.rows) < 4:
            cb.step()
        ts = []
        for k in range(12):
            if k % 4 == 0:
                cb.add([cb.sequence(ids[300:556], 2, min_new_tokens=2)])
            rows = len(cb.rows)
            t0 = time.perf_counter()
            cb.step()
            ts.append(((time.perf_counter() - t0) * 1000, len(cb.rows) > rows))
        shown = ", ".join(f"{t:.0f}{'*' if joined else ''}" for t, joined in ts)
        print(f"{v}: decode step at 4 rows {dec:.1f} ms + 64-token chunk pass {pre:.1f} ms = {dec + pre:.1f}; "
              f"mixed iterations (* a prompt joined) {shown}; median {statistics.median(t for t, _ in ts):.1f}")


if __name__ == "__main__":
    main()
