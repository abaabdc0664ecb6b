"""What the compiled planning kernels (`leanml.store.kernels`) cost before their first query.

    OMP_NUM_THREADS=1 python benchmarks/diagnostics/kernels_compile_check.py     # ~30 s

Backs docs/query.md ("The per-query loops are compiled"). Each figure is measured in a fresh child process:

1. ``import leanml.store``: its time, and whether it loaded numba (it should not: the kernels are imported
   where they are used).
2. ``import numba`` after numpy and torch.
3. Importing the kernels module (numba with it) and the first call of every kernel, with an empty numba cache
   directory (compiling them), then the same in a second process reading that directory (loading them).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

IMPORT_STORE = """
import sys, time
t = time.perf_counter()
import leanml.store
print(f"{time.perf_counter() - t:.3f} {'numba' in sys.modules}")
"""

IMPORT_NUMBA = """
import time
import numpy, torch
t = time.perf_counter()
import numba
print(f"{time.perf_counter() - t:.3f}")
"""

FIRST_CALLS = """
import time
import numpy as np
import leanml.store  # not timed: item 1
t = time.perf_counter()
from leanml.store import kernels as K  # numba and the kernels module
rng = np.random.default_rng(0)
S = rng.random((2, 50)).astype(np.float32)
sizes, ml = np.full(50, 10), np.arange(50) % 3
edges = np.array([1.0, 2.0])
K.coarse(rng.random((2, 8)).astype(np.float32), rng.random((50, 8)).astype(np.float32), sizes, ml, 4, 0.1, edges)
K.coarse_stats(S, sizes, ml, 4, 0.1, edges)
K.walk(S, sizes, ml, 5, 2, 5)
K.bands(S, 0.1, edges)
K.difficulty(S, 0.1)
for dtype in (np.float32, np.float64):
    x = rng.random((3, 8)).astype(dtype)
    K.unit_rows_into(x, 1.0, np.empty((3, 8), np.float32), 0)
K.first_kept(S, np.zeros((2, 50), np.int64), np.ones(10, np.uint8), 3, np.arange(100))
print(f"{time.perf_counter() - t:.3f}")
"""


def child(code: str, env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def main() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    t, loaded = child(IMPORT_STORE, env).split()
    print(f"import leanml.store: {t} s, numba loaded: {loaded}")
    print(f"import numba after numpy and torch: {child(IMPORT_NUMBA, env)} s")
    with tempfile.TemporaryDirectory() as cache:
        env["NUMBA_CACHE_DIR"] = cache
        print(f"first call of every kernel, empty cache (compiles): {child(FIRST_CALLS, env)} s")
        print(f"the same in a new process, cache filled (loads): {child(FIRST_CALLS, env)} s")


if __name__ == "__main__":
    main()
