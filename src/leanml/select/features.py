"""Per-example gradient features for the gradient-based selectors, behind one small adapter.

LESS, TRAK, DsDM, CRAIG and GRAD-MATCH work from a feature matrix per checkpoint. That matrix
comes from one of three places, all behind `GradientFeatures`:

- `MatrixFeatures`: arrays already in memory (tests, or features computed by `Featurizer`);
- `Featurizer`: computes projected per-example gradients of a `Learner`'s model at warm-up
  checkpoints (batched ``torch.func``; projections and LESS's gradient types from `leanml.grads`);
- `StoreFeatures` / `StoreTaskFeatures`: rows read from a gradient store (`leanml.store`), so a
  second target task reuses the pool's stored features and pays only for its own gradients.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from leanml.grads import defaults
from leanml.select.errors import SelectionError, check_finite


class GradientFeatures(ABC):
    """Projected gradient features of a set of examples, one matrix per checkpoint."""

    kind: str = "sgd"  # LESS gradient type: sgd | sign | adam

    @property
    @abstractmethod
    def checkpoint_weights(self) -> np.ndarray:
        """One weight per checkpoint (LESS: the learning rate in effect there)."""

    @abstractmethod
    def rows(self, checkpoint: int) -> np.ndarray:
        """Features ``(n, k)`` at one checkpoint."""

    @property
    def fingerprint(self) -> str:
        """Identifies the model and projection; pool and target features must agree on it."""
        return ""

    @property
    def n_checkpoints(self) -> int:
        return len(self.checkpoint_weights)

    def one_minus_p(self) -> np.ndarray | None:
        """``[C, n]`` per-row ``1 - p(label)`` at each checkpoint (TRAK's Q), or None when not known."""
        return None

    def blocks(self) -> Any:
        """These features through the block interface the scores read (`leanml.store.scoring.ArrayBlocks`)."""
        from leanml.store.scoring import ArrayBlocks

        return ArrayBlocks([self.rows(c) for c in range(self.n_checkpoints)], self.checkpoint_weights,
                           q=self.one_minus_p())


@dataclass
class MatrixFeatures(GradientFeatures):
    """Features held in memory: ``mats[c]`` is the ``(n, k)`` matrix at checkpoint ``c``; ``q`` the optional
    ``(C, n)`` per-row ``1 - p(label)`` (TRAK's Q)."""

    mats: list[np.ndarray]
    weights: np.ndarray | None = None
    kind: str = "sgd"
    fp: str = ""
    q: np.ndarray | None = None

    def __post_init__(self) -> None:
        if isinstance(self.mats, np.ndarray) and self.mats.ndim == 2:
            self.mats = [self.mats]
        if not self.mats:
            raise SelectionError("MatrixFeatures: give at least one (n, k) matrix")
        shapes = {m.shape for m in self.mats}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise SelectionError(f"MatrixFeatures: every checkpoint needs the same (n, k) shape, got {shapes}")
        self.mats = [check_finite("gradient features", np.asarray(m, dtype=np.float32)) for m in self.mats]
        w = np.ones(len(self.mats)) if self.weights is None else np.asarray(self.weights, dtype=np.float64)
        if w.shape != (len(self.mats),) or (w < 0).any():
            raise SelectionError(f"MatrixFeatures: need {len(self.mats)} non-negative checkpoint weights, got {w}")
        self.weights = w
        if self.q is not None:
            n = self.mats[0].shape[0]
            self.q = np.array(np.broadcast_to(np.asarray(self.q, dtype=np.float64), (len(self.mats), n)))
            if not np.all((self.q >= 0) & (self.q <= 1)):
                raise SelectionError("MatrixFeatures: q (1 - p per row) must lie in [0, 1]")

    @property
    def checkpoint_weights(self) -> np.ndarray:
        return self.weights

    def one_minus_p(self) -> np.ndarray | None:
        return self.q

    def rows(self, checkpoint: int) -> np.ndarray:
        return self.mats[checkpoint]

    @property
    def fingerprint(self) -> str:
        return self.fp


@dataclass
class WarmupCheckpoint:
    """Model (and optimizer) state at one point of a warm-up, with the learning rate there."""

    model_state: dict
    optimizer_state: dict | None
    lr: float


def load_checkpoint(model: torch.nn.Module, ck: WarmupCheckpoint) -> None:
    """Load a checkpoint's weights; a partial state (trainable parameters only, e.g. LoRA) is allowed
    when every trainable parameter is in it."""
    state = ck.model_state
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    missing = trainable - set(state)
    if missing:
        raise SelectionError(f"checkpoint lacks trainable parameters {sorted(missing)[:5]}")
    model.load_state_dict(state, strict=len(state) == len(model.state_dict()))


def optimizer_param_names(model: torch.nn.Module, ck: WarmupCheckpoint) -> list[str]:
    """Names of the parameters the checkpoint's optimizer was built over, in its order: every parameter
    (``Adam(model.parameters())``, frozen ones included) or only the trainable ones."""
    n_opt = sum(len(g["params"]) for g in ck.optimizer_state["param_groups"])
    every = [n for n, _ in model.named_parameters()]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    for names in (every, trainable):
        if len(names) == n_opt:
            return names
    raise SelectionError(f"checkpoint optimizer holds {n_opt} parameters; the model has {len(every)} "
                         f"({len(trainable)} trainable): cannot match its Adam moments to parameters")


def checkpoints_of(fit_result: Any) -> list[WarmupCheckpoint]:
    """The checkpoints `leanml.models.fit(keep_checkpoints=True)` saved at epoch ends."""
    cks = [WarmupCheckpoint(c["model"], c.get("optimizer"), float(c.get("lr", 1.0))) for c in fit_result.checkpoints]
    if not cks:
        raise SelectionError("warm-up kept no checkpoints (fit(..., keep_checkpoints=True))")
    return cks


@dataclass
class Featurizer:
    """Projected per-example gradients of a learner's model at given checkpoints, computed by
    `leanml.grads.GradientComputer` (batched: forward/backward hooks for Linear/LoRA layers,
    ``torch.func`` otherwise; LESS's gradient types), projected with the shared defaults of
    `leanml.grads.defaults` (k = 1024; factorized where it applies, else a seeded dense JL map), so a
    selector's own features equal those ``leanml grads extract`` stores from the same checkpoints.
    ``pair_grad_type``: the gradient type of the features these are scored against (LESS: "adam" for
    its SGD targets), which the ``"auto"`` projector rule takes into account.

    ``params="all"`` differentiates every trainable parameter, ``"last"`` only the last linear
    layer (CRAIG/GRAD-MATCH's approximation), ``"lora"`` the adapters, or a list of module names.
    The learner supplies the batches (``grad_batch``) and the per-example loss (``loss_adapter``).
    Examples go through in chunks of ``chunk``, or of the learner's ``grad_chunk`` when smaller (a
    causal LM's 128-token sequences need far smaller chunks than a small classifier's rows).
    """

    learner: Any
    dim: int = defaults.PROJECTION_DIM
    seed: int = defaults.PROJECTION_SEED
    params: str | list[str] = "all"
    projection: str = defaults.PROJECTION_KIND
    chunk: int = 256
    projector: str = defaults.PROJECTOR
    pair_grad_type: str | None = None

    def features(self, model: torch.nn.Module, checkpoints: list[WarmupCheckpoint], X: Any, y: Any, *,
                 kind: str = "sgd", output: str = "loss") -> MatrixFeatures:
        """Features of (X, y) at every checkpoint; ``kind`` is LESS's gradient type."""
        from leanml.meter import stage

        with stage("grads"):  # the study projects this stage with a per-example-gradient profile
            return self._features(model, checkpoints, X, y, kind=kind, output=output)

    def _features(self, model: torch.nn.Module, checkpoints: list[WarmupCheckpoint], X: Any, y: Any, *,
                  kind: str, output: str) -> MatrixFeatures:
        from leanml.grads import AdamState, GradientComputer

        mats, fp = [], ""
        chunk = max(1, min(self.chunk, self.learner.grad_chunk or self.chunk))
        for ck in checkpoints:
            load_checkpoint(model, ck)
            adam = None
            if kind == "adam":
                if ck.optimizer_state is None:
                    raise SelectionError("kind='adam' needs checkpoints with optimizer state")
                adam = AdamState.from_optimizer(model, ck.optimizer_state, optimizer_param_names(model, ck))
            gc = GradientComputer(model, self.learner.loss_adapter(output), params=self._param_spec(model),
                                  projector=self.projector, dim=self.dim, kind=self.projection, seed=self.seed,
                                  grad_type=kind, adam_state=adam, chunk_size=chunk,
                                  dense_cache_bytes=256 << 20, pair_grad_type=self.pair_grad_type)
            fp = hashlib.sha1(f"{gc.model_fingerprint()}|{gc.projector.spec()}".encode()).hexdigest()[:16]
            parts = []
            for s in range(0, len(X), chunk):  # chunk by chunk: (N, P) gradients are never held
                rows = np.arange(s, min(s + chunk, len(X)))
                Xc = X[rows] if isinstance(X, np.ndarray) else [X[int(i)] for i in rows]
                yc = None if y is None else np.asarray(y)[rows]
                parts.append(gc.features(self.learner.grad_batch(Xc, yc)).detach().cpu().numpy())
            mats.append(np.concatenate(parts))
        return MatrixFeatures(mats, np.array([c.lr for c in checkpoints]), kind=kind, fp=fp)

    def _param_spec(self, model: torch.nn.Module) -> str | list[str]:
        from leanml.select.learner import last_layer_param_names

        if self.params == "all":
            return "trainable"
        if self.params == "last":
            return last_layer_param_names(model)
        return self.params


class StoreFeatures(GradientFeatures):
    """Pool features read from a gradient store (`leanml.store.GradientStore`), in pool order.

    ``ids`` are the pool's example ids (``Pool.ids``); every one must be in the store. WarmupCheckpoint
    weights and the model/projection fingerprint come from the store's manifest. This adapter and
    `StoreTaskFeatures` are the only places the selectors touch the store.
    """

    def __init__(self, store: Any, ids: np.ndarray, *, kind: str | None = None) -> None:
        from leanml.store import GradientStore

        self.store = store if isinstance(store, GradientStore) else GradientStore.open(store)
        self.ids = np.asarray(ids, dtype=np.int64)
        self.kind = kind or self.store.manifest.grad_type
        self._rows: dict[int, np.ndarray] = {}

    @property
    def checkpoint_weights(self) -> np.ndarray:
        return self.store.weights()

    def rows(self, checkpoint: int) -> np.ndarray:
        if checkpoint not in self._rows:
            name = self.store.checkpoint_names()[checkpoint]
            sid, feats = self.store.features(name)
            pos = {int(i): r for r, i in enumerate(sid)}
            missing = [int(i) for i in self.ids if int(i) not in pos]
            if missing:
                raise SelectionError(f"gradient store {self.store.root}: checkpoint {name!r} lacks {len(missing)} "
                                     f"pool ids (e.g. {missing[:5]}); extract them first (leanml grads extract)")
            self._rows[checkpoint] = np.asarray(feats[[pos[int(i)] for i in self.ids]], dtype=np.float32)
        return self._rows[checkpoint]

    def blocks(self) -> Any:
        """The store itself, streamed block by block, when the pool is the store's rows in store order;
        otherwise the rows in pool order, in memory."""
        from leanml.store.scoring import StoreBlocks

        if all(np.array_equal(self.store.ids(c), self.ids) for c in self.store.checkpoint_names()):
            return StoreBlocks(self.store)
        return super().blocks()

    def one_minus_p(self) -> np.ndarray | None:
        """The store's per-row 1 - p in pool order (None for stores without it)."""
        if not self.store.has_one_minus_p():
            return None
        out = []
        for name in self.store.checkpoint_names():
            pos = {int(i): r for r, i in enumerate(self.store.ids(name))}
            out.append(self.store.one_minus_p(name)[[pos[int(i)] for i in self.ids]])
        return np.stack(out)

    @property
    def fingerprint(self) -> str:
        return str(self.store.manifest.model)


class StoreTaskFeatures(GradientFeatures):
    """A target task's features stored with ``GradientStore.add_task`` (one matrix per checkpoint)."""

    kind = "sgd"

    def __init__(self, store: Any, task: str) -> None:
        from leanml.store import GradientStore
        from leanml.store.tasks import task_features

        self.store = store if isinstance(store, GradientStore) else GradientStore.open(store)
        self.arr, self.entry = task_features(self.store, task)

    @property
    def checkpoint_weights(self) -> np.ndarray:
        return self.store.weights()

    def rows(self, checkpoint: int) -> np.ndarray:
        return np.asarray(self.arr[checkpoint], dtype=np.float32)

    @property
    def subtasks(self) -> np.ndarray | None:
        s = self.entry.get("subtasks")
        return None if s is None else np.asarray(s)

    @property
    def fingerprint(self) -> str:
        return str(self.store.manifest.model)


def check_compatible(pool_f: GradientFeatures, target_f: GradientFeatures) -> None:
    """Refuse to compare features from different models/projections (TRAK's silent-mixing problem)."""
    if pool_f.n_checkpoints != target_f.n_checkpoints:
        raise SelectionError(f"pool features have {pool_f.n_checkpoints} checkpoints, "
                             f"target features {target_f.n_checkpoints}: compute both from the same warm-up")
    if pool_f.fingerprint and target_f.fingerprint and pool_f.fingerprint != target_f.fingerprint:
        raise SelectionError(f"pool features (model/projection {pool_f.fingerprint}) and target features "
                             f"({target_f.fingerprint}) come from different models or projections")
    k1, k2 = pool_f.rows(0).shape[1], target_f.rows(0).shape[1]
    if k1 != k2:
        raise SelectionError(f"pool features have dimension {k1}, target features {k2}")


def normalize_rows(a: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(a, axis=1, keepdims=True)
    return a / np.maximum(n, 1e-12)
