"""`GradientComputer`: the one façade that turns a batch into projected per-example gradient features.

Per-example gradients are computed for the whole batch at once, never in a Python loop over
examples: with forward/backward hooks when every selected parameter belongs to an ``nn.Linear``
(MLPs, LoRA adapters: ``G_b = sum_t g_bt x_bt^T`` from the captured inputs and output gradients),
otherwise with ``torch.func`` (``vmap(grad(loss))`` over ``functional_call``; CNNs). The model must
not mix examples within a batch (BatchNorm in eval mode, no in-batch statistics); the computer puts
the model in eval mode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from leanml.grads import defaults
from leanml.grads.factorized import FactorizedProjector, linear_layer_dims
from leanml.grads.gradtypes import AdamState, check_grad_type, transform
from leanml.grads.losses import Batch, LossAdapter, batch_size, to_device
from leanml.grads.params import architecture_fingerprint, linear_modules_for, select_params, weights_fingerprint
from leanml.grads.projectors import DenseProjector, Projector

BACKENDS = ("auto", "hooks", "vmap")


class _Capture:
    """Forward hooks that keep each listed Linear's inputs and outputs for one forward pass."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.modules = modules
        self.inputs: dict[str, list[torch.Tensor]] = {n: [] for n in modules}
        self.outputs: dict[str, list[torch.Tensor]] = {n: [] for n in modules}
        self._handles: list[Any] = []

    def __enter__(self) -> _Capture:
        for name, mod in self.modules.items():
            def hook(_m, args, out, name=name):
                self.inputs[name].append(args[0].detach())
                self.outputs[name].append(out)
            self._handles.append(mod.register_forward_hook(hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()

    def output_grads(self, loss: torch.Tensor) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
        """``{name: [(x [B,T,d_in], g [B,T,d_out]), ...]}`` for each call of each module."""
        flat = [(n, i) for n in self.modules for i in range(len(self.outputs[n]))]
        if not flat:
            raise RuntimeError("GradientComputer: the selected layers were not called in the forward pass")
        outs = [self.outputs[n][i] for n, i in flat]
        if not all(o.requires_grad for o in outs):
            raise RuntimeError("GradientComputer: a selected layer's output does not require grad")
        grads = torch.autograd.grad(loss, outs, allow_unused=True)
        res: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {n: [] for n in self.modules}
        for (n, i), g, o in zip(flat, grads, outs, strict=True):
            x = self.inputs[n][i]
            g = torch.zeros_like(o) if g is None else g
            B = x.shape[0]
            res[n].append((x.reshape(B, -1, x.shape[-1]), g.reshape(B, -1, g.shape[-1])))
        return res


@contextlib.contextmanager
def _requires_grad(params: Sequence[nn.Parameter]) -> Iterator[None]:
    old = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, r in zip(params, old, strict=True):
            p.requires_grad_(r)


class GradientComputer:
    """Projected per-example gradient features of ``loss`` w.r.t. a parameter subset of ``model``.

    Args:
        model: any ``nn.Module`` (MLP/CNN from ``leanml.models``, peft-wrapped transformers).
        loss: a `LossAdapter` (``ClassificationLoss``, ``CausalLMLoss``).
        params: ``"trainable"``, ``"lora"``, ``"all"`` or module names (see ``select_params``).
        projector: ``"auto"`` (default: factorized where it applies, see `leanml.grads.defaults`),
            ``"dense"``, ``"factorized"`` or a ready `Projector` instance.
        dim: output dimension k (default ``defaults.PROJECTION_DIM``). kind: "rademacher" or "gaussian".
            seed: projection seed.
        pair_grad_type: the gradient type of the features these will be scored against, when it differs
            (LESS: SGD targets against an Adam pool); ``"auto"`` then picks dense for both.
        grad_type: "sgd", "sign" or "adam" (LESS); "adam" needs ``adam_state``. The factorized
            projector supports "sgd" only (sign/adam are elementwise on the full gradient it never forms).
        backend: "auto" (hooks when all parameters are Linear weights/biases, else vmap), "hooks", "vmap".
        chunk_size: vmap chunk size (bounds memory of the vmap backend).
        device: where to compute (default: the model's device).
        dense_cache_bytes: see ``DenseProjector``.
    """

    def __init__(self, model: nn.Module, loss: LossAdapter, *, params: str | Sequence[str] = "trainable",
                 projector: str | Projector = defaults.PROJECTOR, dim: int = defaults.PROJECTION_DIM,
                 kind: str = defaults.PROJECTION_KIND, seed: int = defaults.PROJECTION_SEED,
                 grad_type: str = "sgd", adam_state: AdamState | None = None, backend: str = "auto",
                 chunk_size: int | None = None, device: str | torch.device | None = None,
                 dense_cache_bytes: int = 0, pair_grad_type: str | None = None) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"GradientComputer: backend must be one of {BACKENDS}, got {backend!r}")
        if not isinstance(loss, LossAdapter):
            raise TypeError(f"GradientComputer: loss must be a LossAdapter, got {type(loss).__name__}")
        self.model, self.loss_fn = model, loss
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.names = select_params(model, params)
        self.grad_type, self.adam = grad_type, adam_state
        check_grad_type(grad_type, adam_state, self.names)
        pmap = dict(model.named_parameters())
        self.params = [pmap[n] for n in self.names]
        self.linear = linear_modules_for(model, self.names)
        if backend == "auto":
            backend = "hooks" if self.linear is not None else "vmap"
        if backend == "hooks" and self.linear is None:
            raise ValueError("GradientComputer: backend='hooks' needs every selected parameter to be an nn.Linear "
                             "weight or bias; use backend='vmap' for other layers")
        self.backend, self.chunk_size = backend, chunk_size
        self.grad_dim = sum(p.numel() for p in self.params)
        if isinstance(projector, str) and projector in defaults.PROJECTORS:
            projector = defaults.resolve_projector(projector, linear_only=self.linear is not None,
                                                   grad_types=[grad_type, pair_grad_type or grad_type])
        if isinstance(projector, Projector):
            self.projector = projector
        elif projector == "dense":
            self.projector = DenseProjector(self.grad_dim, dim, kind=kind, seed=seed, cache_bytes=dense_cache_bytes)
        elif projector == "factorized":
            if self.linear is None:
                raise ValueError("GradientComputer: projector='factorized' works on nn.Linear layers only "
                                 "(LoRA A/B, MLP layers); use projector='dense' for this parameter subset")
            self.projector = FactorizedProjector(linear_layer_dims(self.linear), dim, kind=kind, seed=seed)
        else:
            raise ValueError("GradientComputer: projector must be 'auto', 'dense', 'factorized' or a Projector, "
                             f"got {projector!r}")
        if isinstance(self.projector, FactorizedProjector) and grad_type != "sgd":
            raise ValueError(f"GradientComputer: grad_type={grad_type!r} needs the full per-example gradient; "
                             "the factorized projector supports 'sgd' only (use projector='dense')")
        if isinstance(self.projector, DenseProjector) and self.projector.grad_dim != self.grad_dim:
            raise ValueError(f"GradientComputer: the projector expects {self.projector.grad_dim} coordinates, "
                             f"the parameter subset has {self.grad_dim}")
        self.dim = self.projector.dim

    # ---- identity ------------------------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        """What the features mean: projection, parameter subset, loss (stored in the manifest)."""
        return {"projection": self.projector.spec(), "params": architecture_fingerprint(self.model, self.names),
                "n_params": self.grad_dim, "loss": type(self.loss_fn).__name__}

    def model_fingerprint(self) -> str:
        return architecture_fingerprint(self.model, self.names)

    def checkpoint_fingerprint(self) -> str:
        """Hash of the current weights: a checkpoint's identity in the store."""
        return weights_fingerprint(self.model)

    # ---- per-example gradients -----------------------------------------------------------------
    def per_example_grads(self, batch: Batch) -> list[torch.Tensor]:
        """Exact per-example gradients, one ``[B, numel]`` tensor per selected parameter (``self.names`` order)."""
        self.model.eval()
        batch = to_device(batch, self.device)
        if self.backend == "hooks":
            return self._hook_grads(batch)
        return self._vmap_grads(batch)

    def _hook_grads(self, batch: Batch) -> list[torch.Tensor]:
        assert self.linear is not None
        mods = {n: m for n, (m, _, _) in self.linear.items()}
        with _requires_grad(self.params), _Capture(mods) as cap:
            loss = self.loss_fn.loss(self.model, batch).sum()
            calls = cap.output_grads(loss)
        per: dict[str, torch.Tensor] = {}
        for name, (_, w, b) in self.linear.items():
            gw = gb = None
            for x, g in calls[name]:
                if w:
                    t = torch.einsum("bto,bti->boi", g, x).reshape(x.shape[0], -1)
                    gw = t if gw is None else gw + t
                if b:
                    t = g.sum(1)
                    gb = t if gb is None else gb + t
            if w:
                per[f"{name}.weight"] = gw
            if b:
                per[f"{name}.bias"] = gb
        return [per[n] for n in self.names]

    def _vmap_grads(self, batch: Batch) -> list[torch.Tensor]:
        sel = set(self.names)
        params = {n: p.detach() for n, p in zip(self.names, self.params, strict=True)}
        frozen = {n: p.detach() for n, p in self.model.named_parameters() if n not in sel}
        buffers = {n: b for n, b in self.model.named_buffers()}
        model, loss_fn = self.model, self.loss_fn

        def one(p: dict[str, torch.Tensor], ex: Batch) -> torch.Tensor:
            b1 = {k: v.unsqueeze(0) for k, v in ex.items()}

            def call(*args: Any, **kwargs: Any) -> Any:
                return functional_call(model, (p, frozen, buffers), args, kwargs)
            return loss_fn.loss(call, b1).sum()

        g = vmap(grad(one), in_dims=(None, 0), chunk_size=self.chunk_size)(params, batch)
        return [g[n].reshape(g[n].shape[0], -1) for n in self.names]

    # ---- features ------------------------------------------------------------------------------
    def features(self, batch: Batch) -> torch.Tensor:
        """Projected features ``[B, k]`` (float32, on the compute device) for one batch."""
        if isinstance(self.projector, FactorizedProjector):
            return self._factorized(batch)
        grads = self.per_example_grads(batch)
        grads = [transform(self.grad_type, n, g, self.adam) for n, g in zip(self.names, grads, strict=True)]
        if isinstance(self.projector, DenseProjector):
            return self.projector.project_segments(grads)
        return self.projector.project(torch.cat(grads, dim=1))  # type: ignore[attr-defined]

    def _factorized(self, batch: Batch) -> torch.Tensor:
        assert isinstance(self.projector, FactorizedProjector)
        return self.projector.combine([f for f, _ in self.factorized_layers(batch)])

    def factorized_layers(self, batch: Batch, *, sides: bool = False
                          ) -> list[tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]] | None]]:
        """Per layer (``projector.layers`` order) of the factorized projector: the first-stage features
        ``[B, k_out*k_in (+k_out)]`` and, with ``sides=True``, each call's projected ``(x', g')`` pair
        (``[B, T, k_in]``, ``[B, T, k_out]``), which EK-FAC's covariance factors need."""
        if self.linear is None or not isinstance(self.projector, FactorizedProjector):
            raise ValueError("GradientComputer.factorized_layers: needs projector='factorized'")
        self.model.eval()
        batch = to_device(batch, self.device)
        mods = {n: m for n, (m, _, _) in self.linear.items()}
        with _requires_grad(self.params), _Capture(mods) as cap:
            loss = self.loss_fn.loss(self.model, batch).sum()
            calls = cap.output_grads(loss)
        out = []
        for name in self.projector.layers:
            f, kept = None, []
            for x, g in calls[name]:
                xp, gp = self.projector.project_sides(name, x, g)
                t = self.projector.layer_features(name, xp, gp)
                f = t if f is None else f + t
                if sides:
                    kept.append((xp.detach(), gp.detach()))
            out.append((f, kept if sides else None))
        return out

    def floor(self, batch: Batch) -> None:
        """Plain forward+backward of the same batch to the same parameters, no features: the speed floor."""
        self.model.eval()
        batch = to_device(batch, self.device)
        with _requires_grad(self.params):
            loss = self.loss_fn.loss(self.model, batch).sum()
            torch.autograd.grad(loss, self.params, allow_unused=True)

    def iter_features(self, batches: Iterator[Batch]) -> Iterator[torch.Tensor]:
        for b in batches:
            if batch_size(b):
                yield self.features(b)
