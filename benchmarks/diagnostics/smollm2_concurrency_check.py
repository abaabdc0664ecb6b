"""Does a second model thread add throughput for SmolLM2 generation here? (int8, batch 4, 32 tokens)

    LEANML_DATA=... OMP_NUM_THREADS=1 python benchmarks/diagnostics/smollm2_concurrency_check.py
"""

from __future__ import annotations

import threading
import time

import torch

from leanml.serve.variants import build_family

torch.set_num_threads(1)
fam = build_family("smollm2", {}, ["int8"])
m = fam.variants["int8"].model
items = [[q] for q in fam.sample_inputs(4, 0)]
knobs = [{"max_new_tokens": 32, "min_new_tokens": 32}] * 4
m.run(items, knobs)  # warm-up


def one() -> float:
    t0 = time.perf_counter()
    m.run(items, knobs)
    return time.perf_counter() - t0


print("one call at a time, s:", [round(one(), 2) for _ in range(3)])
res: list[float] = []
threads = [threading.Thread(target=lambda: res.extend(round(one(), 2) for _ in range(2))) for _ in range(2)]
t0 = time.perf_counter()
for t in threads:
    t.start()
for t in threads:
    t.join()
print("two threads, s per call:", res, "wall for 4 calls:", round(time.perf_counter() - t0, 2))
