"""Kernels of a Llama-shaped decoder from its shape alone: prefill, one decode step, a (LoRA) training step.

No weights and no tracing: each transformer block is written down as the kernels a serving or training
engine runs (fused RMSNorm, fused rotary embedding, fused or unfused attention, SwiGLU), with FLOPs at 2
per multiply-add and bytes read plus written once. Blocks are identical, so each block kernel is one
`OpSpec` with ``count = layers``. This is what `leanml.hw.llm` costs, and what the tests check by hand:

* forward GEMM [m x k] @ [k x n]: ``2 m n k``; its backward: input gradient ``2 m n k`` always, weight
  gradient ``2 m n k`` only when the weight is trained (full fine-tuning);
* LoRA on a target [k -> n] with rank r: forward ``x A`` (2 m r k) and ``(x A) B`` (2 m n r); backward
  ``dB`` (2 r n m), ``d(xA)`` (2 m r n), ``dA`` (2 k r m), ``dx`` (2 m k r); the frozen base weight gets no
  weight gradient;
* attention: ``4 b h d`` FLOPs per (query, key) pair, causal pairs only (``s(s+1)/2`` in prefill); K and V
  are read per KV head (grouped-query attention); unfused attention writes and re-reads the scores;
* decode step t: one new token per sequence, attention over the cached ``prompt + t`` keys, every weight read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from leanml.hw.costmodel import OpSpec
from leanml.hw.errors import HwError
from leanml.hw.precision import STORAGE, check_dtype
from leanml.hw.schema import DTYPE_BYTES

LLAMA_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LLMShape:
    """Architecture of a Llama-style decoder (GQA, SwiGLU MLP, RMSNorm, rotary positions)."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    max_context: int
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        for k in ("hidden", "layers", "heads", "kv_heads", "intermediate", "vocab", "max_context"):
            if getattr(self, k) < 1:
                raise HwError(f"LLMShape.{k} must be >= 1, got {getattr(self, k)}")
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise HwError(f"LLMShape: hidden ({self.hidden}) must divide by heads ({self.heads}) and heads by "
                          f"kv_heads ({self.kv_heads})")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def proj_shape(self, target: str) -> tuple[int, int]:
        """(in, out) features of a block's projection."""
        h, kv = self.hidden, self.kv_heads * self.head_dim
        shapes = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                  "gate_proj": (h, self.intermediate), "up_proj": (h, self.intermediate),
                  "down_proj": (self.intermediate, h)}
        if target not in shapes:
            raise HwError(f"lora_targets: unknown projection {target!r}; expected some of {list(_PROJ)}")
        return shapes[target]

    @property
    def block_params(self) -> int:
        """Weights of the GEMMs of all blocks (what each token multiplies through): non-embedding params."""
        return self.layers * sum(i * o for i, o in map(self.proj_shape, _PROJ))

    @property
    def params(self) -> int:
        """All parameters: blocks, norms, embedding and (untied) LM head."""
        norms = (2 * self.layers + 1) * self.hidden
        emb = self.vocab * self.hidden
        return self.block_params + norms + emb * (1 if self.tie_embeddings else 2)

    @classmethod
    def from_config(cls, cfg: Any, name: str = "") -> LLMShape:
        """From a transformers ``LlamaConfig``-like object or dict (hidden_size, num_hidden_layers, ...)."""
        get = cfg.get if isinstance(cfg, dict) else (lambda k, d=None: getattr(cfg, k, d))
        try:
            heads = int(get("num_attention_heads"))
            return cls(name or str(get("name_or_path", "") or get("_name_or_path", "") or "llm"),
                       int(get("hidden_size")), int(get("num_hidden_layers")), heads,
                       int(get("num_key_value_heads", heads) or heads), int(get("intermediate_size")),
                       int(get("vocab_size")), int(get("max_position_embeddings")),
                       bool(get("tie_word_embeddings", False)))
        except (TypeError, ValueError) as e:
            raise HwError("model_config: not a Llama-style config (needs hidden_size, num_hidden_layers, "
                          "num_attention_heads, intermediate_size, vocab_size, max_position_embeddings): "
                          f"{e}") from None


# SmolLM2-135M: the packaged GGUF's metadata (same as the published config); Llama-2-7B: its published config.
PRESETS = {
    "smollm2-135m": LLMShape("smollm2-135m", 576, 30, 9, 3, 1536, 49152, 8192, True),
    "llama-7b": LLMShape("llama-7b", 4096, 32, 32, 32, 11008, 32000, 4096, False),
}


def get_shape(model: str | LLMShape | Any) -> LLMShape:
    """A preset name, an LLMShape, or a Llama-style config."""
    if isinstance(model, LLMShape):
        return model
    if isinstance(model, str):
        if model not in PRESETS:
            raise HwError(f"model: unknown LLM preset {model!r}; presets are {sorted(PRESETS)} (or pass a config)")
        return PRESETS[model]
    return LLMShape.from_config(model)


@dataclass(frozen=True)
class Lora:
    """LoRA adapters of ``rank`` on the named projections of every block."""

    rank: int
    targets: tuple[str, ...] = LLAMA_LORA_TARGETS

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise HwError(f"lora_rank must be an integer >= 1, got {self.rank!r}")
        if not self.targets:
            raise HwError("lora_targets must name at least one projection, e.g. q_proj,k_proj,v_proj,o_proj")
        bad = [t for t in self.targets if t not in _PROJ]
        if bad:
            raise HwError(f"lora_targets: unknown projection(s) {bad}; expected some of {list(_PROJ)}")

    def params(self, shape: LLMShape) -> int:
        return shape.layers * sum(self.rank * (i + o) for i, o in map(shape.proj_shape, self.targets))


def _mm(m: int, n: int, k: int, dt: str, name: str, count: int, out_dt: str | None = None) -> OpSpec:
    """[m x k] @ [k x n] in ``dt`` (output in ``out_dt``)."""
    b, bo = DTYPE_BYTES[dt], DTYPE_BYTES[out_dt or dt]
    return OpSpec("matmul", 2.0 * m * n * k, float((m * k + k * n) * b + m * n * bo), dt, name, count=count,
                  gemm=(1, m, n, k))


def _ew(numel: float, n_in: int, n_out: int, dt: str, name: str, count: int, vclass: str = "",
        flops_per: float = 1.0) -> OpSpec:
    return OpSpec("elementwise", flops_per * numel, float((n_in + n_out) * numel * DTYPE_BYTES[dt]), dt, name,
                  count=count, vclass=vclass)


def _attention(shape: LLMShape, batch: int, sq: int, sk: int, causal: bool, dt: str, fused: bool,
               backward: bool = False) -> list[OpSpec]:
    h, kvh, d, L = shape.heads, shape.kv_heads, shape.head_dim, shape.layers
    pairs = batch * (sq * (2 * sk - sq + 1) / 2 if causal else sq * sk)  # causal: query i sees sk - sq + i + 1 keys
    b = DTYPE_BYTES[dt]
    qo = 2.0 * batch * h * sq * d * b
    kv = 2.0 * batch * kvh * sk * d * b
    flops = 4.0 * h * d * pairs
    tag = "attention backward" if backward else "attention"
    if fused:
        mult = 2.5 if backward else 1.0  # flash backward: 5 GEMMs to the forward's 2
        by = (qo + kv) * (2.0 if backward else 1.0)  # backward reads Q,K,V,O,dO and writes dQ,dK,dV
        gemm = None if backward else (batch * h, sq, sk, d)  # per query head, as the traced flash kernel
        return [OpSpec("attention", mult * flops, by, dt, f"{tag} (fused) b{batch} q{sq} k{sk}", count=L, gemm=gemm)]
    scores = batch * h * sq * sk * b  # unfused: full score matrix is materialised (masked, not skipped)
    mult = 2.0 if backward else 1.0
    return [OpSpec("matmul", mult * 2.0 * h * d * batch * sq * sk, qo / 2 + kv / 2 + scores * mult, dt,
                   f"{tag} QK^T (unfused)", count=L),
            OpSpec("elementwise", 5.0 * batch * h * sq * sk, 2.0 * scores * mult, dt, f"{tag} softmax (unfused)",
                   count=L, vclass="transcendental"),
            OpSpec("matmul", mult * 2.0 * h * d * batch * sq * sk, qo / 2 + kv / 2 + scores * mult, dt,
                   f"{tag} PV (unfused)", count=L)]


def block_forward(shape: LLMShape, batch: int, sq: int, sk: int, dt: str, *, causal: bool, fused: bool,
                  lora: Lora | None = None, kv_write: bool = True) -> list[OpSpec]:
    """One decoder block's forward kernels (count = layers) for ``batch`` x ``sq`` new tokens over ``sk`` keys."""
    L, h, m = shape.layers, shape.hidden, batch * sq
    st = STORAGE[dt]
    kvd = shape.kv_heads * shape.head_dim
    ops = [_ew(m * h, 1, 1, st, "rmsnorm (attn)", L, flops_per=4.0)]
    ops += [_mm(m, shape.proj_shape(p)[1], shape.proj_shape(p)[0], dt, p, L, st) for p in ("q_proj", "k_proj",
                                                                                           "v_proj")]
    ops.append(_ew(m * (h + kvd), 2, 1, st, "rotary q,k", L, flops_per=3.0))
    if kv_write:
        ops.append(OpSpec("copy", 0.0, 2.0 * m * 2 * kvd * DTYPE_BYTES[st], st, "kv-cache write", count=L))
    ops += _attention(shape, batch, sq, sk, causal, st, fused)
    ops.append(_mm(m, h, h, dt, "o_proj", L, st))
    ops.append(_ew(m * h, 2, 1, st, "residual add", L))
    ops.append(_ew(m * h, 1, 1, st, "rmsnorm (mlp)", L, flops_per=4.0))
    ops += [_mm(m, shape.intermediate, h, dt, p, L, st) for p in ("gate_proj", "up_proj")]
    ops.append(_ew(m * shape.intermediate, 2, 1, st, "silu(gate) * up", L, "transcendental", 5.0))
    ops.append(_mm(m, h, shape.intermediate, dt, "down_proj", L, st))
    ops.append(_ew(m * h, 2, 1, st, "residual add", L))
    if lora is not None:
        ops += lora_forward(shape, lora, m, dt)
    return ops


def lora_forward(shape: LLMShape, lora: Lora, m: int, dt: str) -> list[OpSpec]:
    st, L, r = STORAGE[dt], shape.layers, lora.rank
    ops = []
    for t in lora.targets:
        k, n = shape.proj_shape(t)
        ops += [_mm(m, r, k, dt, f"lora_A {t}", L, st), _mm(m, n, r, dt, f"lora_B {t}", L, st),
                _ew(m * n, 2, 1, st, f"lora add {t}", L)]
    return ops


def head_forward(shape: LLMShape, rows: int, dt: str) -> list[OpSpec]:
    """Embedding gather (batch x tokens rows) is done by the caller; final norm + LM head over ``rows`` rows."""
    st = STORAGE[dt]
    return [_ew(rows * shape.hidden, 1, 1, st, "final rmsnorm", 1, flops_per=4.0),
            _mm(rows, shape.vocab, shape.hidden, dt, "lm_head", 1, st)]


def embed(shape: LLMShape, tokens: int, dt: str) -> OpSpec:
    st = STORAGE[dt]
    return OpSpec("copy", 0.0, 2.0 * tokens * shape.hidden * DTYPE_BYTES[st], st, "embedding gather")


def _weights_streamed(ops: list[OpSpec]) -> list[OpSpec]:
    """Each weight is used once per pass over the model: between two uses of one GEMM's weight the whole
    pass's bytes go by, so its operands come from the memory level that holds the pass (reuse distance)."""
    from dataclasses import replace

    passed = sum(o.bytes * o.count for o in ops)
    return [replace(o, working_set=max(passed, o.bytes)) if o.kind == "matmul" else o for o in ops]


def prefill_ops(shape: LLMShape, batch: int, prompt_len: int, dt: str, fused: bool = True) -> list[OpSpec]:
    """Prefill: the whole prompt through every block (causal), KV cache written, logits of the last position."""
    return _weights_streamed([embed(shape, batch * prompt_len, dt)]
                             + block_forward(shape, batch, prompt_len, prompt_len, dt, causal=True, fused=fused)
                             + head_forward(shape, batch, dt))


def decode_step_ops(shape: LLMShape, batch: int, context: int, dt: str, fused: bool = True) -> list[OpSpec]:
    """One decode step: a new token per sequence attending over ``context`` cached keys (itself included)."""
    return _weights_streamed([embed(shape, batch, dt)]
                             + block_forward(shape, batch, 1, context, dt, causal=False, fused=fused)
                             + head_forward(shape, batch, dt))


def _backward_of(op: OpSpec, trained: bool) -> list[OpSpec]:
    """Backward kernels of one forward op: GEMMs get an input-gradient GEMM (+ weight gradient if trained)."""
    if op.kind == "matmul":
        _, m, n, k = op.gemm or (1, 0, 0, 0)  # forward [m x k] @ [k x n]
        out = [OpSpec("matmul", op.flops, op.bytes, op.dtype, f"{op.name} dX", count=op.count,
                      gemm=(1, m, k, n) if op.gemm else None)]  # dY [m x n] @ W^T [n x k]
        if trained:
            out.append(OpSpec("matmul", op.flops, op.bytes, op.dtype, f"{op.name} dW", count=op.count,
                              gemm=(1, k, n, m) if op.gemm else None))  # X^T [k x m] @ dY [m x n]
        return out
    if op.kind == "elementwise":  # reads the output gradient and the saved input(s), writes input gradient(s)
        return [OpSpec("elementwise", 2.0 * op.flops, 2.0 * op.bytes, op.dtype, f"{op.name} backward",
                       count=op.count, vclass=op.vclass)]
    return []  # copies (embedding gather, KV write) of a training step have no backward GEMM work


def train_ops(shape: LLMShape, batch: int, seq: int, dt: str, lora: Lora | None = None,
              fused: bool = True) -> list[OpSpec]:
    """Forward + loss + backward (+ Adam on the trained weights) of a causal-LM training step.

    With ``lora`` only the adapters are trained: the frozen base runs forward and input-gradient backward."""
    m, st = batch * seq, STORAGE[dt]
    base = [o for o in block_forward(shape, batch, seq, seq, dt, causal=True, fused=fused, kv_write=False)
            if o.kind != "attention" and "(unfused)" not in o.name]
    attn = _attention(shape, batch, seq, seq, True, st, fused)
    head = head_forward(shape, m, dt)
    fwd = [embed(shape, m, dt)] + base + attn + head
    loss = [_ew(m * shape.vocab, 1, 1, "fp32", "cross-entropy (log-softmax)", 1, "transcendental", 5.0)]
    bwd = [b for o in base + head for b in _backward_of(o, lora is None)]
    bwd += _attention(shape, batch, seq, seq, True, st, fused, backward=True)
    bwd += loss  # the softmax gradient pass
    if lora is not None:
        for t in lora.targets:
            k, n = shape.proj_shape(t)
            r, L = lora.rank, shape.layers
            fwd += [_mm(m, r, k, dt, f"lora_A {t}", L, st), _mm(m, n, r, dt, f"lora_B {t}", L, st),
                    _ew(m * n, 2, 1, st, f"lora add {t}", L)]
            bwd += [_mm(r, n, m, dt, f"lora_B {t} dW", L, st), _mm(m, r, n, dt, f"lora_B {t} dX", L, st),
                    _mm(k, r, m, dt, f"lora_A {t} dW", L, st), _mm(m, k, r, dt, f"lora_A {t} dX", L, st),
                    _ew(m * k, 2, 1, st, f"lora dX accumulate {t}", L)]
        trained = lora.params(shape)
    else:
        trained = shape.params
    adam = _ew(trained, 4, 3, "fp32", "adam step (fp32 master weights, m, v)", 1, flops_per=10.0)
    return _weights_streamed(fwd + loss + bwd + [adam])


def check_run(shape: LLMShape, batch: int, prompt_len: int, gen_len: int, dtype: str) -> None:
    """Clear errors for bad phase parameters (checked before any costing)."""
    check_dtype(dtype)
    for k, v in (("batch", batch), ("prompt_len", prompt_len)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise HwError(f"{k} must be an integer >= 1, got {v!r}")
    if isinstance(gen_len, bool) or not isinstance(gen_len, int) or gen_len < 0:
        raise HwError(f"gen_len must be an integer >= 0, got {gen_len!r}")
    if prompt_len + gen_len > shape.max_context:
        raise HwError(f"context: prompt_len + gen_len = {prompt_len + gen_len} is longer than {shape.name}'s "
                      f"maximum context of {shape.max_context} tokens; shorten the prompt or the generation")
