"""Declarative extraction recipes: dataset + model + parameter subset + projection, buildable in any process.

An `ExtractSpec` is plain data (picklable, JSON-able), so parallel workers (processes or Ray tasks)
rebuild the same model, checkpoints and batches from it and each compute features for their ids.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from leanml.grads import defaults
from leanml.grads.computer import GradientComputer
from leanml.grads.gradtypes import AdamState
from leanml.grads.losses import CausalLMLoss, ClassificationLoss, LossAdapter, MarginLoss

MODELS = ("mlp", "cnn", "minilm-lora", "smollm2-lora", "smollm2-random-lora")
OUTPUTS = ("loss", "margin")


@dataclass
class ExtractSpec:
    """What to extract. ``checkpoints`` are files written by ``prepare`` (or by the user) with weights."""

    dataset: str
    split: str = "train"
    model: str = "mlp"
    params: str = "trainable"  # trainable | lora | all | comma-separated module names
    projector: str = defaults.PROJECTOR  # auto | dense | factorized (leanml.grads.defaults.resolve_projector)
    dim: int = defaults.PROJECTION_DIM
    kind: str = defaults.PROJECTION_KIND
    seed: int = defaults.PROJECTION_SEED
    grad_type: str = "sgd"
    pair_grad_type: str | None = None  # LESS targets: "adam" (scored against an Adam pool)
    output: str = "loss"  # what is differentiated: "loss", or TRAK's "margin" (classifiers)
    batch_size: int = 32
    limit: int | None = None
    lora_rank: int = 8
    max_len: int = 128
    hidden: tuple[int, ...] = (128,)
    checkpoints: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"ExtractSpec: model must be one of {MODELS}, got {self.model!r}")
        if self.output not in OUTPUTS or (self.output == "margin" and self.model.startswith("smollm2")):
            raise ValueError(f"ExtractSpec: output must be one of {OUTPUTS} ('margin' for classifiers only), "
                             f"got {self.output!r} for model {self.model!r}")
        if self.batch_size < 1 or self.dim < 1:
            raise ValueError("ExtractSpec: batch_size and dim must be >= 1")
        if self.weights and len(self.weights) != len(self.checkpoints):
            raise ValueError(f"ExtractSpec: {len(self.weights)} weights for {len(self.checkpoints)} checkpoints")
        self.hidden = tuple(self.hidden)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    # ---- data ----------------------------------------------------------------------------------
    def load_split(self) -> Any:
        return _load_split(self.dataset, self.split)

    def ids(self) -> np.ndarray:
        ids = np.asarray(self.load_split().ids, dtype=np.int64)
        return ids[: self.limit] if self.limit else ids

    def loss(self) -> LossAdapter:
        if self.model.startswith("smollm2"):
            return CausalLMLoss()
        return MarginLoss() if self.output == "margin" else ClassificationLoss()

    def batches(self, ids: Sequence[int] | None = None, tokenizer: Any = None) -> Iterator[tuple[np.ndarray, dict]]:
        """(ids, batch) in ``batch_size`` chunks of the split's canonical order, restricted to ``ids``."""
        s = self.load_split()
        all_ids = np.asarray(s.ids, dtype=np.int64)
        n = self.limit or len(all_ids)
        rows = np.arange(n)
        if ids is not None:
            rows = rows[np.isin(all_ids[:n], np.asarray(ids))]
        for a in range(0, len(rows), self.batch_size):
            r = rows[a : a + self.batch_size]
            yield all_ids[r], self._encode(s, r, tokenizer)

    def _encode(self, s: Any, r: np.ndarray, tok: Any) -> dict[str, torch.Tensor]:
        from leanml.models.text import encode_completions, encode_texts

        if self.model in ("mlp", "cnn"):
            X = np.asarray(s.X[r], dtype=np.float32)
            return {"x": torch.from_numpy(X), "y": torch.as_tensor(np.asarray(s.y[r]), dtype=torch.long)}
        recs = [s.records[i] for i in r]
        if self.model == "minilm-lora":
            text = [rec.get("text") or rec.get("question") or rec.get("input") for rec in recs]
            return encode_texts(tok, text, np.asarray(s.y[r]), self.max_len)
        prompts, comps = [], []
        for rec in recs:
            if "prompt" in rec:
                prompts.append(rec["prompt"])
                comps.append(rec["completion"])
            elif "instruction" in rec:
                prompts.append(rec["instruction"] + ("\n" + rec["input"] if rec.get("input") else ""))
                comps.append(rec["output"])
            else:
                prompts.append(rec.get("question") or rec.get("input"))
                comps.append(str(rec.get("answer") or rec.get("target")))
        return encode_completions(tok, prompts, comps, self.max_len)

    # ---- model ---------------------------------------------------------------------------------
    def build_model(self) -> tuple[nn.Module, Any]:
        """(model at initialization, tokenizer or None)."""
        from leanml.models import build_cnn, build_mlp

        if self.model == "mlp":
            s = self.load_split()
            return build_mlp(s.X.shape[1], int(np.max(s.y)) + 1, hidden=self.hidden, seed=self.seed), None
        if self.model == "cnn":
            return build_cnn(seed=self.seed), None
        from leanml.models.text import load_minilm_lora, load_smollm2_lora

        if self.model == "minilm-lora":
            return load_minilm_lora(n_classes=2, rank=self.lora_rank, seed=self.seed)
        return load_smollm2_lora(rank=self.lora_rank, seed=self.seed, random_init=self.model == "smollm2-random-lora")

    def computers(self, model: nn.Module) -> Iterator[tuple[str, float, GradientComputer]]:
        """(checkpoint name, weight, computer) per checkpoint, loading each checkpoint into ``model``."""
        paths = self.checkpoints or [None]
        weights = self.weights or [1.0] * len(paths)
        for i, (p, w) in enumerate(zip(paths, weights, strict=True)):
            adam = None
            if p is not None:
                ck = load_checkpoint(p)
                missing = model.load_state_dict(ck["model"], strict=False)
                if missing.unexpected_keys:
                    raise ValueError(f"checkpoint {p}: keys not in the model: {missing.unexpected_keys[:5]}")
                if self.grad_type == "adam":
                    adam = AdamState.from_optimizer(model, ck["optimizer"], ck.get("param_names"))
            elif self.grad_type == "adam":
                raise ValueError("grad_type 'adam' needs checkpoints with optimizer state (--checkpoint or --warmup)")
            params = [x.strip() for x in self.params.split(",")] if "," in self.params else self.params
            yield f"c{i}", float(w), GradientComputer(
                model, self.loss(), params=params, projector=self.projector, dim=self.dim, kind=self.kind,
                seed=self.seed, grad_type=self.grad_type, adam_state=adam, pair_grad_type=self.pair_grad_type)


@functools.lru_cache(maxsize=4)
def _load_split(dataset: str, split: str) -> Any:
    from leanml.data import load

    return load(dataset, split)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    ck = torch.load(p, map_location="cpu", weights_only=False)
    if not isinstance(ck, dict) or "model" not in ck:
        raise ValueError(f"checkpoint {p}: expected a dict with 'model' (state dict) and 'optimizer'")
    return ck


def warmup(spec: ExtractSpec, out_dir: str | Path, epochs: int = 2, lr: float = 1e-3) -> ExtractSpec:
    """Train the spec's model briefly (MLP/CNN: ``fit``; LoRA models: Adam steps over the batches), save a
    checkpoint per epoch with its optimizer state, and return the spec pointing at them (weight = lr, as LESS)."""
    from leanml.models import fit
    from leanml.models.text import train_steps

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, tok = spec.build_model()
    paths = []
    if spec.model in ("mlp", "cnn"):
        s = spec.load_split()
        n = spec.limit or len(s.ids)
        res = fit(model, s.X[:n], s.y[:n], epochs=epochs, lr=lr, batch_size=spec.batch_size, seed=spec.seed,
                  keep_checkpoints=True)
        states = [(c["model"], c["optimizer"], None) for c in res.checkpoints]
    else:
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        states = []
        loss = spec.loss()
        for _ in range(epochs):
            opt_state = train_steps(model, lambda m, b: loss.loss(m, b).mean(),
                                    (b for _, b in spec.batches(tokenizer=tok)), lr=lr, seed=spec.seed)
            states.append(({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
                           opt_state, names))
    from leanml.io import atomic_write_bytes

    for e, (sd, opt, names) in enumerate(states):
        import io

        buf = io.BytesIO()
        torch.save({"model": sd, "optimizer": opt, "param_names": names, "lr": lr}, buf)
        p = out / f"checkpoint-{e}.pt"
        atomic_write_bytes(p, buf.getvalue())
        paths.append(str(p))
    spec.checkpoints, spec.weights = paths, [lr] * len(paths)
    return spec
