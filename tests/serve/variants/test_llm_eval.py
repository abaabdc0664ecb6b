"""The SmolLM2 prototype's accuracy metrics on real MMLU questions, with stand-in models whose answers are known.

Fidelity to fp32 is the mean reproduced prefix of the reference's greedy continuation; the letter metric
is zero-shot multiple-choice accuracy. No model loads: the stand-ins implement what the evaluator calls.
"""

from __future__ import annotations

import numpy as np
import pytest

from leanml.data import load
from leanml.serve.variants.base import Variant
from leanml.serve.variants.llm import mmlu_evaluator

PARAMS = {"eval_metric": "fp32_token_agreement", "eval_split": "dev", "seed": 0, "eval_n": 12,
          "default_max_new_tokens": 4, "eval_mmlu_n": 0}


class StandIn:
    """Tokenizes a question to its length; continues every prompt with ``cont``; always answers letter 0."""

    kind = "generate"

    def __init__(self, cont: list[int]):
        self.cont, self.calls = cont, []

    def _ids(self, prompt: str) -> list[int]:
        return [len(prompt)]

    def generate_ids(self, ids, max_new_tokens, kv_cache_cap, min_new_tokens=None):
        self.calls.append(len(ids))
        return [self.cont[:m] for m in max_new_tokens]

    def choice_logits(self, prompt: str, choices: list[str]) -> np.ndarray:
        return np.array([1.0] + [0.0] * (len(choices) - 1))


def test_fidelity_is_the_mean_reproduced_prefix_of_fp32(tmp_path, monkeypatch):
    monkeypatch.setenv("LEANML_CACHE", str(tmp_path))
    ref, half, other = StandIn([1, 2, 3, 4]), StandIn([1, 2, 9, 4]), StandIn([7, 2, 3, 4])
    details: dict = {}
    evaluate = mmlu_evaluator(PARAMS, ref, details)  # type: ignore[arg-type]
    assert evaluate(Variant("fp32", ref)) == 1.0 and details["fp32"]["fp32_exact_match"] == 1.0
    assert max(ref.calls) <= 8 and sum(ref.calls) == 12  # the reference continues 12 questions, 8 at a time
    assert evaluate(Variant("half", half)) == pytest.approx(0.5)  # diverges at token 3 of 4 on every question
    assert details["half"]["fp32_exact_match"] == 0.0 and details["half"]["fp32_token_agreement_se"] == 0.0
    assert evaluate(Variant("other", other)) == 0.0  # a later match after a divergence counts nothing
    calls = len(ref.calls)
    evaluate(Variant("half", half))
    assert len(ref.calls) == calls  # fp32's continuations are cached, not regenerated per variant


def test_letter_accuracy_and_the_letters_chosen():
    recs = load("mmlu", "dev").records
    always_a = float(np.mean([r["answer"] == 0 for r in recs]))  # all questions: the draw order cannot matter
    details: dict = {}
    evaluate = mmlu_evaluator({**PARAMS, "eval_metric": "mmlu", "eval_n": len(recs)}, StandIn([]), details)
    v = StandIn([])
    assert evaluate(Variant("v", v)) == pytest.approx(always_a)
    d = details["v"]
    assert d["mmlu_letters"] == {"A": len(recs), "B": 0, "C": 0, "D": 0} and d["mmlu_n"] == len(recs)
    assert d["mmlu_accuracy_se"] == pytest.approx(np.sqrt(always_a * (1 - always_a) / len(recs)), abs=1e-4)
    with pytest.raises(ValueError, match="eval_metric must be"):
        mmlu_evaluator({**PARAMS, "eval_metric": "bleu"}, v, {})  # type: ignore[arg-type]
