"""How good are leanml's attributions? Linear datamodeling score (LDS) against traker and dattri.

Protocol (the TRAK paper's and dattri's): M models (default 50) are retrained from the same
initialisation on random 50% subsets of the training set; each one's correct-class margin
``log(p/(1-p))`` on T held-out test examples is the ground truth; an attribution matrix ``(T, N)``
predicts subset m's margin as the sum of its rows over the subset; LDS is the Spearman correlation
of predicted and actual margins across the M subsets, averaged over the T examples, with a 95%
bootstrap interval over examples (`leanml.grads.lds`). dattri's ``dattri.metric.lds`` is run on
leanml's scores as a cross-check (``lds_dattri_metric_leanml`` must equal ``lds_leanml``). The
retraining driver is leanml's (`leanml.grads.lds.retrain_outputs` around the setup's Learner.fit),
adapted from dattri's ``retrain_lds`` (which saves models to disk); its subsets are dattri's kind
(uniform without replacement, half the data).

Setups (real data from LEANML_DATA):
  digits-logreg: multinomial logistic regression on scikit-learn's digits (1,348 train, 100 test);
  cifar10-cnn:   leanml.models.build_cnn(width=8) (BatchNorm in eval mode for gradients) on a
                 CIFAR-10 subset (1,000 train, 100 test; --quick: 300).
Attributed model: one training run of the setup's Learner on the full training set; its epoch-end
checkpoints are the ensemble every method uses (traker, dattri and leanml see the same weights).

leanml TRAK (`leanml.select.TrakSelector.attributions`) with the library defaults, unchanged
(`leanml.grads.defaults`, docs/store.md "Defaults"): gradients of the margin f = log(p/(1-p)),
projected to k = 1024 by the "auto" rule (factorized on Linear-only models, so digits' 650-parameter
logistic regression keeps its exact gradient; dense Rademacher JL for the CNN); per checkpoint, the
kernel inverse ``(Phi^T Phi + lambda I)^-1`` with lambda = 0.1 x mean eigenvalue (kronfluence's
heuristic damping, fixed in advance, not tuned here); averaged over checkpoints; times TRAK's
Q = mean over checkpoints of 1 - p. That row is the headline ``lds_leanml``. For reference only, the
damping sensitivity is measured on disjoint validation examples (never the test examples) and the
test LDS at the validation-best damping is a second row. LESS-style cosine (reference):
`leanml.select.targeted.less_scores` per held-out example (lr-weighted cosine of Adam-preconditioned
training gradients and SGD held-out gradients, summed over checkpoints). The peers project to the same
k = 1024 and to k = 512 (their own projectors; each is a row; at k >= N their undamped kernels are
singular, so k = 512 is the fair setting for them on these sizes), and the best row of each is used.

    python benchmarks/attribution_quality.py [--quick] [--subsets 50] [--setups digits-logreg,cifar10-cnn]

Run it with the peers installed (``pip install -e .[peers-attr]``); a missing peer becomes a row
saying so. Headline (last line): per setup ``lds_leanml`` (library defaults), ``lds_traker``,
``lds_best_peer`` (the best of traker and dattri's attributors) with their 95% intervals.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import attribution_peers as peers  # noqa: E402
from leanml.grads.defaults import PROJECTION_DIM  # noqa: E402
from leanml.grads.lds import lds, retrain_outputs, subset_masks  # noqa: E402
from leanml.io import atomic_write, atomic_write_text  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "attribution_quality.json"
PEER_DIMS = (512, PROJECTION_DIM)  # the peers project to leanml's k and to 512 (< N: their undamped kernel inverts)
RIDGES = (1e-3, 1e-2, 1e-1, 0.3, 1.0, 3.0, 10.0)  # damping sensitivity grid (reference), x the mean eigenvalue


@dataclass
class Setup:
    name: str
    learner: Any
    Xtr: np.ndarray
    ytr: np.ndarray
    Xte: np.ndarray
    yte: np.ndarray
    Xval: np.ndarray  # disjoint held-out examples on which the TRAK damping is chosen
    yval: np.ndarray
    desc: str


def build_setup(name: str, quick: bool, n_test: int) -> Setup:
    from leanml.data import load
    from leanml.models import build_cnn, build_mlp
    from leanml.select.learner import TorchClassifierLearner, TrainConfig

    if name == "digits-logreg":
        tr, te = load("digits", "train"), load("digits", "test")
        lr = TorchClassifierLearner(lambda s: build_mlp(64, 10, hidden=(), seed=0), 10,
                             TrainConfig(epochs=8, batch_size=64, lr=0.05))
        return Setup(name, lr, tr.X, tr.y, te.X[:n_test], te.y[:n_test], te.X[n_test : 2 * n_test],
                     te.y[n_test : 2 * n_test], "logistic regression 64->10, Adam lr 0.05, 8 epochs, batch 64")
    if name == "cifar10-cnn":
        n = 200 if quick else 1000
        tr, te = load("cifar10", "train"), load("cifar10", "test")
        rng = np.random.default_rng(0)
        itr = np.sort(rng.choice(len(tr), n, replace=False))
        ite = rng.choice(len(te), 2 * n_test, replace=False)
        ite, iva = np.sort(ite[:n_test]), np.sort(ite[n_test:])
        epochs = 3 if quick else 8
        lr = TorchClassifierLearner(lambda s: build_cnn(10, 3, width=8, seed=0), 10,
                             TrainConfig(epochs=epochs, batch_size=64, lr=3e-3))
        return Setup(name, lr, np.asarray(tr.X[itr], np.float32), tr.y[itr], np.asarray(te.X[ite], np.float32),
                     te.y[ite], np.asarray(te.X[iva], np.float32), te.y[iva],
                     f"build_cnn(width=8), {n} train, Adam lr 3e-3, {epochs} epochs, batch 64")
    raise SystemExit(f"--setups: unknown setup {name!r}; choose from digits-logreg, cifar10-cnn")


def margins(learner: Any, model: torch.nn.Module, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """TRAK's output f = log(p / (1 - p)) of the labelled class = logit_y - logsumexp of the others."""
    lg = learner.logits(model, X).double()
    yt = torch.as_tensor(np.asarray(y))
    other = lg.clone()
    other[torch.arange(len(yt)), yt] = -torch.inf
    return (lg[torch.arange(len(yt)), yt] - other.logsumexp(1)).numpy()


def ground_truth(s: Setup, masks: np.ndarray, cache: bool) -> tuple[np.ndarray, bool, float]:
    """Margins ``(M, T + V)`` (test, then validation examples) of models retrained on each subset
    (cached by setup, data and masks)."""
    from leanml.data.root import cache_dir

    key = hashlib.sha1(b"".join([s.desc.encode(), masks.tobytes(), s.Xtr[:50].tobytes(), s.yte.tobytes(),
                               s.yval.tobytes()]))
    path = cache_dir("attribution_quality") / f"{s.name}-gt-{key.hexdigest()[:16]}.npz"
    if cache and path.exists():
        return np.load(path)["outputs"], True, 0.0

    def train_and_eval(idx: np.ndarray) -> np.ndarray:
        model = s.learner.new_model(0)
        s.learner.fit(model, s.Xtr[idx], s.ytr[idx], seed=0)
        return margins(s.learner, model, np.concatenate([s.Xte, s.Xval]), np.concatenate([s.yte, s.yval]))

    t0 = time.perf_counter()
    out = retrain_outputs(masks, train_and_eval)
    secs = time.perf_counter() - t0
    atomic_write(path, lambda f: np.savez(f, outputs=out))
    return out, False, secs


def leanml_methods(s: Setup, masks: np.ndarray, val_outputs: np.ndarray
                   ) -> tuple[dict[str, np.ndarray], dict[str, float], list[dict], list[float], dict, int]:
    """leanml's TRAK (default damping, and damping chosen on validation examples) and LESS-style cosine
    on the setup's training run; returns the checkpoints used, the validation LDS per damping and the
    dimension of TRAK's features."""
    from leanml.select import Pool, Target
    from leanml.select.features import MatrixFeatures
    from leanml.select.targeted import LessSelector, TrakSelector, less_scores

    epochs = s.learner.config.epochs
    pool = Pool(s.Xtr, s.ytr, learner=s.learner, name=s.name)
    target = Target(X=s.Xte, y=s.yte)
    out, secs = {}, {}
    t0 = time.perf_counter()
    trak = TrakSelector(seed=0, warmup_fraction=1.0, warmup_epochs=epochs)  # library defaults
    name = f"leanml TRAK (ridge {trak.ridge:g}, library defaults)"
    out[name] = trak.attributions(pool, target, target_output="margin")
    secs[name] = time.perf_counter() - t0
    # the damping chosen by LDS on the disjoint validation examples (never on the test examples)
    t0 = time.perf_counter()
    val = Target(X=s.Xval, y=s.yval)
    val_lds = {}
    for r in RIDGES:
        Av = TrakSelector(seed=0, warmup_fraction=1.0, warmup_epochs=epochs, ridge=r).attributions(
            pool, val, target_output="margin")
        val_lds[r] = lds(Av, masks, val_outputs).mean
    best = max(val_lds, key=val_lds.get)
    secs_val = time.perf_counter() - t0
    t0 = time.perf_counter()
    heur = "leanml TRAK (ridge 0.1, kronfluence's heuristic; reference)"
    out[heur] = TrakSelector(seed=0, warmup_fraction=1.0, warmup_epochs=epochs, ridge=0.1).attributions(
        pool, target, target_output="margin")
    secs[heur] = time.perf_counter() - t0
    t0 = time.perf_counter()
    name = f"leanml TRAK (ridge {best:g}, best on validation; reference)"
    out[name] = TrakSelector(seed=0, warmup_fraction=1.0, warmup_epochs=epochs, ridge=best).attributions(
        pool, target, target_output="margin")
    secs[name] = time.perf_counter() - t0 + secs_val
    t0 = time.perf_counter()
    less = LessSelector(seed=0, warmup_fraction=1.0, warmup_epochs=epochs)
    pf = less.pool_features(pool, kind="adam", output="loss")
    tf = less.target_features(pool, target, output="loss")
    rows = [less_scores(pf, MatrixFeatures([tf.rows(c)[t : t + 1] for c in range(tf.n_checkpoints)],
                                           tf.checkpoint_weights), np.array(["t"])) for t in range(len(s.Xte))]
    out["leanml LESS-style cosine"] = np.stack(rows)
    secs["leanml LESS-style cosine"] = time.perf_counter() - t0
    warm = [v for v in pool.cache.values() if isinstance(v, dict) and "checkpoints" in v]
    if len(warm) != 1:
        raise RuntimeError("attribution_quality: expected the selectors to share one warm-up run")
    cks = warm[0]["checkpoints"]
    dim = trak.trak_pool_features(pool).rows(0).shape[1]
    return out, secs, [c.model_state for c in cks], [c.lr for c in cks], val_lds, dim


def peer_methods(s: Setup, ckpts: list[dict], lrs: list[float]) -> tuple[dict, dict, dict]:
    factory = lambda: s.learner.new_model(0)  # noqa: E731
    args = (factory, ckpts, s.Xtr, s.ytr, s.Xte, s.yte)
    runs: dict[str, Callable[[], Any]] = {}
    for k in PEER_DIMS:
        runs[f"traker TRAKer (k {k})"] = lambda k=k: peers.traker_trak(*args, k)
        runs[f"dattri TRAK (k {k})"] = lambda k=k: peers.dattri_trak(*args, k)
        runs[f"dattri TracIn (k {k})"] = lambda k=k: peers.dattri_tracin(factory, ckpts, lrs, s.Xtr, s.ytr, s.Xte,
                                                                          s.yte, k)
    runs["dattri IF"] = lambda: peers.dattri_if(*args)
    out, secs, notes = {}, {}, {}
    for name, fn in runs.items():
        t0 = time.perf_counter()
        try:
            r = fn()
        except ImportError as e:
            notes[name] = f"not installed ({e.name}): pip install -e .[peers-attr]"
            continue
        if isinstance(r, tuple):
            r, notes[name] = r
        out[name], secs[name] = r, time.perf_counter() - t0
    return out, secs, notes


def dattri_metric(A: np.ndarray, masks: np.ndarray, outputs: np.ndarray) -> float | None:
    try:
        from dattri.metric import lds as dattri_lds
    except ImportError:
        return None
    idx = torch.as_tensor(np.stack([np.flatnonzero(m) for m in masks]))
    corr, _ = dattri_lds(torch.as_tensor(A.T), (torch.as_tensor(outputs), idx))
    return float(np.nanmean(corr.numpy()))


def run_setup(name: str, a: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    s = build_setup(name, a.quick, a.n_test)
    masks = subset_masks(len(s.Xtr), a.subsets, 0.5, seed=0)
    both, cached, gt_secs = ground_truth(s, masks, not a.no_cache)
    outputs, val_outputs = both[:, : len(s.Xte)], both[:, len(s.Xte) :]
    attrs, secs, cks, lrs, val_lds, feature_dim = leanml_methods(s, masks, val_outputs)
    p_attrs, p_secs, notes = peer_methods(s, cks, lrs)
    attrs.update(p_attrs)
    secs.update(p_secs)
    rows = []
    for m, A in attrs.items():
        if not np.isfinite(A).all():
            notes[m] = (notes.get(m, "") + "; non-finite scores set to 0").lstrip("; ")
            A = np.nan_to_num(A, nan=0.0, posinf=0.0, neginf=0.0)
        r = lds(A, masks, outputs)
        rows.append({"method": m, **r.as_dict(), "seconds": secs[m], "note": notes.get(m, "")})
    rows += [{"method": m, "lds": None, "ci95": None, "seconds": None, "note": n} for m, n in notes.items()
             if m not in attrs]
    ours = next(r for r in rows if r["method"].endswith("defaults)"))
    tuned = next(r for r in rows if "best on validation" in r["method"])
    peer_rows = [r for r in rows if r["lds"] is not None and not r["method"].startswith("leanml")]
    best = max(peer_rows, key=lambda r: r["lds"]) if peer_rows else None
    trakers = [r for r in peer_rows if r["method"].startswith("traker")]
    traker = max(trakers, key=lambda r: r["lds"]) if trakers else {}
    return {"setup": name, "description": s.desc, "n_train": len(s.Xtr), "n_test": len(s.Xte),
            "n_subsets": a.subsets, "n_checkpoints": len(cks), "peer_proj_dims": list(PEER_DIMS),
            "ground_truth_cached": cached, "ground_truth_seconds": gt_secs, "rows": rows,
            "lds_leanml": ours["lds"], "lds_leanml_ci95": ours["ci95"], "leanml_method": ours["method"],
            "lds_leanml_validation_ridge": tuned["lds"], "leanml_feature_dim": feature_dim,
            "validation_lds_by_ridge": {str(k): v for k, v in val_lds.items()},
            "lds_traker": traker.get("lds"), "lds_traker_ci95": traker.get("ci95"),
            "traker_method": traker.get("method"),
            "lds_best_peer": None if best is None else best["lds"],
            "lds_best_peer_ci95": None if best is None else best["ci95"],
            "best_peer": None if best is None else best["method"],
            "lds_dattri_metric_leanml": dattri_metric(attrs[ours["method"]], masks, outputs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="10 subsets, 20 held-out examples, 200 CIFAR images")
    ap.add_argument("--setups", default="digits-logreg,cifar10-cnn")
    ap.add_argument("--subsets", type=int, default=None, help="retrained models per setup (default 50; quick 20)")
    ap.add_argument("--n-test", type=int, default=None, help="held-out examples (default 100; quick 40)")
    ap.add_argument("--no-cache", action="store_true", help="retrain the ground-truth models even when cached")
    ap.add_argument("--results", type=Path, default=RESULTS)
    a = ap.parse_args()
    a.subsets = a.subsets or (10 if a.quick else 50)
    a.n_test = a.n_test or (20 if a.quick else 100)
    if a.subsets < 2 or a.n_test < 2:
        raise SystemExit("--subsets and --n-test must be >= 2")
    t0 = time.time()
    load_before = os.getloadavg()
    setups = [run_setup(n, a) for n in a.setups.split(",")]
    print(f"{'setup':>14} | {'method':>46} | {'LDS':>7} | {'95% interval':>17} | {'seconds':>8} | note")
    for st in setups:
        for r in st["rows"]:
            ci = "" if r["ci95"] is None else f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"
            lv = "n/a" if r["lds"] is None else f"{r['lds']:.3f}"
            sec = "" if r["seconds"] is None else f"{r['seconds']:.1f}"
            print(f"{st['setup']:>14} | {r['method']:>46} | {lv:>7} | {ci:>17} | {sec:>8} | {r['note']}")
    keys = ("lds_leanml", "lds_leanml_ci95", "leanml_method", "lds_leanml_validation_ridge", "lds_traker",
            "lds_traker_ci95", "traker_method", "lds_best_peer", "lds_best_peer_ci95", "best_peer")
    head = {"benchmark": "attribution_quality", "quick": a.quick,
            "per_setup": {st["setup"]: {k: st[k] for k in keys} for st in setups}}
    result = {**head, "setups": setups, "seconds": time.time() - t0, "command": " ".join(sys.argv),
              "torch_threads": torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS"),
              "load_avg_1_5_15": {"start": load_before, "end": os.getloadavg()}}
    a.results.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(a.results, json.dumps(result, indent=1, default=float) + "\n")
    print(json.dumps(head, default=float))


if __name__ == "__main__":
    main()
