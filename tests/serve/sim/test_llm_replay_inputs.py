"""The one LLM replay builder (thinning on the trace's clock, token scaling, SLO rule) and the sim-vs-live error."""

from __future__ import annotations

import numpy as np
import pytest
from serve_helpers import flat_llm_profile

from leanml.serve.sim.llm_live import p99_errors
from leanml.serve.sim.llm_sim import LLMOutcome
from leanml.serve.sim.replay_inputs import llm_replay_inputs
from leanml.serve.workload.traces import load_trace

PROFILES = {"fp32": flat_llm_profile("fp32", 0.48, 100.0, 5.0), "int8": flat_llm_profile("int8", 0.33, 50.0, 3.0)}


def test_the_builder_thins_the_window_on_its_own_clock_and_scales_tokens_as_told():
    trace = load_trace("azure_llm_code")
    a = llm_replay_inputs(PROFILES, trace, load=1.0, engines=2, kv_bytes=1e9, window_s=600.0, seed=0)
    b = llm_replay_inputs(PROFILES, trace, load=1.0, engines=2, kv_bytes=1e9, window_s=600.0, seed=0,
                          start_s=a.timescale.window_start_s, token_scale=0.125, max_output=16)
    assert a.timescale.method == "thinning" and a.span_s == 600.0
    t = np.array([r.arrival_s for r in a.requests])
    assert np.all(np.diff(t) >= 0) and t[-1] < 600.0  # the window's clock, not compressed
    # the achieved rate is the capacity it was fitted to, within thinning noise (binomial, n ~ 100)
    assert abs(len(a.requests) / 600.0 - a.capacity_rps) < 0.35 * a.capacity_rps
    # shorter prompts raise the capacity, so more requests are kept; outputs clipped; SLO from the same rule
    assert b.capacity_rps > a.capacity_rps and len(b.requests) > len(a.requests)
    assert max(r.output for r in b.requests) <= 16
    win = trace.window(a.timescale.window_start_s, 600.0)
    assert max(r.prompt for r in b.requests) <= max(8, round(0.125 * float(win.context_tokens.max())))
    p = PROFILES["fp32"]
    for r in b.requests[:20]:
        assert r.ttft_ms == pytest.approx(max(1000.0, 3 * p.prefill_time_ms(r.prompt)))
        assert r.tpot_ms == pytest.approx(3 * p.step_ms(1, 1024))
    assert a.settings.accuracy_target == pytest.approx(0.48 - 0.01)


def test_the_builder_refuses_bad_settings_by_name():
    trace = load_trace("azure_llm_code")
    with pytest.raises(ValueError, match="token_scale"):
        llm_replay_inputs(PROFILES, trace, load=1.0, engines=1, kv_bytes=1e9, window_s=600.0, token_scale=2.0)


def _ok(i: int, ttft: float, e2e: float) -> LLMOutcome:
    return LLMOutcome(i, 0.0, 100, 10, "ok", "v", 0, ttft, (e2e - ttft) / 9, 0.5, True)


def test_p99_errors_compare_the_tails_of_answered_requests():
    live = [_ok(i, 100.0 + i, 1000.0 + 10 * i) for i in range(100)]
    sim = [_ok(i, 1.2 * (100.0 + i), 0.9 * (1000.0 + 10 * i)) for i in range(100)]
    sim.append(LLMOutcome(100, 0.0, 100, 10, "expired"))  # not answered: not in the tail
    e = p99_errors(sim, live)
    assert e["answered_sim"] == 100 and e["answered_live"] == 100
    assert e["ttft_p99_error"] == pytest.approx(0.2, abs=1e-3)
    assert e["e2e_p99_error"] == pytest.approx(0.1, abs=1e-3)


@pytest.mark.slow
@pytest.mark.llm
def test_live_prompts_have_the_token_counts_the_simulator_is_given_and_the_engine_step_is_timed(smollm2_lm):
    """`trace_prompts` returns texts whose chat-templated ids number what it reports (the simulator gets
    those counts), close to the asked ones; `engine_decode_ms` times real engine iterations."""
    from leanml.serve.sim.llm_live import engine_decode_ms, trace_prompts

    want = [40, 120, 300]
    texts, got = trace_prompts(smollm2_lm, want)
    assert [len(smollm2_lm._ids(t)) for t in texts] == got
    assert all(abs(g - w) <= 3 for g, w in zip(got, want, strict=True))
    ids = smollm2_lm._ids(texts[1])
    one, two = engine_decode_ms(smollm2_lm, ids, 1, steps=2), engine_decode_ms(smollm2_lm, ids, 2, steps=2)
    assert one > 0 and two > 0
