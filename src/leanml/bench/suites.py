"""Study suites: each builds a pool, a holdout, a target task and test data for one seed.

Sizes are parameters (``sizes`` overrides a suite's defaults), so the same code runs the quick
demo, a reduced grid on a laptop, and the full grid on a large machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from leanml.bench.suitedata import SuiteData
from leanml.select import Pool, Target, TorchClassifierLearner, TrainConfig

LESS_VARIANTS = ("less", "less-balanced", "less-zmax", "less-single")
ALL_ARRAY_METHODS = ("full", "random", "random-balanced", "loss", "el2n", "dlis", "least-confidence", "margin",
                     "entropy", "rho-loss", "craig", "grad-match", *LESS_VARIANTS, "trak", "dsdm", "dedup-random",
                     "less-dedup")
TEXT_METHODS = ("embedding", "bm25")
# What each LESS variant is, for tables: the paper's rule is the reference, the rest are named as what they change.
VARIANTS = {"less": "reference (max)", "less-balanced": "balanced (round-robin)",
            "less-zmax": "ablation: z-scored max", "less-single": "ablation: one task"}


def less_params(**p: object) -> dict[str, dict[str, object]]:
    """The same parameters for every LESS variant (they differ only in how subtask scores become a selection)."""
    return {m: dict(p) for m in LESS_VARIANTS}


@dataclass(frozen=True)
class SuiteWorkload:
    """The suite's model and batch sizes, for tracing its kernels on the meta device (hardware projection).

    ``build()`` is called under ``torch.device("meta")``; inputs are ``randn(batch, *input_shape)`` and
    targets class ids below ``n_classes``. Batches: training (`TrainConfig.batch_size`), forward scoring
    (the learner's ``eval_batch``) and per-example gradients (the `Featurizer` chunk).
    """

    name: str
    build: Callable[[], Any]
    input_shape: tuple[int, ...]
    n_classes: int
    train_batch: int
    infer_batch: int
    grads_batch: int = 256


@dataclass
class Suite:
    name: str
    description: str
    build: Callable[[dict[str, Any], int], SuiteData]
    methods: tuple[str, ...]
    budgets: tuple[float, ...]
    seeds: tuple[int, ...]
    sizes: dict[str, Any]
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    scenario: str = "in-distribution"  # or "targeted": pool from several sources, target and test from one
    threads: int | None = None  # torch intra-op threads; tiny models run fastest on one
    workload: Callable[[dict[str, Any]], SuiteWorkload] | None = None  # its model for hardware projection

    def build_epochs(self, sizes: dict[str, Any]) -> int:
        """Training epochs of every cell (the same for every budget: training cost scales with it)."""
        return int(sizes["epochs"])

    def resolve_sizes(self, overrides: dict[str, Any] | None) -> dict[str, Any]:
        sizes = dict(self.sizes)
        for k, v in (overrides or {}).items():
            if k not in sizes:
                raise ValueError(f"suite '{self.name}' has no size parameter '{k}'; its parameters are "
                                 f"{', '.join(f'{a}={b}' for a, b in self.sizes.items())}")
            sizes[k] = type(sizes[k])(v) if sizes[k] is not None and not isinstance(v, type(sizes[k])) else v
        return sizes


SUITES: dict[str, Suite] = {}


def register_suite(s: Suite) -> Suite:
    SUITES[s.name] = s
    return s


def get_suite(name: str) -> Suite:
    try:
        return SUITES[name]
    except KeyError:
        raise ValueError(f"unknown suite '{name}'; suites: {', '.join(SUITES)}") from None


def _split_holdout(n: int, holdout: int, pool_size: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(pool rows, holdout rows) of a training split, seeded; the pool is capped at ``pool_size``."""
    if holdout >= n:
        raise ValueError(f"holdout size {holdout} must be below the training split's {n} rows")
    perm = np.random.default_rng(10_000 + seed).permutation(n)
    hold, rest = perm[:holdout], perm[holdout:]
    if pool_size:
        rest = rest[:pool_size]
    return np.sort(rest), np.sort(hold)


def _array_suite_data(X, y, Xt, yt, learner, sizes, seed, texts=None, info=None) -> SuiteData:
    rows, hold = _split_holdout(len(y), sizes["holdout"], sizes.get("pool_size"), seed)
    holdout = Pool(X[hold], y[hold], learner=learner, name="holdout",
                   texts=None if texts is None else [texts[i] for i in hold])
    pool = Pool(X[rows], y[rows], learner=learner, holdout=holdout, name="pool",
                texts=None if texts is None else [texts[i] for i in rows])
    nt = sizes["target"]
    # In-distribution: the target's subtasks are its classes (LESS's max over subtasks, one per class).
    target = Target(X[hold[:nt]], y[hold[:nt]], name="validation", tasks=y[hold[:nt]],
                    texts=None if texts is None else [texts[i] for i in hold[:nt]])
    n_test = sizes.get("test_size")
    if n_test and n_test < len(yt):
        keep = np.sort(np.random.default_rng(20_000).permutation(len(yt))[:n_test])
        Xt, yt = Xt[keep], yt[keep]
    return SuiteData(pool, target, Xt, yt, learner, info=info or {})


# ---- quick: digits + small MLP -----------------------------------------------------------------

def _quick_learner(sizes: dict[str, Any]) -> TorchClassifierLearner:
    from leanml.models import build_mlp

    h = tuple(int(x) for x in str(sizes["hidden"]).split("x"))
    return TorchClassifierLearner(lambda s: build_mlp(64, 10, h, seed=s), 10,
                           TrainConfig(epochs=sizes["epochs"], batch_size=32, lr=sizes["lr"]),
                           proxy_factory=lambda s: build_mlp(64, 10, (16,), seed=s))


def _build_quick(sizes: dict[str, Any], seed: int) -> SuiteData:
    from leanml.data import load

    tr, te = load("digits", "train"), load("digits", "test")
    return _array_suite_data(tr.X, tr.y, te.X, te.y, _quick_learner(sizes), sizes, seed)


def _mlp_workload(d_in: int, n_classes: int, hidden: tuple[int, ...], train_batch: int,
                  infer_batch: int) -> SuiteWorkload:
    from leanml.models import build_mlp

    name = f"MLP {'-'.join(str(v) for v in (d_in, *hidden, n_classes))}"
    return SuiteWorkload(name, lambda: build_mlp(d_in, n_classes, hidden), (d_in,), n_classes, train_batch,
                         infer_batch)


def _cnn_workload(sizes: dict[str, Any]) -> SuiteWorkload:
    from leanml.models import build_cnn

    w = int(sizes["width"])
    return SuiteWorkload(f"CNN width {w}", lambda: build_cnn(10, 3, width=w), (3, 32, 32), 10, 128, 512)


register_suite(Suite(
    name="quick",
    description="scikit-learn digits, MLP 64-128-10 (Adam); pool = 80% of train, holdout 20%, test = digits test",
    build=_build_quick,
    methods=ALL_ARRAY_METHODS,
    budgets=(0.05, 0.1, 0.3),
    seeds=(0, 1),
    sizes={"holdout": 270, "target": 60, "pool_size": 0, "test_size": 0, "epochs": 30, "lr": 2e-3, "hidden": "128"},
    method_params={
        "loss": {"warmup_epochs": 3}, "el2n": {"warmup_epochs": 3, "n_models": 2},
        "least-confidence": {"warmup_epochs": 3}, "margin": {"warmup_epochs": 3}, "entropy": {"warmup_epochs": 3},
        "craig": {"warmup_epochs": 3}, "grad-match": {"warmup_epochs": 3},
        **less_params(warmup_fraction=0.05, warmup_epochs=4, dim=256),
        "trak": {"warmup_fraction": 0.5, "warmup_epochs": 4, "dim": 256},
        "dsdm": {"warmup_fraction": 0.5, "warmup_epochs": 4, "dim": 256},
        "dedup-random": {"warmup_fraction": 0.05, "warmup_epochs": 4, "dim": 256, "threshold": 0.95},
        "less-dedup": {"warmup_fraction": 0.05, "warmup_epochs": 4, "dim": 256},  # threshold "auto"
    },
    threads=1,
    workload=lambda sizes: _mlp_workload(64, 10, tuple(int(x) for x in str(sizes["hidden"]).split("x")), 32, 1024),
))


# ---- quick-targeted: a pool mixed from four digit sources, target and test from one -------------------

DIGIT_SOURCES = ("clean", "noisy", "mirrored", "inverted")


def digit_source(X: np.ndarray, source: str, seed: int) -> np.ndarray:
    """Digits (8x8 in [0, 1]) as one source would record them: as they are, with Gaussian noise (sd 0.25),
    mirrored left-right, or with intensities inverted (1 - x)."""
    if source == "clean":
        return X
    if source == "noisy":
        return np.clip(X + np.random.default_rng(30_000 + seed).normal(0, 0.25, X.shape), 0, 1).astype(X.dtype)
    if source == "mirrored":
        return X.reshape(-1, 8, 8)[:, :, ::-1].reshape(len(X), 64).copy()
    if source == "inverted":
        return (1.0 - X).astype(X.dtype)
    raise ValueError(f"digit source must be one of {DIGIT_SOURCES}, got {source!r}")


def _build_quick_targeted(sizes: dict[str, Any], seed: int) -> SuiteData:
    """Each training row is recorded by one of the four sources (a seeded, equal split); the holdout, the
    target and the test set come from ``target_source`` only, the setting LESS was made for."""
    from leanml.data import load

    tr, te = load("digits", "train"), load("digits", "test")
    rows, hold = _split_holdout(len(tr.y), sizes["holdout"], sizes.get("pool_size"), seed)
    src = np.random.default_rng(40_000 + seed).permutation(np.arange(len(rows)) % len(DIGIT_SOURCES))
    X = tr.X[rows].copy()
    for k, name in enumerate(DIGIT_SOURCES):
        X[src == k] = digit_source(tr.X[rows][src == k], name, seed)
    t = sizes["target_source"]
    learner = _quick_learner(sizes)
    Xh = digit_source(tr.X[hold], t, seed + 1)
    holdout = Pool(Xh, tr.y[hold], learner=learner, name="holdout")
    pool = Pool(X, tr.y[rows], learner=learner, holdout=holdout, name="pool",
                meta={"source": np.asarray(DIGIT_SOURCES)[src]})
    nt = sizes["target"]
    target = Target(Xh[:nt], tr.y[hold[:nt]], tasks=tr.y[hold[:nt]], name=f"{t}-validation")
    return SuiteData(pool, target, digit_source(te.X, t, seed + 2), te.y, learner,
                     info={"scenario": f"pool from {', '.join(DIGIT_SOURCES)} (a quarter each); target, holdout "
                                       f"and test from {t}"})


register_suite(Suite(
    name="quick-targeted",
    description="digits recorded by four sources (clean, noisy, mirrored, inverted), a quarter of the pool each; "
                "target, holdout and test from one (inverted); MLP 64-128-10",
    build=_build_quick_targeted,
    methods=("full", "random", "random-balanced", "loss", "rho-loss", *LESS_VARIANTS, "trak", "dsdm"),
    budgets=(0.05, 0.1, 0.3),
    seeds=(0, 1),
    sizes={"holdout": 270, "target": 60, "pool_size": 0, "test_size": 0, "epochs": 30, "lr": 2e-3, "hidden": "128",
           "target_source": "inverted"},
    method_params={
        "loss": {"warmup_epochs": 3},
        **less_params(warmup_fraction=0.05, warmup_epochs=4, dim=256),
        "trak": {"warmup_fraction": 0.5, "warmup_epochs": 4, "dim": 256},
        "dsdm": {"warmup_fraction": 0.5, "warmup_epochs": 4, "dim": 256},
    },
    scenario="targeted",
    threads=1,
    workload=lambda sizes: _mlp_workload(64, 10, tuple(int(x) for x in str(sizes["hidden"]).split("x")), 32, 1024),
))


# ---- cifar10: small CNN from scratch ------------------------------------------------------------

def _build_cifar10(sizes: dict[str, Any], seed: int) -> SuiteData:
    from leanml.data import load
    from leanml.models import build_cnn

    tr, te = load("cifar10", "train"), load("cifar10", "test")
    w = int(sizes["width"])
    learner = TorchClassifierLearner(lambda s: build_cnn(10, 3, width=w, seed=s), 10,
                              TrainConfig(epochs=sizes["epochs"], batch_size=128, lr=sizes["lr"], schedule="cosine"),
                              proxy_factory=lambda s: build_cnn(10, 3, width=max(4, w // 4), seed=s), eval_batch=512)
    return _array_suite_data(np.asarray(tr.X), tr.y, np.asarray(te.X), te.y, learner, sizes, seed)


register_suite(Suite(
    name="cifar10",
    description="CIFAR-10 (data root), 3-block CNN trained from scratch with Adam (cosine lr); holdout from train",
    build=_build_cifar10,
    methods=ALL_ARRAY_METHODS,
    budgets=(0.01, 0.05, 0.1, 0.3, 0.5, 1.0),
    seeds=(0, 1, 2),
    sizes={"holdout": 2000, "target": 200, "pool_size": 0, "test_size": 0, "epochs": 15, "lr": 2e-3, "width": 32},
    method_params={
        **less_params(warmup_fraction=0.05, warmup_epochs=4, dim=1024),
        "trak": {"warmup_fraction": 0.5, "warmup_epochs": 4, "dim": 1024},
        "dsdm": {"warmup_fraction": 0.5, "warmup_epochs": 4, "dim": 1024},
        "loss": {"warmup_epochs": 2}, "el2n": {"warmup_epochs": 2, "n_models": 2},
        "least-confidence": {"warmup_epochs": 2}, "margin": {"warmup_epochs": 2}, "entropy": {"warmup_epochs": 2},
        "craig": {"warmup_epochs": 2}, "grad-match": {"warmup_epochs": 2},
    },
    workload=_cnn_workload,
))


# ---- sst2: MiniLM features or MiniLM + LoRA -----------------------------------------------------

def _sst2_splits(sizes: dict[str, Any]):
    from leanml.data import load

    tr, dev, te = load("sst2", "train"), load("sst2", "dev"), load("sst2", "test")
    texts = [r["text"] for r in tr.records] + [r["text"] for r in dev.records]
    y = np.concatenate([tr.y, dev.y])  # rows >= len(train) are dev rows: the holdout and target come from there
    return texts, y, [r["text"] for r in te.records], te.y, len(tr.y)


def _pool_from_train_dev(texts, y, n_train, sizes, seed):
    rng = np.random.default_rng(10_000 + seed)
    dev_rows = n_train + rng.permutation(len(y) - n_train)[: sizes["holdout"]]
    train_rows = rng.permutation(n_train)
    if sizes.get("pool_size"):
        train_rows = train_rows[: sizes["pool_size"]]
    return np.sort(train_rows), np.sort(dev_rows)


def _build_sst2_frozen(sizes: dict[str, Any], seed: int) -> SuiteData:
    from leanml.bench.textfeatures import cached_minilm_embeddings
    from leanml.models import build_mlp

    texts, y, test_texts, test_y, n_train = _sst2_splits(sizes)
    rows, hold = _pool_from_train_dev(texts, y, n_train, sizes, seed)
    need = np.concatenate([rows, hold])
    emb, cost = cached_minilm_embeddings([texts[i] for i in need] + list(test_texts))
    E = dict(zip(need.tolist(), emb[: len(need)], strict=True))
    Et = emb[len(need):]
    learner = TorchClassifierLearner(lambda s: build_mlp(384, 2, (), seed=s), 2,
                              TrainConfig(epochs=sizes["epochs"], batch_size=64, lr=sizes["lr"]))
    X = np.stack([E[i] for i in rows])
    Xh = np.stack([E[i] for i in hold])
    holdout = Pool(Xh, y[hold], learner=learner, texts=[texts[i] for i in hold], name="holdout")
    pool = Pool(X, y[rows], learner=learner, holdout=holdout, texts=[texts[i] for i in rows], name="pool")
    nt = sizes["target"]
    target = Target(Xh[:nt], y[hold[:nt]], texts=[texts[i] for i in hold[:nt]], tasks=y[hold[:nt]],
                    name="sst2-dev")
    return SuiteData(pool, target, Et, test_y, learner,
                     info={"frozen_features": "MiniLM mean-pooled embeddings, computed once per text and cached; "
                                              "their cost is a fixed cost outside the grid",
                           "embedding_cost": cost})


register_suite(Suite(
    name="sst2-frozen",
    description="SST-2, frozen MiniLM sentence embeddings + linear head (the cheap variant)",
    build=_build_sst2_frozen,
    methods=ALL_ARRAY_METHODS + TEXT_METHODS,
    budgets=(0.01, 0.05, 0.1, 0.3, 1.0),
    seeds=(0, 1, 2),
    sizes={"holdout": 500, "target": 50, "pool_size": 20000, "epochs": 20, "lr": 3e-3},
    method_params={
        **less_params(warmup_fraction=0.05, warmup_epochs=4, dim=256),
        "trak": {"warmup_fraction": 0.5, "warmup_epochs": 4, "dim": 256},
        "dsdm": {"warmup_fraction": 0.5, "warmup_epochs": 4, "dim": 256},
    },
    threads=None,
    workload=lambda sizes: _mlp_workload(384, 2, (), 64, 1024),
))


def _build_sst2_lora(sizes: dict[str, Any], seed: int) -> SuiteData:
    from leanml.bench.textfeatures import MiniLMLoraClassifier, tokenize_ids

    texts, y, test_texts, test_y, n_train = _sst2_splits(sizes)
    rows, hold = _pool_from_train_dev(texts, y, n_train, sizes, seed)
    L = int(sizes["max_len"])
    ids = tokenize_ids([texts[i] for i in np.concatenate([rows, hold])], L)
    X, Xh = ids[: len(rows)], ids[len(rows):]
    n_test = sizes.get("test_size") or len(test_texts)
    Xt = tokenize_ids(list(test_texts)[:n_test], L)
    r = int(sizes["lora_r"])
    learner = TorchClassifierLearner(lambda s: MiniLMLoraClassifier(2, r=r, seed=s), 2,
                              TrainConfig(epochs=sizes["epochs"], batch_size=32, lr=sizes["lr"]), eval_batch=128)
    holdout = Pool(Xh, y[hold], learner=learner, texts=[texts[i] for i in hold], name="holdout")
    pool = Pool(X, y[rows], learner=learner, holdout=holdout, texts=[texts[i] for i in rows], name="pool")
    nt = sizes["target"]
    target = Target(Xh[:nt], y[hold[:nt]], texts=[texts[i] for i in hold[:nt]], tasks=y[hold[:nt]],
                    name="sst2-dev")
    return SuiteData(pool, target, Xt, test_y[:n_test], learner)


register_suite(Suite(
    name="sst2",
    description="SST-2, MiniLM (all-MiniLM-L6-v2) with LoRA on query/value + linear head on mean pooling",
    build=_build_sst2_lora,
    methods=ALL_ARRAY_METHODS + TEXT_METHODS,
    budgets=(0.01, 0.05, 0.1, 0.3, 1.0),
    seeds=(0,),
    sizes={"holdout": 300, "target": 32, "pool_size": 4000, "test_size": 0, "epochs": 2, "lr": 5e-4,
           "max_len": 64, "lora_r": 8},
    method_params={
        **less_params(warmup_fraction=0.05, warmup_epochs=2, dim=1024),
        "trak": {"warmup_fraction": 0.5, "warmup_epochs": 1, "dim": 1024},
        "dsdm": {"warmup_fraction": 0.5, "warmup_epochs": 1, "dim": 1024},
        "loss": {"warmup_epochs": 1}, "el2n": {"warmup_epochs": 1, "n_models": 1},
        "least-confidence": {"warmup_epochs": 1, "proxy": False}, "margin": {"warmup_epochs": 1, "proxy": False},
        "entropy": {"warmup_epochs": 1, "proxy": False},
        "craig": {"warmup_epochs": 1}, "grad-match": {"warmup_epochs": 1},
        "rho-loss": {"il_epochs": 2},
    },
))


# ---- instruct: SmolLM2 + LoRA, LESS's setting scaled down ------------------------------------------

def _build_instruct(sizes: dict[str, Any], seed: int) -> SuiteData:
    from leanml.bench.instruct import build_instruct

    return build_instruct(sizes, seed)


register_suite(Suite(
    name="instruct",
    description="SmolLM2-135M-Instruct + LoRA; pool T0+GSM8K+CodeAlpaca; targets/eval BBH, MMLU, TyDiQA subtasks",
    build=_build_instruct,
    methods=("full", "random", *LESS_VARIANTS, "embedding", "bm25"),
    budgets=(0.05, 0.1),
    seeds=(0,),
    sizes={"n_t0": 600, "n_gsm8k": 200, "n_codealpaca": 200, "n_tasks": 3, "per_task": 2, "eval_per_task": 10,
           "epochs": 1, "lr": 2e-4, "max_len": 128, "gen_tokens": 16, "lora_r": 8},
    method_params=less_params(warmup_fraction=0.05, warmup_epochs=2, dim=1024, params="lora"),
))
