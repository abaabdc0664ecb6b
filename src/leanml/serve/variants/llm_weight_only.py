"""Weight-only int8 (per output channel) and int4 (group-wise) linears for CPU decoding.

Activations stay bf16; each weight is stored quantized and multiplied by torch's own CPU kernels,
``aten._weight_int8pack_mm`` and ``aten._weight_int4pack_mm_for_cpu`` (the ones gpt-fast uses), which
read the narrow weight directly instead of dequantizing it first. The module here only quantizes and
packs. Why not torchao (``benchmarks/serve_llm.py`` tables it beside ours as ``torchao_int8wo``): its
``Int8WeightOnlyConfig`` (0.18) dequantizes per call on CPU: ``lm_head`` (49152 x 576) at one row took
28.5 ms against 3.3 ms in bf16 and 1.2 ms through the int8 kernel
(``benchmarks/diagnostics/llm_kernels_check.py``); and its int4 formats have no CPU path
("Int4PlainInt32Tensor does not support device 'cpu'").
"""

from __future__ import annotations

import torch
from torch import nn

INT4_GROUP = 32  # int4 weights share one scale and zero per 32 input channels (the usual 32-128 range)


class Int8WeightLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` int8, one symmetric scale per output channel; ``x`` is cast to bf16."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        # the kernel reads bf16 scales: round up (so no weight clips) and quantize against the rounded scale
        scale = (w.abs().amax(1).clamp_min(1e-8) / 127.0 * (1 + 2.0 ** -8)).to(torch.bfloat16)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("qweight", torch.clamp(torch.round(w / scale.float()[:, None]), -127, 127)
                             .to(torch.int8))
        self.register_buffer("scales", scale)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(torch.bfloat16), False)

    def dequantized(self) -> torch.Tensor:
        """The float32 weight this module multiplies by (for tests and error analysis)."""
        return self.qweight.float() * self.scales.float()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, self.in_features).to(torch.bfloat16),
                                               self.qweight, self.scales)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


class Int4WeightLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` 4-bit, asymmetric, one scale and zero per ``group`` input channels.

    Stored as the CPU kernel's packed layout; dequantization is ``(q - 8) * scale + zero`` per group.
    """

    def __init__(self, linear: nn.Linear, group: int = INT4_GROUP) -> None:
        super().__init__()
        n, k = linear.out_features, linear.in_features
        if k % group:
            raise ValueError(f"int4: in_features {k} is not a multiple of the group size {group}")
        w = linear.weight.detach().float().reshape(n, k // group, group)
        lo, hi = w.amin(-1), w.amax(-1)
        # the kernel reads bf16 scales and zeros: quantize against the rounded values it will use
        scale = ((hi - lo) / 15.0).clamp_min(1e-8).to(torch.bfloat16).float()
        zero = (lo + 8.0 * scale).to(torch.bfloat16).float()
        q = torch.clamp(torch.round((w - zero[..., None]) / scale[..., None]) + 8, 0, 15).to(torch.int32)
        q = q.reshape(n, k)
        self.in_features, self.out_features, self.group = k, n, group
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))
        self.register_buffer("scales_zeros", torch.stack([scale, zero], -1).transpose(0, 1)
                             .contiguous().to(torch.bfloat16))  # [k / group, n, 2], the kernel's layout
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(torch.bfloat16), False)

    def dequantized(self) -> torch.Tensor:
        """The float32 weight this module multiplies by: one identity-matrix product through the kernel."""
        eye = torch.eye(self.in_features, dtype=torch.bfloat16)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.packed, self.group,
                                                          self.scales_zeros).float().t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()  # the kernel needs a dense input
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(a, self.packed, self.group, self.scales_zeros)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


class Float32Stream(nn.Module):
    """``inner`` (a bf16 linear) inside a float32 model: its input cast to bf16, its output back to float32,
    so the residual stream, the norms and the KV cache stay float32 and only the matmuls are 16-bit (llama.cpp's
    graphs likewise keep activations float32 around quantized weights)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.to(torch.bfloat16)).to(x.dtype)


def quantize_weight_only(model: nn.Module, bits: int, *, group: int = INT4_GROUP,
                         head_bits: int | None = None, float32_stream: bool = False) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` by its weight-only int8 or int4 form, in place; returns
    ``model``. ``head_bits`` sets ``lm_head`` apart (4, 8, or 16 to keep it bf16; default ``bits``).

    By default the whole model is cast to bf16 (activations, norms, KV cache). ``float32_stream`` keeps the
    model float32 and runs each linear in bf16 through `Float32Stream` (the ``_f32`` variants; what it changes
    on SmolLM2 is measured in docs/serve.md).
    A tied ``lm_head`` is untied by the replacement: the input embedding keeps its dtype.
    """
    head = bits if head_bits is None else head_bits
    if bits not in (4, 8):
        raise ValueError(f"weight-only quantization: bits must be 4 or 8, got {bits!r}")
    if head not in (4, 8, 16):
        raise ValueError(f"weight-only quantization: head_bits must be 4 or 8 (or 16: bf16), got {head!r}")
    if not float32_stream:
        model = model.to(torch.bfloat16)
    plan = {name: (m, head if name == "lm_head" else bits) for name, m in model.named_modules()
            if isinstance(m, nn.Linear)}
    if not float32_stream:  # a bf16 model's lm_head is already the bf16 head
        plan = {name: mb for name, mb in plan.items() if mb[1] != 16}
    for name, (lin, b) in plan.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if b == 16:  # a new bf16 Linear: converting ``lin`` would convert the embedding it may be tied to
            q: nn.Module = nn.Linear(lin.in_features, lin.out_features, lin.bias is not None,
                                     dtype=torch.bfloat16).requires_grad_(False)
            q.weight.copy_(lin.weight.detach())
            if lin.bias is not None:
                q.bias.copy_(lin.bias.detach())
        else:
            q = Int8WeightLinear(lin) if b == 8 else Int4WeightLinear(lin, group)
        setattr(parent, child, Float32Stream(q) if float32_stream else q)
    if getattr(model, "config", None) is not None and "lm_head" in plan:
        model.config.tie_word_embeddings = False  # a later tie_weights() must not put the float head back
    return model.eval()
