"""The goodput ceiling of an LLM replay: hand-computed on constructed cases, and never beaten by a policy."""

from __future__ import annotations

import numpy as np
import pytest

from leanml.serve.control.llm_profiles import LLMProfile, QualityFigure
from leanml.serve.sim.llm_bound import goodput_ceiling
from leanml.serve.sim.llm_sim import LLMRequest


def prof(name: str, acc: float, pf_tok: float, step: float = 0.0) -> LLMProfile:
    q = {0: {"next_token_accuracy": QualityFigure("next_token_accuracy", acc, 500, acc - 0.02, acc + 0.02)}}
    return LLMProfile(name, {1: {100: pf_tok * 100}}, {1: {100: step}, 8: {100: step * 2}}, 1000, q)


def burst(n: int, prompt: int = 100, ttft_ms: float = 2000.0) -> list[LLMRequest]:
    return [LLMRequest(i, i / n, prompt, 1, ttft_ms, 1e6) for i in range(n)]


def test_a_burst_is_bounded_by_the_engine_time_before_its_deadlines():
    """100 requests arriving within 1 s, 1 s of prefill each, TTFT SLO 2 s, one engine: with 1-s bins, the work
    answered in time fits in 1 + 2 s, so at most 3 requests; 30-s bins allow 32; the bound is the smaller."""
    reqs = burst(100)
    c = goodput_ceiling(reqs, {"v": prof("v", 0.9, 10.0)}, engines=1, accuracy_target=None, span_s=10.0,
                        bin_widths_s=(1.0, 30.0))
    assert c.goodput_rps == pytest.approx(3 / 10.0) and c.bin_s == 1.0
    two = goodput_ceiling(reqs, {"v": prof("v", 0.9, 10.0)}, engines=2, accuracy_target=None, span_s=10.0,
                          bin_widths_s=(1.0,))
    assert two.goodput_rps == pytest.approx(6 / 10.0)
    # a prompt whose lone prefill exceeds its TTFT SLO can never count
    assert goodput_ceiling(burst(5, prompt=300), {"v": prof("v", 0.9, 10.0)}, engines=4, accuracy_target=None,
                           span_s=10.0).goodput_rps == 0.0


def test_the_mean_accuracy_target_limits_the_cheap_variant_share():
    """fast (0.5 s, accuracy 0.5) and slow (1 s, 0.9), target 0.8: at most one fast request per three slow ones
    (0.3 x_f <= 0.1 x_s), so a 3-s budget holds x_s = 3000 / (1000 + 500 / 3) slow ones and a third as many
    fast ones."""
    profiles = {"fast": prof("fast", 0.5, 5.0), "slow": prof("slow", 0.9, 10.0)}
    c = goodput_ceiling(burst(100), profiles, engines=1, accuracy_target=0.8, span_s=1.0, bin_widths_s=(1.0,))
    xs = 3000.0 / (1000.0 + 500.0 / 3)
    assert c.goodput_rps == pytest.approx(xs * 4 / 3, rel=1e-6)
    free = goodput_ceiling(burst(100), profiles, engines=1, accuracy_target=None, span_s=1.0, bin_widths_s=(1.0,))
    assert free.goodput_rps == pytest.approx(6.0)  # no target: all fast, 3 s / 0.5 s


def test_no_policy_beats_the_ceiling_on_a_bursty_replay():
    from leanml.serve.control.llm_planner import LLMClass, LLMPlannerConfig
    from leanml.serve.sim.llm_policies import PolicySettings
    from leanml.serve.sim.llm_replay import run_llm_policies

    profiles = {"a": prof("a", 0.60, 1.0, 30.0), "b": prof("b", 0.55, 0.5, 20.0)}
    rng = np.random.default_rng(0)
    t = np.cumsum(rng.gamma(0.25, 4.0 / 8.0, 300))  # CV 2 at 8 req/s: the bound binds below the demand
    reqs = [LLMRequest(i, float(x), int(rng.integers(100, 1500)), int(rng.integers(2, 30)), 3000.0, 200.0)
            for i, x in enumerate(t)]
    prior = LLMClass("prior", 8.0, 800, 16, ttft_ms=3000, tpot_ms=200, output_max=30)
    s = PolicySettings(0.58, LLMPlannerConfig(engines=2, kv_budget_bytes=1e9, batch_sizes=(1, 4, 8),
                                              chunk_tokens=(64, 256)), prior, period_s=20.0)
    span = reqs[-1].arrival_s
    res = run_llm_policies(profiles, reqs, s, engines=2, kv_bytes=1e9, seed=0, span_s=span)
    c = goodput_ceiling(reqs, profiles, engines=2, accuracy_target=0.58, span_s=span)
    best = max(r["goodput_rps"] for r in res.values())
    assert c.goodput_rps < 0.9 * len(reqs) / span  # not the trivial bound (every request)
    assert 0 < best <= c.goodput_rps
    with pytest.raises(ValueError, match="engines"):
        goodput_ceiling(reqs, profiles, engines=0, accuracy_target=None, span_s=span)
