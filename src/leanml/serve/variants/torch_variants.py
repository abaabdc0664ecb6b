"""PyTorch variant builders: int8 quantization, bf16, magnitude and 2:4 pruning, distillation.

Each builder returns a new module and leaves the base untouched. What is real on a CPU:

* dynamic int8 (``quantize_dynamic``): Linear layers run int8 GEMMs (fbgemm/x86) - a real speedup
  for Linear-heavy models, weights 4x smaller.
* static int8 (``quantize_static_int8``): convolutions too, calibrated on sample inputs.
* bf16: weights halve; speed depends on the CPU's bf16 support (often slower without AMX/AVX512-BF16).
* unstructured and 2:4 pruning: zeros in dense tensors. Dense CPU kernels do not skip zeros, so there
  is no speedup on CPU; 2:4 only pays off on GPUs with sparse tensor cores. Served anyway, because
  they trade accuracy for (potential) cost and the profile shows exactly what they cost here.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from leanml.serve.variants.base import ClassifierModel, serialized_size


class Standardize(nn.Module):
    """Fixed feature standardization inside the model, so the served input is the raw feature vector."""

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(np.where(std > 0, std, 1.0), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class TorchClassifierModel(ClassifierModel):
    """A torch module returning logits, served as class probabilities (the serving `Model` of a torch
    variant; not `leanml.select.learner.TorchClassifierLearner`, the selection study's trainable learner)."""

    def __init__(self, module: nn.Module, input_shape: tuple[int, ...], n_classes: int,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__(input_shape, n_classes)
        self.module = module.eval()
        self.dtype = dtype

    @torch.inference_mode()
    def predict(self, X: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
        if self.dtype != torch.float32:
            x = x.to(self.dtype)
        return torch.softmax(self.module(x).float(), dim=1).numpy()

    def size_bytes(self) -> int | None:
        return serialized_size(self.module)


def _quiet_quant():
    """torch.ao.quantization warns that it moves to torchao; the kernels are the same."""
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", UserWarning)
    return ctx


def quantize_dynamic_int8(module: nn.Module) -> nn.Module:
    """Dynamic int8 quantization of every Linear layer (weights int8, activations quantized per batch)."""
    from torch.ao.quantization import quantize_dynamic

    ctx = _quiet_quant()
    try:
        return quantize_dynamic(copy.deepcopy(module).eval(), {nn.Linear}, dtype=torch.qint8)
    finally:
        ctx.__exit__(None, None, None)


class _QuantWrapped(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        from torch.ao.quantization import DeQuantStub, QuantStub

        self.quant, self.body, self.dequant = QuantStub(), body, DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.body(self.quant(x)))


def quantize_static_int8(module: nn.Sequential, calibration: np.ndarray) -> nn.Module:
    """Static int8 quantization of a Sequential CNN: Conv-BN-ReLU fused, calibrated on sample inputs."""
    from torch.ao import quantization as tq

    if not isinstance(module, nn.Sequential):
        raise TypeError("quantize_static_int8: expects an nn.Sequential (as leanml.models.build_cnn returns)")
    if len(calibration) == 0:
        raise ValueError("quantize_static_int8: calibration needs at least one example")
    ctx = _quiet_quant()
    try:
        body = copy.deepcopy(module).eval()
        mods = list(body)
        groups = []
        for i in range(len(mods) - 2):
            if (isinstance(mods[i], nn.Conv2d) and isinstance(mods[i + 1], nn.BatchNorm2d)
                    and isinstance(mods[i + 2], nn.ReLU)):
                groups.append([str(i), str(i + 1), str(i + 2)])
        if groups:
            body = tq.fuse_modules(body, groups)
        wrapped = _QuantWrapped(body).eval()
        engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "fbgemm"
        torch.backends.quantized.engine = engine
        wrapped.qconfig = tq.get_default_qconfig(engine)
        prepared = tq.prepare(wrapped)
        with torch.inference_mode():
            x = torch.as_tensor(np.asarray(calibration, dtype=np.float32))
            for i in range(0, len(x), 256):
                prepared(x[i : i + 256])
        return tq.convert(prepared)
    finally:
        ctx.__exit__(None, None, None)


def to_bf16(module: nn.Module) -> nn.Module:
    """A bfloat16 copy (inputs are cast by `TorchClassifierModel(dtype=torch.bfloat16)`)."""
    return copy.deepcopy(module).to(torch.bfloat16).eval()


def _prunable(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def prune_magnitude(module: nn.Module, sparsity: float) -> nn.Module:
    """Unstructured L1 (magnitude) pruning: the smallest ``sparsity`` fraction of each layer's weights set to 0."""
    from torch.nn.utils import prune

    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"prune_magnitude: sparsity must be in [0, 1), got {sparsity}")
    out = copy.deepcopy(module).eval()
    for m in _prunable(out):
        prune.l1_unstructured(m, "weight", amount=float(sparsity))
        prune.remove(m, "weight")  # make the zeros permanent, drop the mask re-parametrization
    return out


def prune_magnitude_finetuned(module: nn.Module, sparsity: float, X: np.ndarray, y: np.ndarray, *,
                              epochs: int = 1, batch_size: int = 128, lr: float = 1e-3, seed: int = 0) -> nn.Module:
    """Magnitude pruning, then a short fine-tune with the pruning masks held fixed (cosine lr decay).

    The zeros stay zeros (the mask re-parametrization is kept while training, then made permanent);
    the surviving weights and the BatchNorm statistics adapt to the pruned network.
    """
    from torch.nn.utils import prune

    from leanml.models import fit

    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"prune_magnitude_finetuned: sparsity must be in [0, 1), got {sparsity}")
    if epochs < 1:
        raise ValueError(f"prune_magnitude_finetuned: epochs must be >= 1, got {epochs}")
    out = copy.deepcopy(module)
    layers = _prunable(out)
    for m in layers:
        prune.l1_unstructured(m, "weight", amount=float(sparsity))
    fit(out, X, y, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, schedule="cosine")
    for m in layers:
        prune.remove(m, "weight")
    return out.eval()


def mask_2_4(weight: torch.Tensor) -> torch.Tensor:
    """2:4 mask: in every group of 4 consecutive input weights, keep the 2 of largest magnitude."""
    w = weight.detach().reshape(weight.shape[0], -1)
    if w.shape[1] % 4:
        raise ValueError(f"2:4 pruning needs the input size ({w.shape[1]}) to be a multiple of 4")
    groups = w.abs().reshape(w.shape[0], -1, 4)
    keep = groups.topk(2, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.reshape(weight.shape)


def prune_2_4(module: nn.Module) -> nn.Module:
    """Semi-structured 2:4 pruning of every Linear/Conv2d whose input size is a multiple of 4.

    Layers that do not fit the pattern (e.g. a first conv with 3*3*3 = 27 inputs) stay dense and are
    listed in the returned module's ``leanml_dense_layers`` attribute.
    """
    out = copy.deepcopy(module).eval()
    dense = []
    with torch.no_grad():
        for name, m in out.named_modules():
            if not isinstance(m, (nn.Linear, nn.Conv2d)):
                continue
            try:
                m.weight.mul_(mask_2_4(m.weight))
            except ValueError:
                dense.append(name)
    out.leanml_dense_layers = dense
    return out


def sparsity(module: nn.Module) -> float:
    """Fraction of zero weights over all Linear/Conv2d layers."""
    tot = zeros = 0
    for m in _prunable(module):
        w = m.weight
        if w.is_quantized:
            w = w.dequantize()
        tot += w.numel()
        zeros += int((w == 0).sum())
    return zeros / tot if tot else 0.0


def distill(teacher: nn.Module, student: nn.Module, X: np.ndarray, *, temperature: float = 2.0,
            epochs: int = 5, batch_size: int = 128, lr: float = 2e-3, y: np.ndarray | None = None,
            alpha: float = 0.0, seed: int = 0, schedule: str = "constant") -> nn.Module:
    """Train ``student`` on the teacher's soft targets (Hinton et al. 2015: KL at temperature T, x T^2).

    ``alpha`` > 0 mixes in the hard-label cross-entropy on ``y``. ``schedule``: "constant" learning
    rate or "cosine" decay from ``lr`` to 0 over all steps.
    """
    if temperature <= 0:
        raise ValueError(f"distill: temperature must be > 0, got {temperature}")
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"distill: schedule must be 'constant' or 'cosine', got {schedule!r}")
    if alpha > 0 and y is None:
        raise ValueError("distill: alpha > 0 needs the labels y")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    Xt = torch.as_tensor(np.asarray(X, dtype=np.float32))
    yt = torch.as_tensor(np.asarray(y)) if y is not None else None
    teacher = teacher.eval()
    with torch.inference_mode():
        soft = torch.cat([teacher(Xt[i : i + 512]) for i in range(0, len(Xt), 512)]).float()
    soft = soft.clone()
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    student.train()
    total, step = epochs * -(-len(Xt) // batch_size), 0
    for _ in range(epochs):
        perm = torch.randperm(len(Xt), generator=gen)
        for s in range(0, len(Xt), batch_size):
            if schedule == "cosine":
                for group in opt.param_groups:
                    group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / total))
            step += 1
            idx = perm[s : s + batch_size]
            logits = student(Xt[idx])
            loss = nn.functional.kl_div(
                torch.log_softmax(logits / temperature, 1), torch.softmax(soft[idx] / temperature, 1),
                reduction="batchmean") * temperature**2
            if alpha > 0:
                loss = (1 - alpha) * loss + alpha * nn.functional.cross_entropy(logits, yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return student.eval()


def torch_variant_params(module: nn.Module) -> dict[str, Any]:
    """Facts about a module worth showing next to its profile."""
    n = sum(p.numel() for p in module.parameters())
    return {"parameters": int(n), "weight_sparsity": round(sparsity(module), 4)}
