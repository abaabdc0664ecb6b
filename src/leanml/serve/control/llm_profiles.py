"""LLM variant profiles: prefill and decode cost by batch and context, quality with sample size and CI.

What the LLM planner (`leanml.serve.control.llm_planner`) and the LLM simulator (`leanml.serve.sim.llm_sim`)
cost a generation request with. A request of prompt P and output O on variant v costs one prefill of P
tokens (time per prompt token, measured by batch size and prompt length) and O decode steps (time per
step, measured by running batch size and context length; a step advances every running request by one
token, which is why continuous batching pays on a memory-bound decode).

Profiles are measured on this machine by `benchmarks/llm_profiles_measure.py`; for a device that was
not profiled, `LLMProfile.from_cost_fn` builds the same tables from a callable (e.g. a hardware model's
predicted prefill/decode times), so planner and simulator read one type either way.

Quality figures carry their sample size and a 95% confidence interval (`QualityFigure`), per KV-cache
cap (context pruning: the prompt is cut from the left to the cap) where that was measured. The
planner's accuracy is `LLMProfile.accuracy(kv_cap)`: the figure named by ``accuracy_metric``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from leanml.io import atomic_write_text

FULL = 0  # key of quality measured with the whole context (no KV cap)

# A cost function for devices without a profile: (phase, batch, tokens) -> milliseconds, where phase is
# "prefill" (tokens = prompt tokens per sequence; returns the whole batch's prefill time) or "decode"
# (tokens = context length per sequence; returns one decode step of the whole batch).
CostFn = Callable[[str, int, int], float]


@dataclass(frozen=True)
class QualityFigure:
    """One measured quality number: its value, sample size and 95% confidence interval."""

    metric: str
    value: float
    n: int
    ci_low: float
    ci_high: float

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"QualityFigure {self.metric}: n must be >= 1, got {self.n}")
        if not self.ci_low <= self.value <= self.ci_high:
            raise ValueError(f"QualityFigure {self.metric}: value {self.value} outside its CI "
                             f"[{self.ci_low}, {self.ci_high}]")


def wilson(successes: int, n: int, metric: str = "accuracy", z: float = 1.959964) -> QualityFigure:
    """A proportion with its Wilson score interval (95% by default)."""
    # the one Wilson interval; imported here, since importing the variants package pulls in the prototypes
    from leanml.serve.variants.llm_quality import wilson as interval

    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"wilson: need 0 <= successes <= n and n >= 1, got {successes}/{n}")
    p = successes / n
    lo, hi = interval(successes, n, z)
    return QualityFigure(metric, p, n, min(p, lo), max(p, hi))


def _interp(table: dict[int, float], x: float) -> float:
    """Piecewise-linear interpolation over the keys, linear extrapolation past the ends."""
    xs = sorted(table)
    if len(xs) == 1:
        return table[xs[0]]
    if x <= xs[0]:
        lo, hi = xs[0], xs[1]
    elif x >= xs[-1]:
        lo, hi = xs[-2], xs[-1]
    else:
        hi = next(k for k in xs if k >= x)
        lo = xs[xs.index(hi) - 1]
    f = (x - lo) / (hi - lo)
    return max(0.0, table[lo] + f * (table[hi] - table[lo]))


def _grid(table: dict[int, dict[int, float]], b: float, x: float, *, clamp_batch: bool = False) -> float:
    """Bilinear interpolation of ``table[batch][x]`` (each row interpolated in x, then across batches);
    ``clamp_batch``: outside the measured batches take the nearest row instead of extrapolating."""
    if clamp_batch:
        b = min(max(b, min(table)), max(table))
    return _interp({bb: _interp(row, x) for bb, row in table.items()}, b)


@dataclass
class LLMProfile:
    """Costs and quality of one LLM variant on one device.

    ``prefill_ms`` maps batch size -> prompt length -> ms for the whole batch's prefill; ``decode_ms``
    maps running batch size -> context length -> ms of one decode step of the whole batch.
    ``kv_bytes_per_token`` is the KV cache of one token of one sequence (all layers, K and V).
    """

    name: str
    prefill_ms: dict[int, dict[int, float]]
    decode_ms: dict[int, dict[int, float]]
    kv_bytes_per_token: int
    quality: dict[int, dict[str, QualityFigure]] = field(default_factory=dict)  # kv cap (FULL=0) -> metric -> fig
    accuracy_metric: str = "next_token_accuracy"
    memory_bytes: int | None = None
    energy_j_per_token: float | None = None  # None: not measurable here (say why in extra["energy_note"])
    device: str = "local"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for label, t in (("prefill_ms", self.prefill_ms), ("decode_ms", self.decode_ms)):
            if not t or any(not row for row in t.values()):
                raise ValueError(f"LLMProfile {self.name}: {label} needs at least one batch size with one length")
            if any(int(b) < 1 or any(v < 0 or not math.isfinite(v) for v in row.values()) for b, row in t.items()):
                raise ValueError(f"LLMProfile {self.name}: {label} holds a batch < 1 or a negative/non-finite time")
        if self.kv_bytes_per_token <= 0:
            raise ValueError(f"LLMProfile {self.name}: kv_bytes_per_token must be positive")
        # ms per prompt token by batch and length (what prefill_time_ms interpolates; not a field)
        self._per_token = {int(b): {int(L): ms / (int(b) * int(L)) for L, ms in row.items()}
                           for b, row in self.prefill_ms.items()}

    # ------------------------------------------------------------------ costs
    def prefill_time_ms(self, tokens: float, seqs: int = 1) -> float:
        """ms to prefill ``seqs`` sequences of ``tokens`` prompt tokens each, in one forward pass.

        Per token, past the largest measured batch the cost stays at that batch's: a linear extrapolation of
        a per-token saving (bf16: 0.905 ms at batch 1, 0.756 at 4, 128 tokens) reaches zero by batch 20."""
        if tokens <= 0:
            return 0.0
        per_token = _grid(self._per_token, max(1, seqs), tokens, clamp_batch=True)
        return per_token * tokens * max(1, seqs)

    def chunked_prefill_ms(self, tokens: float, chunk: int) -> float:
        """ms to prefill one sequence of ``tokens`` in passes of ``chunk`` tokens, each priced as its own
        forward (what `leanml.serve.sim.llm_sim` charges an iteration's chunk)."""
        if tokens <= 0:
            return 0.0
        if chunk < 1:
            raise ValueError(f"chunked_prefill_ms: chunk must be >= 1, got {chunk}")
        full, rest = divmod(float(tokens), chunk)
        return full * self.prefill_time_ms(chunk) + self.prefill_time_ms(rest)

    def step_ms(self, batch: int, context: float) -> float:
        """ms of one decode step advancing ``batch`` running sequences whose mean context is ``context``."""
        if batch <= 0:
            return 0.0
        return _grid(self.decode_ms, batch, max(1.0, context))

    def kv_bytes(self, tokens: float) -> float:
        """KV-cache bytes of one sequence holding ``tokens`` tokens."""
        return float(tokens) * self.kv_bytes_per_token

    # ---------------------------------------------------------------- quality
    def kv_caps(self) -> list[int]:
        """KV caps with measured quality (FULL = 0 means no cap)."""
        return sorted(k for k, m in self.quality.items() if self.accuracy_metric in m)

    def figure(self, kv_cap: int = FULL, metric: str | None = None) -> QualityFigure | None:
        return self.quality.get(int(kv_cap), {}).get(metric or self.accuracy_metric)

    def accuracy(self, kv_cap: int = FULL) -> float:
        """The planner's accuracy at ``kv_cap``; a clear error when that cap's quality was not measured."""
        f = self.figure(kv_cap)
        if f is None:
            raise KeyError(f"LLMProfile {self.name}: no {self.accuracy_metric} measured at kv_cap={kv_cap} "
                           f"(measured caps: {self.kv_caps()}); profile it or leave that cap out")
        return f.value

    # ------------------------------------------------------- other devices
    @classmethod
    def from_cost_fn(cls, name: str, cost_fn: CostFn, *, kv_bytes_per_token: int,
                     quality: dict[int, dict[str, QualityFigure]], device: str,
                     batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32),
                     lengths: tuple[int, ...] = (128, 512, 2048), **kw: Any) -> LLMProfile:
        """A profile whose tables come from ``cost_fn`` (an unprofiled device): quality is the variant's own
        (measured elsewhere), costs are the callable's at each batch size and length."""
        pre = {b: {L: float(cost_fn("prefill", b, L)) for L in lengths} for b in batches}
        dec = {b: {L: float(cost_fn("decode", b, L)) for L in lengths} for b in batches}
        extra = {"cost_source": "cost_fn", **kw.pop("extra", {})}
        return cls(name, pre, dec, kv_bytes_per_token, quality, device=device, extra=extra, **kw)

    @property
    def source(self) -> str:
        """``"measured"`` (profiled on its device) or ``"predicted"`` (costs from a hardware model)."""
        return str(self.extra.get("source", "measured"))


# the dtype each profiled SmolLM2 variant computes in, for the hardware model (int8: weights and GEMMs)
VARIANT_DTYPE = {"fp32": "fp32", "bf16": "bf16", "int8": "int8", "int8_sq": "int8", "pruned": "fp32"}


def predicted_profile(measured: LLMProfile, device: str, *, model: str = "smollm2-135m",
                      dtype: str | None = None) -> LLMProfile:
    """``measured``'s variant on a catalog ``device`` it was never profiled on: prefill and decode-step times
    per batch and length from `leanml.hw.llm` (a roofline prediction from the catalog entry), quality and
    KV bytes per token the measured variant's own (the same weights compute the same tokens). The profile
    says ``source = "predicted"`` and which model, dtype and calibration its costs come from."""
    from leanml.hw.llm import decode_step, predict_prefill

    dt = dtype or VARIANT_DTYPE.get(measured.name)
    if dt is None:
        raise ValueError(f"predicted_profile: no dtype known for variant {measured.name!r}; pass dtype= "
                         f"(one of fp32, bf16, int8; known variants: {sorted(VARIANT_DTYPE)})")

    def cost(phase: str, batch: int, tokens: int) -> float:
        fn = predict_prefill if phase == "prefill" else decode_step
        return 1000.0 * fn(model, device, dt, batch, tokens).time_s

    return LLMProfile.from_cost_fn(
        measured.name, cost, kv_bytes_per_token=measured.kv_bytes_per_token, quality=measured.quality,
        device=device, lengths=(128, 512, 1024, 2048, 8192), accuracy_metric=measured.accuracy_metric,
        memory_bytes=measured.memory_bytes,
        extra={"source": "predicted", "cost_source": f"leanml.hw.llm ({model}, {dt}) on {device}",
               "quality_from": f"measured on {measured.device}"})


def profiles_for_device(measured: dict[str, LLMProfile], device: str | None) -> dict[str, LLMProfile]:
    """The profiles a planner or simulator uses on ``device``: the measured ones where ``device`` is None or
    the device they were measured on, else each predicted for that catalog device (`predicted_profile`)."""
    if device is None or all(p.device == device for p in measured.values()):
        return measured
    return {n: predicted_profile(p, device) for n, p in measured.items()}


# ------------------------------------------------------------------ files
def _int_keys(d: dict[str, Any]) -> dict[int, Any]:
    return {int(k): v for k, v in d.items()}


def llm_profile_to_dict(p: LLMProfile) -> dict[str, Any]:
    d = asdict(p)
    d["quality"] = {str(k): {m: asdict(f) for m, f in row.items()} for k, row in p.quality.items()}
    return d


def llm_profile_from_dict(d: dict[str, Any]) -> LLMProfile:
    try:
        return LLMProfile(
            d["name"],
            {b: {int(L): float(v) for L, v in row.items()} for b, row in _int_keys(d["prefill_ms"]).items()},
            {b: {int(L): float(v) for L, v in row.items()} for b, row in _int_keys(d["decode_ms"]).items()},
            int(d["kv_bytes_per_token"]),
            {k: {m: QualityFigure(**f) for m, f in row.items()} for k, row in _int_keys(d.get("quality", {})).items()},
            d.get("accuracy_metric", "next_token_accuracy"), d.get("memory_bytes"), d.get("energy_j_per_token"),
            d.get("device", "local"), d.get("extra", {}))
    except KeyError as e:
        raise ValueError(f"LLM profile entry lacks field {e}; re-measure with benchmarks/llm_profiles_measure.py") \
            from None


def save_llm_profiles(path: str | Path, profiles: dict[str, LLMProfile], meta: dict[str, Any] | None = None) -> None:
    """Write profiles as JSON (atomically)."""
    doc = {"format": "leanml-llm-profiles/1", "meta": meta or {},
           "variants": {n: llm_profile_to_dict(p) for n, p in profiles.items()}}
    atomic_write_text(path, json.dumps(doc, indent=1, sort_keys=True))


def load_llm_profiles(path: str | Path) -> dict[str, LLMProfile]:
    doc = json.loads(Path(path).read_text())
    if doc.get("format") != "leanml-llm-profiles/1":
        raise ValueError(f"{path}: not an LLM profile file (format {doc.get('format')!r}); "
                         "write it with save_llm_profiles")
    return {n: llm_profile_from_dict(d) for n, d in doc["variants"].items()}
