"""Which parameters a gradient is taken with respect to: LoRA adapters, named modules, or all trainable ones."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import nn


def select_params(model: nn.Module, spec: str | Sequence[str] = "trainable") -> list[str]:
    """Names of the parameters in the subset ``spec``, in ``model.named_parameters()`` order.

    ``spec`` is ``"trainable"`` (every parameter with ``requires_grad``), ``"lora"`` (peft adapter
    weights, names containing ``lora_``), ``"all"``, or a list of module names (or name prefixes)
    whose parameters are taken.
    """
    named = list(model.named_parameters())
    if isinstance(spec, str):
        if spec == "trainable":
            names = [n for n, p in named if p.requires_grad]
        elif spec == "lora":
            names = [n for n, _ in named if "lora_" in n]
        elif spec == "all":
            names = [n for n, _ in named]
        else:
            spec = [spec]
    if not isinstance(spec, str):
        prefixes = list(spec)
        modules = dict(model.named_modules())
        missing = [p for p in prefixes if p not in modules and not any(n.startswith(p + ".") for n, _ in named)]
        if missing:
            raise ValueError(f"params: no module named {missing} in the model; "
                             f"some module names: {list(modules)[1:8]}")
        names = [n for n, _ in named if any(n == p or n.startswith(p + ".") for p in prefixes)]
    if not names:
        raise ValueError(f"params: the subset {spec!r} selects no parameters "
                         "(for 'lora', attach adapters first; for 'trainable', unfreeze something)")
    return names


def linear_modules_for(model: nn.Module, names: Sequence[str]) -> dict[str, tuple[nn.Linear, bool, bool]] | None:
    """``{module name: (module, weight selected, bias selected)}`` if all names are Linear weights/biases, else None."""
    modules = dict(model.named_modules())
    out: dict[str, tuple[nn.Linear, bool, bool]] = {}
    for n in names:
        mod_name, _, leaf = n.rpartition(".")
        mod = modules.get(mod_name)
        if not isinstance(mod, nn.Linear) or leaf not in ("weight", "bias"):
            return None
        m, w, b = out.get(mod_name, (mod, False, False))
        out[mod_name] = (m, w or leaf == "weight", b or leaf == "bias")
    return out


def architecture_fingerprint(model: nn.Module, names: Sequence[str]) -> str:
    """Hash of every parameter's name, shape and dtype, and of which ones are selected (not the values)."""
    h = hashlib.sha256()
    sel = set(names)
    for n, p in model.named_parameters():
        h.update(f"{n}|{tuple(p.shape)}|{p.dtype}|{int(n in sel)};".encode())
    return h.hexdigest()[:32]


@torch.no_grad()
def weights_fingerprint(model: nn.Module) -> str:
    """Hash of every parameter and buffer value: identifies one checkpoint of one model."""
    h = hashlib.blake2b(digest_size=16)
    for n, t in list(model.named_parameters()) + list(model.named_buffers()):
        h.update(n.encode())
        h.update(t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
