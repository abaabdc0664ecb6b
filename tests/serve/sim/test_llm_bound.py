"""The goodput ceiling of an LLM replay: hand-computed on constructed cases, and never beaten by a policy."""

from __future__ import annotations

import numpy as np
import pytest

from leanml.serve.control.llm_profiles import LLMProfile, QualityFigure
from leanml.serve.sim.llm_bound import goodput_ceiling, prefill_floor_ms_per_token
from leanml.serve.sim.llm_sim import LLMRequest


def prof(name: str, acc: float, pf_tok: float, step: float = 0.0) -> LLMProfile:
    q = {0: {"next_token_accuracy": QualityFigure("next_token_accuracy", acc, 500, acc - 0.02, acc + 0.02)}}
    return LLMProfile(name, {1: {100: pf_tok * 100}}, {1: {100: step}, 8: {100: step * 2}}, 1000, q)


def burst(n: int, prompt: int = 100, ttft_ms: float = 2000.0) -> list[LLMRequest]:
    return [LLMRequest(i, i / n, prompt, 1, ttft_ms, 1e6) for i in range(n)]


def test_a_burst_is_bounded_by_the_engine_time_before_its_deadlines():
    """100 requests arriving at 0, 0.01, ..., 0.99 s, 1 s of prefill each, TTFT SLO 2 s, one engine: all the
    prefill answered in time lies in [0, 0.99 + 2], so at most 2.99 requests (fractional: the relaxation)."""
    reqs = burst(100)
    c = goodput_ceiling(reqs, {"v": prof("v", 0.9, 10.0)}, engines=1, accuracy_target=None, span_s=10.0)
    assert c.goodput_rps == pytest.approx(2.99 / 10.0) and c.intervals >= 1
    two = goodput_ceiling(reqs, {"v": prof("v", 0.9, 10.0)}, engines=2, accuracy_target=None, span_s=10.0)
    assert two.goodput_rps == pytest.approx(5.98 / 10.0)
    # a prompt whose lone prefill exceeds its TTFT SLO can never count
    assert goodput_ceiling(burst(5, prompt=300), {"v": prof("v", 0.9, 10.0)}, engines=4, accuracy_target=None,
                           span_s=10.0).goodput_rps == 0.0


def test_the_mean_accuracy_target_limits_the_cheap_variant_share():
    """fast (0.5 s, accuracy 0.5) and slow (1 s, 0.9), target 0.8: at most one fast request per three slow ones
    (0.3 x_f <= 0.1 x_s), so the 2.99-s budget of the burst holds x_s = 2990 / (1000 + 500 / 3) slow ones and
    a third as many fast ones."""
    profiles = {"fast": prof("fast", 0.5, 5.0), "slow": prof("slow", 0.9, 10.0)}
    c = goodput_ceiling(burst(100), profiles, engines=1, accuracy_target=0.8, span_s=1.0)
    xs = 2990.0 / (1000.0 + 500.0 / 3)
    assert c.goodput_rps == pytest.approx(xs * 4 / 3, rel=1e-6)
    free = goodput_ceiling(burst(100), profiles, engines=1, accuracy_target=None, span_s=1.0)
    assert free.goodput_rps == pytest.approx(5.98)  # no target: all fast, 2.99 s / 0.5 s


def test_an_interval_across_two_bursts_binds_where_neither_burst_does():
    """Two requests of 1 s of prefill at t = 0 and t = 0.5, TTFT SLO 1.2 s: each alone fits its own window,
    but both prefill inside [0, 1.7], so the bound is 1.7 requests, not 2 (an arrival-binned bound would
    need a bin holding both to see it)."""
    reqs = [LLMRequest(0, 0.0, 100, 1, 1200.0, 1e6), LLMRequest(1, 0.5, 100, 1, 1200.0, 1e6)]
    c = goodput_ceiling(reqs, {"v": prof("v", 0.9, 10.0)}, engines=1, accuracy_target=None, span_s=1.0)
    assert c.goodput_rps == pytest.approx(1.7)


def test_prefill_is_priced_at_the_cheapest_chunk_and_batch_the_simulator_allows():
    """Per token 3 ms at 1,024 tokens, 2 at 128, 1.5 at 128 in a batch of 4: a policy prefilling in 128-token
    chunks alongside other prompts pays 1.5, so that is the bound's price, whatever the prompt length; past
    the largest measured batch the per-token cost stays at its row (no extrapolated saving)."""
    p = LLMProfile("v", {1: {128: 2.0 * 128, 1024: 3.0 * 1024}, 4: {128: 1.5 * 4 * 128}}, {1: {100: 0.0}}, 1000,
                   {0: {"next_token_accuracy": QualityFigure("next_token_accuracy", 0.9, 500, 0.88, 0.92)}})
    assert prefill_floor_ms_per_token(p, 1024) == pytest.approx(1.5)
    lone = LLMProfile("w", {1: {128: 2.0 * 128, 1024: 3.0 * 1024}}, {1: {100: 0.0}}, 1000, p.quality)
    assert prefill_floor_ms_per_token(lone, 1024) == pytest.approx(2.0 - 127 / 896)  # the 1-token end, extrapolated
    assert p.prefill_time_ms(128, 16) == pytest.approx(1.5 * 128 * 16)
    req = LLMRequest(0, 0.0, 1024, 1, 1e6, 1e6)
    c = goodput_ceiling([req] * 1, {"v": p}, engines=1, accuracy_target=None, span_s=1.0)
    assert c.goodput_rps == pytest.approx(1.0)


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


def test_an_early_stop_still_bounds_from_above():
    """Stopped after one round (no interval yet), the LP of the two overlapping requests above gives 2, above
    the converged 1.7, and says it did not converge."""
    reqs = [LLMRequest(0, 0.0, 100, 1, 1200.0, 1e6), LLMRequest(1, 0.5, 100, 1, 1200.0, 1e6)]
    full = goodput_ceiling(reqs, {"v": prof("v", 0.9, 10.0)}, engines=1, accuracy_target=None, span_s=1.0)
    early = goodput_ceiling(reqs, {"v": prof("v", 0.9, 10.0)}, engines=1, accuracy_target=None, span_s=1.0,
                            max_rounds=1)
    assert full.converged and not early.converged
    assert early.goodput_rps == pytest.approx(2.0) and early.goodput_rps >= full.goodput_rps
