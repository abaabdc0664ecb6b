"""What does the gradient store cost on disk, how fast does it fill, how fast are queries, and what do codecs lose?

1. Bytes per example per codec at k = 8192 against LESS's float32 ``torch.save`` chunks (measured by
   saving a chunk with torch.save, as LESS's collect_grads does).
2. Ingest MB/s (float32 input bytes per second) per codec: encode, write, fsync, rename, commit.
3. Exact top-k latency for 10^4 .. 10^6 rows (synthetic rows, int8, d = 1024 so 10^6 rows fit the
   disk), 16 queries, k = 10; and FAISS IVF latency and recall@10 against exact search. Next to each
   measured time, the query planner's prediction (`leanml.store.plan`, leanml.hw's cost model) for this
   machine: ``--host ID`` names a calibrated device, default: a quick in-process calibration at the
   benchmark's torch threads.
4. Selection overlap per codec on real features: digits MLP after a 2-epoch warm-up, Adam-type
   training features (k = 2048, two checkpoints) and SGD features of 100 test examples as the target;
   LESS top-5% from each codec against fp32, and the downstream effect: digits test accuracy (the other
   349 test rows) of the quick suite's MLP trained on each codec's selection (mean of 3 seeds).

    python benchmarks/store_bench.py [--quick] [--host local|dev_vm|...] [--out FILE]

5. zstd (``zstandard``, level 3) over the int8 codes of the same real features, for comparison with int4.

Headline keys: ``int8_size_ratio`` (LESS float32 .pt bytes/example over the int8 store's, ids
included), ``int8_top5_overlap``, ``int4_size_ratio`` and ``int2_size_ratio`` (fp32 store bytes/example
over the int4/int2 store's, ids included), ``int4_top5_overlap``, ``int2_top5_overlap``,
``onebit_top5_overlap``. Targets: int8 ratio >= 4 with overlap >= 0.9 (issue 3); int4 ratio >= 7.5
with overlap >= 0.9 (issue 17, QLESS).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from leanml.io import atomic_write_text
from leanml.store import CODECS, FaissIndex, GradientStore, recall_at_k, topk
from leanml.store.plan import plan_search

RESULTS = Path(__file__).parent / "results" / "store_bench.json"
SPEC = {"projection": {"type": "synthetic", "dim": 0, "seed": 0}}


def less_pt_bytes_per_example(d: int, n: int = 256) -> float:
    buf = io.BytesIO()
    torch.save(torch.randn(n, d), buf)
    return len(buf.getvalue()) / n


def sizes_and_ingest(tmp: Path, d: int, n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d)).astype(np.float32)
    rows = []
    for name in CODECS:
        st = GradientStore.create(tmp / f"ingest-{name}", dim=d, codec=name, spec=SPEC, model="synthetic")
        t0 = time.perf_counter()
        for a in range(0, n, 256):
            st.append(np.arange(a, min(n, a + 256)), x[a : a + 256])
        dt = time.perf_counter() - t0
        rows.append({"codec": name, "bytes_per_example": st.bytes_per_example(),
                     "disk_bytes_per_example": st.disk_bytes() / n, "ingest_mb_s": x.nbytes / dt / 1e6})
        shutil.rmtree(tmp / f"ingest-{name}")
    return rows


def topk_latency(tmp: Path, sizes: list[int], d: int, ann_max: int, host) -> list[dict]:  # noqa: ANN001
    rng = np.random.default_rng(1)
    centers = rng.standard_normal((64, d)).astype(np.float32)
    Q = (centers[rng.integers(0, 64, 16)] + rng.standard_normal((16, d)).astype(np.float32))
    out = []
    st = GradientStore.create(tmp / "lat", dim=d, codec="int8", spec=SPEC, model="synthetic")
    have = 0
    for n in sizes:
        while have < n:  # grow the same store: clustered rows (gradients are not isotropic)
            m = min(50_000, n - have)
            x = centers[rng.integers(0, 64, m)] + rng.standard_normal((m, d)).astype(np.float32)
            st.append(np.arange(have, have + m), x)
            have += m
        times = []
        for _ in range(2):  # first call, then a warm one; the prediction is for an undisturbed warm run
            t0 = time.perf_counter()
            exact, _ = topk(st, Q, 10, block_rows=65536, device="cpu")
            times.append(time.perf_counter() - t0)
        row = {"rows": n, "exact_topk_s": times[0], "exact_topk_best_s": min(times), "disk_mb": st.disk_bytes() / 1e6}
        plan = plan_search(st, len(Q), 10, host=host, recall=0.9, ivf_recall=1.0)  # every candidate costed
        cand = {c.name: c for c in plan.candidates}
        row["predicted_exact_topk_s"] = cand["exact-cpu"].time_s
        row["exact_predicted_over_measured"] = cand["exact-cpu"].time_s / row["exact_topk_best_s"]
        row["predicted_ivf_build_s"] = cand["ivf"].breakdown["build"]
        row["predicted_ivf_query_s"] = cand["ivf"].breakdown["query"]
        if n <= ann_max:
            t0 = time.perf_counter()
            idx = FaissIndex(st, "ivf", nprobe=16)
            row["ivf_build_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            approx, _ = idx.search(Q, 10)
            row["ivf_query_s"] = time.perf_counter() - t0
            row["ivf_recall_at_10"] = recall_at_k(approx, exact)
            del idx
        out.append(row)
    return out


def zstd_int8(x: np.ndarray, level: int = 3) -> dict[str, float]:
    """zstd (the ``zstandard`` package) over int8 codes + scales of real rows ``x``: bytes/example (ids included),
    and decompression MB/s of the codes; None where the package is not installed."""
    try:
        import zstandard
    except ImportError:
        return {"zstd_int8_bytes_per_example": None, "zstd_note": "zstandard not installed (pip install zstandard)"}
    codes, aux = CODECS["int8"].encode(x)
    raw = codes.tobytes() + aux.tobytes()
    comp = zstandard.ZstdCompressor(level=level).compress(raw)
    t0 = time.perf_counter()
    for _ in range(5):
        zstandard.ZstdDecompressor().decompress(comp)
    dt = (time.perf_counter() - t0) / 5
    return {"zstd_int8_bytes_per_example": len(comp) / len(x) + 8, "int8_bytes_per_example_real": len(raw) / len(x) + 8,
            "zstd_level": level, "zstd_decompress_mb_s": len(raw) / dt / 1e6}


def selection_overlap(tmp: Path) -> tuple[dict[str, float], dict[str, float]]:
    from leanml.grads.recipes import ExtractSpec, warmup
    from leanml.store.extract import extract

    spec = ExtractSpec(dataset="digits", model="mlp", projector="dense", dim=2048, batch_size=256, hidden=(64,),
                       grad_type="adam")
    spec = warmup(spec, tmp / "ck", epochs=2)
    tspec = ExtractSpec(**{**spec.__dict__, "split": "test", "grad_type": "sgd", "limit": 100})
    model, _ = tspec.build_model()
    target = np.stack([torch.cat([gc.features(b) for _, b in tspec.batches()]).numpy()
                       for _, _, gc in tspec.computers(model)])
    ref = extract(spec, tmp / "sel-fp32")
    sel = {}
    for name in CODECS:
        st = ref
        if name != "fp32":
            m = ref.manifest
            st = GradientStore.create(tmp / f"sel-{name}", dim=m.dim, codec=name, spec=m.spec, model=m.model,
                                      grad_type=m.grad_type, checkpoints=[(c.name, c.weight) for c in m.checkpoints])
            for c in st.checkpoint_names():
                st.append(*ref.features(c), checkpoint=c)
        st.add_task("digits-test", target)
        sel[name] = st.select("digits-test", 0.05)[0]
    zs = zstd_int8(np.concatenate([ref.features(c)[1] for c in ref.checkpoint_names()]))
    zs["downstream"] = downstream_accuracy(spec, sel)
    ov = {name: len(set(s.tolist()) & set(sel["fp32"].tolist())) / len(sel["fp32"]) for name, s in sel.items()}
    return ov, zs


def downstream_accuracy(spec, sel: dict[str, np.ndarray], seeds: int = 3) -> dict[str, float]:  # noqa: ANN001
    """Digits test accuracy (the rows after the 100 target rows) of the quick suite's MLP 64-128-10 trained
    30 epochs on each codec's LESS top-5% selection, mean over ``seeds`` training seeds."""
    from leanml.grads.recipes import ExtractSpec
    from leanml.models import build_mlp
    from leanml.select import TorchClassifierLearner, TrainConfig

    tr, te = spec.load_split(), ExtractSpec(**{**spec.__dict__, "split": "test"}).load_split()
    pos = {int(i): r for r, i in enumerate(np.asarray(tr.ids))}
    learner = TorchClassifierLearner(lambda s: build_mlp(64, 10, (128,), seed=s), 10,
                              TrainConfig(epochs=30, batch_size=32, lr=2e-3))
    out = {}
    for name, ids in sel.items():
        rows = np.array([pos[int(i)] for i in ids])
        accs = []
        for seed in range(seeds):
            model = learner.new_model(seed)
            learner.fit(model, tr.X[rows], tr.y[rows], seed=seed)
            accs.append(learner.evaluate(model, te.X[100:], te.y[100:]))
        out[name] = float(np.mean(accs))
    return out



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (< 1 min)")
    ap.add_argument("--tmp", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--host", default=None, help="calibrated device id of this machine for the predictions "
                    "(default: calibrate it in-process, quick, at the current torch threads)")
    ap.add_argument("--out", default=str(RESULTS), help=f"results JSON (default {RESULTS})")
    a = ap.parse_args()
    if a.host is None:
        from leanml.hw.calibrate import calibrate

        host = calibrate(quick=True)
    else:
        from leanml.hw import get_device

        host = get_device(a.host)
    tmp = Path(a.tmp or tempfile.mkdtemp(prefix="leanml-store-bench-"))
    d = 8192
    n_ingest = 1024 if a.quick else 8192
    sizes = [10_000, 100_000] if a.quick else [10_000, 100_000, 1_000_000]
    ann_max = 10_000 if a.quick else 100_000  # IVF training at 10^6 takes too long on 2 cores
    try:
        less_b = less_pt_bytes_per_example(d)
        ing = sizes_and_ingest(tmp, d, n_ingest)
        lat = topk_latency(tmp, sizes, 1024, ann_max, host)
        ov, zs = selection_overlap(tmp)
    finally:
        if a.tmp is None:
            shutil.rmtree(tmp, ignore_errors=True)
    for r in ing:
        r["vs_less_pt"] = less_b / r["bytes_per_example"]
        r["top5_overlap_vs_fp32"] = ov[r["codec"]]
        r["downstream_accuracy"] = zs["downstream"][r["codec"]]
    print(f"LESS float32 .pt: {less_b:.0f} bytes/example at k={d}")
    print(f"{'codec':>6} | {'B/example':>10} | {'x smaller':>9} | {'ingest MB/s':>11} | {'top5% overlap':>13} | "
          f"{'downstream acc':>14}")
    for r in ing:
        print(f"{r['codec']:>6} | {r['bytes_per_example']:>10} | {r['vs_less_pt']:>9.2f} | {r['ingest_mb_s']:>11.1f} | "
              f"{r['top5_overlap_vs_fp32']:>13.3f} | {r['downstream_accuracy']:>14.4f}")
    print(f"{'rows':>9} | {'exact top-10 s (best of 2)':>26} | {'predicted s':>11} | {'ivf build s':>11} | "
          f"{'predicted':>9} | {'ivf query s':>11} | {'predicted':>9} | {'ivf recall@10':>13}")
    nan = float("nan")
    for r in lat:
        print(f"{r['rows']:>9} | {r['exact_topk_best_s']:>26.3f} | {r['predicted_exact_topk_s']:>11.3f} | "
              f"{r.get('ivf_build_s', nan):>11.2f} | {r['predicted_ivf_build_s']:>9.2f} | "
              f"{r.get('ivf_query_s', nan):>11.4f} | {r['predicted_ivf_query_s']:>9.4f} | "
              f"{r.get('ivf_recall_at_10', nan):>13.3f}")
    by = {r["codec"]: r for r in ing}
    zb = zs["zstd_int8_bytes_per_example"]
    print("zstd-int8 on the real features (k=2048): "
          + (zs["zstd_note"] if zb is None else f"{zb:.0f} bytes/example against int8's "
             f"{zs['int8_bytes_per_example_real']:.0f} ({zs['int8_bytes_per_example_real'] / zb:.2f}x), "
             f"decompress {zs['zstd_decompress_mb_s']:.0f} MB/s"))
    result = {
        "benchmark": "store_bench", "quick": a.quick, "k": d,
        "int8_size_ratio": by["int8"]["vs_less_pt"], "int8_top5_overlap": ov["int8"],
        "int4_size_ratio": by["fp32"]["bytes_per_example"] / by["int4"]["bytes_per_example"],
        "int4_top5_overlap": ov["int4"],
        "int2_size_ratio": by["fp32"]["bytes_per_example"] / by["int2"]["bytes_per_example"],
        "int2_top5_overlap": ov["int2"],
        "onebit_top5_overlap": ov["sign1"], "zstd_int8": zs,
        "less_pt_bytes_per_example": less_b, "codecs": ing, "topk_latency": lat,
        "prediction_host": {"id": host.id, "name": host.name, "peak_source": host.peak_source,
                            "torch_threads": torch.get_num_threads(),
                            "note": "leanml.store.plan predictions; shards in the page cache; FAISS threads as "
                                    "the calibration's torch threads"},
        "overlap_data": "digits MLP, 2-epoch warm-up, adam train features k=2048, 2 checkpoints, 100 test targets",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=1, default=float) + "\n")
    print(json.dumps({k: result[k] for k in ("benchmark", "quick", "int8_size_ratio", "int8_top5_overlap",
                                             "int4_size_ratio", "int4_top5_overlap", "int2_size_ratio",
                                             "int2_top5_overlap", "onebit_top5_overlap")}, default=float))


if __name__ == "__main__":
    main()
