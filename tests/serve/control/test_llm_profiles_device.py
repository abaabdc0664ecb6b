"""LLM profiles for a catalog device that was never profiled: costs from leanml.hw.llm, marked predicted."""

from __future__ import annotations

import pytest
from serve_helpers import flat_llm_profile

from leanml.serve.control.llm_profiles import predicted_profile, profiles_for_device


def measured() -> dict:
    return {"fp32": flat_llm_profile("fp32", 0.48, 100.0, 5.0), "int8": flat_llm_profile("int8", 0.33, 50.0, 3.0)}


def test_a_catalog_gpu_profile_comes_from_the_hardware_model_and_says_predicted():
    from leanml.hw.llm import decode_step, predict_prefill

    m = measured()
    assert profiles_for_device(m, None) is m and all(p.source == "measured" for p in m.values())
    gpu = profiles_for_device(m, "h100_sxm")
    assert set(gpu) == set(m)
    for name, p in gpu.items():
        assert p.source == "predicted" and p.device == "h100_sxm" and "leanml.hw.llm" in p.extra["cost_source"]
        assert p.quality == m[name].quality  # the same weights: quality is the measured variant's
    # the tables are the hardware model's own numbers (at grid points exactly)
    assert gpu["fp32"].step_ms(4, 1024) == pytest.approx(1000 * decode_step("smollm2-135m", "h100_sxm", "fp32", 4,
                                                                            1024).time_s)
    assert gpu["int8"].prefill_time_ms(512) == pytest.approx(1000 * predict_prefill("smollm2-135m", "h100_sxm", "int8",
                                                                                    1, 512).time_s)
    # and not this CPU's: a GPU decodes SmolLM2 in milliseconds, int8 GEMMs beat fp32 there
    assert gpu["fp32"].step_ms(1, 1024) < 0.2 * m["fp32"].step_ms(1, 1024)
    assert gpu["int8"].prefill_time_ms(2048) < gpu["fp32"].prefill_time_ms(2048)


def test_replay_on_a_catalog_gpu_runs_without_a_measured_cost_profile():
    """The LLM replay's inputs and simulator on predicted profiles only: requests are served, and the
    capacity the trace is thinned to is the predicted device's (far above this CPU's)."""
    from leanml.serve.sim.llm_policies import make_policies
    from leanml.serve.sim.llm_sim import LLMSimulator, summarize
    from leanml.serve.sim.replay_inputs import llm_replay_inputs
    from leanml.serve.workload.traces import load_trace

    trace = load_trace("azure_llm_code")
    gpu = profiles_for_device(measured(), "l4")
    cpu = llm_replay_inputs(measured(), trace, load=1.0, engines=1, kv_bytes=1e9, window_s=600.0)
    inp = llm_replay_inputs(gpu, trace, load=0.05, engines=1, kv_bytes=1e9, window_s=600.0)
    assert inp.capacity_rps > 10 * cpu.capacity_rps
    pols = {p.label: p for p in make_policies(gpu, inp.settings)}
    for label in ("static-accurate", "adaptive"):
        outs = LLMSimulator(gpu, engines=1, kv_budget_bytes=1e9, seed=0).run(pols[label], inp.requests[:300])
        assert summarize(outs, inp.span_s)["answered"] > 0


def test_an_unknown_device_or_variant_is_refused_by_name():
    with pytest.raises(ValueError, match="not in the catalog"):
        profiles_for_device(measured(), "no-such-gpu")
    with pytest.raises(ValueError, match="pass dtype"):
        predicted_profile(flat_llm_profile("mystery", 0.5, 10.0, 1.0), "h100_sxm")
