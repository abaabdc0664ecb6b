"""Helpers for the serving tests (a module with a unique name, imported by the test files)."""

from __future__ import annotations

import threading
import time

import numpy as np

from leanml.serve.types import LatencyProfile, VariantProfile
from leanml.serve.variants.base import ClassifierModel, Variant

TOKEN = "test-admin-token-123"


def digits_config(**dep):
    from leanml.serve.config import parse_config

    d = {"prototype": "digits", "profile": {"batch_sizes": [1, 8], "reps": 3}, **dep}
    return parse_config({"server": {"admin_token": TOKEN, "max_body_bytes": 200_000},
                         "deployments": {"digits": d}})


class GateModel(ClassifierModel):
    """A 2-class linear model whose calls can be held at a gate (to build queues on purpose)."""

    def __init__(self, d: int = 4, fail: bool = False) -> None:
        super().__init__((d,), 2)
        self.gate = threading.Event()
        self.gate.set()
        self.calls: list[int] = []
        self.fail = fail
        self.lock = threading.Lock()

    def predict(self, X: np.ndarray) -> np.ndarray:
        self.gate.wait(30)
        with self.lock:
            self.calls.append(len(X))
        if self.fail:
            raise RuntimeError("boom")
        s = X.sum(1, keepdims=True)
        p = 1 / (1 + np.exp(-s))
        return np.hstack([1 - p, p]).astype(np.float32)


def flat_profile(name: str, acc: float, ms: float, energy: float | None = None) -> VariantProfile:
    """A profile with a fixed latency per batch (for routing tests on known numbers)."""
    lat = LatencyProfile({1: ms, 8: ms * 2, 32: ms * 4}, {1: ms, 8: ms * 2, 32: ms * 4})
    return VariantProfile(name, acc, lat, 1000, energy, {1: 1000 / ms, 8: 8000 / (2 * ms), 32: 32000 / (4 * ms)})


def gate_variant(name: str = "g", acc: float = 0.9, ms: float = 1.0, **kw) -> Variant:
    return Variant(name, GateModel(**kw), "test", profile=flat_profile(name, acc, ms))


def wait_until(cond, timeout: float = 10.0) -> None:
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def flat_llm_profile(name: str, acc: float, step_ms: float, prefill_ms_per_token: float, kv: int = 1000):
    """An LLM profile with constant costs (a decode step of ``step_ms`` at any batch and context, prefill at
    ``prefill_ms_per_token``), accuracy ``acc`` with the whole context and ``acc - 0.005`` at KV cap 256."""
    from leanml.serve.control.llm_profiles import LLMProfile, QualityFigure

    q = {c: {"next_token_accuracy": QualityFigure("next_token_accuracy", a, 500, a - 0.02, a + 0.02)}
         for c, a in ((0, acc), (256, acc - 0.005))}
    return LLMProfile(name, {1: {100: prefill_ms_per_token * 100}, 8: {100: prefill_ms_per_token * 800}},
                      {1: {100: step_ms, 2000: step_ms}, 32: {100: step_ms, 2000: step_ms}}, kv, q)
