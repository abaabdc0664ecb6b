"""The LLM planner on constructed cases whose optimum is known (accuracy floor and target, TTFT, TPOT, KV)."""

from __future__ import annotations

import itertools

import pytest

from leanml.serve.control.llm_planner import (
    LLMClass,
    LLMOption,
    LLMPlannerConfig,
    check_llm_plan,
    fit,
    plan_llm,
    wait_p99_ms,
)
from leanml.serve.control.llm_profiles import (
    LLMProfile,
    QualityFigure,
    llm_profile_from_dict,
    llm_profile_to_dict,
    wilson,
)


def prof(name: str, acc: float, step: float, pf_tok: float = 1e-3, kv: int = 1000,
         acc_cap: dict[int, float] | None = None) -> LLMProfile:
    """Flat costs: a decode step takes ``step`` ms at any batch and context; prefill ``pf_tok`` ms/token."""
    q = {0: {"next_token_accuracy": QualityFigure("next_token_accuracy", acc, 1000, acc - 0.01, acc + 0.01)}}
    for c, a in (acc_cap or {}).items():
        q[c] = {"next_token_accuracy": QualityFigure("next_token_accuracy", a, 1000, a - 0.01, a + 0.01)}
    return LLMProfile(name, {1: {100: pf_tok * 100}, 4: {100: pf_tok * 400}},
                      {1: {100: step, 1000: step}, 32: {100: step, 1000: step}}, kv, q)


def test_fit_formulas_on_flat_costs():
    p = prof("v", 0.9, 50.0, pf_tok=0.0)
    k = LLMClass("k", 1.0, prompt_tokens=100, output_tokens=10, ttft_ms=1e9, tpot_ms=1e9)
    f = fit(k, p, LLMOption("v", 0, 8, 512, 0.5), kv_budget=1e9)
    assert f.tpot_ms == pytest.approx(50.0)  # no prefill cost: an iteration is one decode step
    # mean batch u / (1 - u) = 1 at u = 0.5: 10 steps of 50 ms per request
    assert f.cost_ms == pytest.approx(10 * 50.0)
    f8 = fit(k, p, LLMOption("v", 0, 32, 512, 0.8), kv_budget=1e9)
    assert f8.cost_ms == pytest.approx(10 * 50.0 / 4)  # u = 0.8: 4 sequences share each step
    # batch 4 at u = 0.5: P(N >= 4) = 6% > 1%, the batch cap would bind
    assert fit(k, p, LLMOption("v", 0, 4, 512, 0.5), kv_budget=1e9) is None
    # KV: 8 sequences x (100 + 10) tokens x 1000 B = 880 kB; an 800 kB budget refuses batch 8
    assert fit(k, p, LLMOption("v", 0, 8, 512, 0.5), kv_budget=8e5) is None
    # a KV cap of 60 keeps 60 - 10 = 50 prompt tokens, and needs quality measured at that cap
    assert fit(k, p, LLMOption("v", 60, 8, 512, 0.5), kv_budget=1e9) is None
    pc = prof("v", 0.9, 50.0, pf_tok=0.0, acc_cap={60: 0.7})
    fc = fit(k, pc, LLMOption("v", 60, 8, 512, 0.5), kv_budget=1e9)
    assert fc.prompt_kept == 50 and fc.accuracy == 0.7


def test_wait_is_zero_when_idle_and_grows_with_load():
    assert wait_p99_ms(0.005, 1000.0, 1.0) == 0.0
    w = [wait_p99_ms(r, 1000.0, 1.0) for r in (0.3, 0.6, 0.9)]
    assert w[0] < w[1] < w[2]
    # M/M/1 (ca = cs = 1): P(W > t) = rho exp(-(1 - rho) t / S), so W99 = S ln(100 rho) / (1 - rho)
    import math

    assert w[2] == pytest.approx(1000.0 * math.log(90) / 0.1, rel=1e-9)


def _brute_force(profiles, classes, cfg):
    """Best goodput of a single class with one engine type, by enumerating every option (reference)."""
    (k,) = classes
    best = 0.0
    for v, p in profiles.items():
        for c, b, ch, rho in itertools.product(p.kv_caps(), cfg.batch_sizes, cfg.chunk_tokens, cfg.utilization):
            f = fit(k, p, LLMOption(v, c, b, ch, rho), cfg.kv_budget_bytes)
            if f is None or f.ttft_ms > k.ttft_ms or f.tpot_ms > k.tpot_ms:
                continue
            if k.min_accuracy is not None and f.accuracy < k.min_accuracy:
                continue
            best = max(best, min(k.rate_rps, cfg.engines * 1000.0 * rho / f.cost_ms))
    return best


def test_floor_and_tpot_leave_one_variant_and_the_plan_is_its_best_option():
    profiles = {"big": prof("big", 0.90, 100.0, 5.0), "mid": prof("mid", 0.85, 40.0, 5.0),
                "tiny": prof("tiny", 0.60, 10.0, 5.0)}
    k = LLMClass("k", 1e4, prompt_tokens=100, output_tokens=200, ttft_ms=3000, tpot_ms=60, min_accuracy=0.8)
    cfg = LLMPlannerConfig(engines=2, kv_budget_bytes=8 * 300 * 1000, batch_sizes=(1, 4, 8, 16),
                           chunk_tokens=(128, 512), utilization=(0.5, 0.7, 0.85))
    pl = plan_llm(profiles, [k], cfg)
    assert {o.variant for o in pl.engines} == {"mid"}  # big misses TPOT, tiny the floor
    assert max(o.batch for o in pl.engines) <= 8  # the KV budget holds 8 sequences of 300 tokens
    assert pl.goodput_rps == pytest.approx(_brute_force(profiles, [k], cfg), rel=1e-3)
    assert check_llm_plan(pl, profiles, cfg) == []
    # the TTFT SLO binds too: every chosen option's predicted p99 TTFT is within 3 s; with 400 ms none fits
    # (a lone prefill of 100 tokens at 5 ms each already takes 500 ms)
    assert all(pl.fits[("k", o)].ttft_ms <= 3000 for o in pl.routes["k"])
    from dataclasses import replace

    assert plan_llm(profiles, [replace(k, ttft_ms=400)], cfg).goodput_rps == 0


def test_mean_target_mixes_variants_where_greedy_cannot():
    """A (0.90, slow) and B (0.80, twice A's capacity), mean target 0.85, 3 engines: the optimum is 2 A + 1 B
    engines, goodput 4 c_A (B's engine serves 2 c_A, matched by A's 2 c_A so the mean is 0.85), where
    'every request meets 0.85 alone' (INFaaS) serves 3 c_A."""
    profiles = {"A": prof("A", 0.90, 100.0), "B": prof("B", 0.80, 50.0)}
    k = LLMClass("k", 1e4, prompt_tokens=100, output_tokens=20, ttft_ms=1e9, tpot_ms=1e9)
    cfg = LLMPlannerConfig(engines=3, kv_budget_bytes=1e12, batch_sizes=(8,), chunk_tokens=(128,),
                           utilization=(0.5,), accuracy_target=0.85)
    ca = 1000.0 * 0.5 / fit(k, profiles["A"], LLMOption("A", 0, 8, 128, 0.5), 1e12).cost_ms
    cb = 1000.0 * 0.5 / fit(k, profiles["B"], LLMOption("B", 0, 8, 128, 0.5), 1e12).cost_ms
    assert cb == pytest.approx(2 * ca, rel=0.01)
    pl = plan_llm(profiles, [k], cfg)
    assert {o.variant: n for o, n in pl.engines.items()} == {"A": 2, "B": 1}
    assert pl.goodput_rps == pytest.approx(2 * ca + min(cb, 2 * ca), rel=1e-3)
    assert pl.mean_accuracy >= 0.85 - 1e-9
    assert check_llm_plan(pl, profiles, cfg) == []
    floor = plan_llm(profiles, [LLMClass("k", 1e4, 100, 20, 1e9, 1e9, min_accuracy=0.85)],
                     LLMPlannerConfig(engines=3, kv_budget_bytes=1e12, batch_sizes=(8,), chunk_tokens=(128,),
                                      utilization=(0.5,)))
    assert floor.goodput_rps == pytest.approx(3 * ca, rel=1e-3)


def test_kv_cap_is_chosen_when_its_quality_meets_the_floor():
    """Long prompts: prefill dominates; a cap keeping 200 tokens at accuracy 0.84 (floor 0.83) beats full context."""
    p = prof("v", 0.85, 20.0, pf_tok=2.0, acc_cap={256: 0.84, 128: 0.70})
    k = LLMClass("k", 1e4, prompt_tokens=2000, output_tokens=50, ttft_ms=1e6, tpot_ms=1e6, output_max=56,
                 min_accuracy=0.83)
    cfg = LLMPlannerConfig(engines=1, kv_budget_bytes=1e12, batch_sizes=(16, 32), chunk_tokens=(512, 2048),
                           utilization=(0.7,))
    pl = plan_llm({"v": p}, [k], cfg)
    assert {o.kv_cap for o in pl.engines} == {256}
    assert check_llm_plan(pl, {"v": p}, cfg) == []


def test_infeasible_and_bad_inputs_say_why():
    p = prof("v", 0.9, 500.0)
    pl = plan_llm({"v": p}, [LLMClass("k", 1.0, 100, 10, ttft_ms=1e6, tpot_ms=100)], LLMPlannerConfig(engines=1))
    assert pl.goodput_rps == 0 and "infeasible" in pl.status
    with pytest.raises(ValueError, match="energy"):
        plan_llm({"v": p}, [LLMClass("k", 1.0, 100, 10, 1e6, 1e6)], LLMPlannerConfig(energy_budget_j=1.0))
    with pytest.raises(ValueError, match="tpot_ms"):
        LLMClass("k", 1.0, 100, 10, 1e6, 0)
    with pytest.raises(ValueError, match="utilization"):
        LLMPlannerConfig(utilization=(1.2,))


def test_profile_round_trip_and_cost_fn():
    p = prof("v", 0.9, 30.0, acc_cap={256: 0.8})
    q = llm_profile_from_dict(llm_profile_to_dict(p))
    assert q.step_ms(8, 500) == p.step_ms(8, 500) and q.accuracy(256) == 0.8 and q.kv_caps() == [0, 256]
    with pytest.raises(KeyError, match="kv_cap=512"):
        q.accuracy(512)
    g = LLMProfile.from_cost_fn("v", lambda ph, b, n: (0.5 * b * n) if ph == "prefill" else 10 + b,
                                kv_bytes_per_token=100, quality=p.quality, device="other")
    assert g.prefill_time_ms(300, 2) == pytest.approx(300.0) and g.step_ms(4, 777) == pytest.approx(14.0)
    w = wilson(80, 100)
    assert w.ci_low < 0.8 < w.ci_high and w.n == 100
