"""Generation length in the LLM path: profiles that cost any length, the simulator's batch time, the
per-request min_new_tokens knob, and the replay CLI on an LLM deployment (profiles as data: no model loads)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from leanml.serve.types import SLO, LatencyProfile, VariantProfile, generation_ms

FIRST = {1: 100.0, 8: 400.0}
STEP = {1: 50.0, 8: 80.0}


def llm_profile(name: str = "fp32", acc: float = 1.0, speed: float = 1.0, tokens: int = 32, **extra) -> VariantProfile:
    first = {b: v / speed for b, v in FIRST.items()}
    step = {b: v / speed for b, v in STEP.items()}
    p50 = {b: first[b] + (tokens - 1) * step[b] for b in first}
    gen = {"tokens": tokens, "first_token_ms": {str(b): v for b, v in first.items()},
           "step_ms": {str(b): v for b, v in step.items()}}
    return VariantProfile(name, acc, LatencyProfile(p50, dict(p50)), None, None,
                          {b: b / (v / 1e3) for b, v in p50.items()}, {"generation": gen, **extra})


def test_generation_scale_and_at_tokens():
    p = llm_profile()
    assert p.generation_scale(1, 32) == pytest.approx(1.0)
    assert p.generation_scale(1, None) == 1.0
    assert p.generation_scale(1, 1) == pytest.approx(100.0 / (100 + 31 * 50))
    # batch 4 interpolates first-token and step times between the measured batch sizes 1 and 8
    f4, s4 = 100 + 3 / 7 * 300, 50 + 3 / 7 * 30
    assert generation_ms(p.generation, 4, 10) == pytest.approx(f4 + 9 * s4)
    q = p.at_tokens(10)
    assert q.latency.p50_ms[1] == pytest.approx(100 + 9 * 50)
    assert q.latency.p99_ms[8] == pytest.approx(400 + 9 * 80)
    assert q.throughput_rps[8] == pytest.approx(8 / ((400 + 9 * 80) / 1e3))
    assert q.generation["tokens"] == 10 and q.generation_scale(1, 10) == pytest.approx(1.0)
    assert q.at_tokens(32).latency.p50_ms[1] == pytest.approx(p.latency.p50_ms[1])
    plain = VariantProfile("c", 0.9, LatencyProfile({1: 1.0}, {1: 2.0}))
    assert plain.generation is None and plain.at_tokens(5) is plain and plain.generation_scale(1, 5) == 1.0


def test_profiles_at_the_expected_longest_request_of_a_batch():
    from leanml.serve.types import expected_longest

    toks = [1, 1, 3, 3]  # max of 2 draws: 3 unless both are 1 (prob 1/4): 2.5
    e = expected_longest(toks, [1, 2, 8])
    assert e[1] == pytest.approx(2.0) and e[2] == pytest.approx(2.5) and e[8] == pytest.approx(3 - 2 / 256)
    assert expected_longest([7] * 5, [1, 4]) == {1: 7.0, 4: 7.0}
    p = llm_profile()
    q = p.at_tokens({1: 10.0, 8: 30.0})
    assert q.latency.p50_ms[1] == pytest.approx(100 + 9 * 50) and q.latency.p50_ms[8] == pytest.approx(400 + 29 * 80)
    # the rescaled profile knows what its tables hold: scaling back to 32 tokens recovers the original
    assert q.generation_scale(8, 32) * q.latency.p50_ms[8] == pytest.approx(p.latency.p50_ms[8])
    assert q.generation_scale(1, 10) == pytest.approx(1.0)


def test_simulator_batch_time_follows_its_longest_request():
    from leanml.serve.config import Batching
    from leanml.serve.dataplane.routing import StaticPolicy
    from leanml.serve.sim.simulator import Simulator

    p = llm_profile()
    arrivals = np.array([0.0, 100.0, 200.0, 200.001, 200.002])
    tokens = [5, 30, 3, 12, 7]

    def run(knobs_for, wait_ms):
        sim = Simulator({"fp32": p}, StaticPolicy(["fp32"], "fp32"), cores=1,
                        batching={"fp32": Batching(8, wait_ms, 64, 1)})
        return sim.run(arrivals, slo=SLO(latency_ms=1e6), knobs_for=knobs_for)

    rows = run(lambda i: {"max_new_tokens": tokens[i]}, 10.0)
    assert [r["max_new_tokens"] for r in rows] == tokens
    assert rows[0]["model_ms"] == pytest.approx(100 + 4 * 50) and rows[0]["batch_size"] == 1
    assert rows[1]["model_ms"] == pytest.approx(100 + 29 * 50)
    # the last three batch together (10 ms window): the batch decodes until its longest row (12) is done
    assert {r["batch_size"] for r in rows[2:]} == {3}
    assert rows[2]["model_ms"] == pytest.approx(generation_ms(p.generation, 3, 12))
    # without knobs the profile's own table (32 tokens) is the service time, as for any classifier
    plain = run(None, 0.0)
    assert plain[0]["model_ms"] == pytest.approx(p.latency.p50_ms[1]) and "max_new_tokens" not in plain[0]


def test_min_new_tokens_is_per_row():
    import torch

    from leanml.serve.variants.llm import min_new_tokens_processor

    proc = min_new_tokens_processor(start=3, min_new=[2, 0, 1], eos_ids=[0, 2])
    scores = proc(torch.zeros(3, 3, dtype=torch.long), torch.zeros(3, 5))
    assert torch.isinf(scores[0, [0, 2]]).all() and torch.isinf(scores[2, [0, 2]]).all()
    assert not torch.isinf(scores[1]).any() and not torch.isinf(scores[0, [1, 3, 4]]).any()
    scores = proc(torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, 5))  # one new token each
    assert torch.isinf(scores[0, 0]) and not torch.isinf(scores[1:]).any()
    assert not torch.isinf(proc(torch.zeros(3, 5, dtype=torch.long), torch.zeros(3, 5))).any()


def test_profile_times_generators_at_an_exact_length():
    from leanml.serve.control.profiles import measure_generation
    from leanml.serve.variants.base import GeneratorModel, Variant

    class Echo(GeneratorModel):
        def __init__(self):
            self.seen: list[tuple[int, int | None]] = []

        def generate(self, prompts, max_new_tokens, kv_cache_cap, min_new_tokens=None):
            self.seen += list(zip(max_new_tokens, min_new_tokens or [None] * len(prompts), strict=True))
            return ["x" * m for m in max_new_tokens]

    m = Echo()
    lat, thr, _, _, samples, gen = measure_generation(Variant("e", m), ["a", "b"], [1, 2], reps=2, warmup=1, tokens=8)
    assert {k for k, _ in m.seen} == {1, 8}
    assert all(mn == 8 for k, mn in m.seen if k == 8) and all(mn is None for k, mn in m.seen if k == 1)
    assert gen["tokens"] == 8 and set(gen["first_token_ms"]) == set(gen["step_ms"]) == {"1", "2"}
    assert all(v >= 0 for v in gen["step_ms"].values()) and set(lat.p50_ms) == {1, 2}


def test_generate_rejects_min_above_max_new_tokens():
    import httpx

    from leanml.serve.dataplane.http import BackgroundServer, build_app
    from leanml.serve.dataplane.routing import StaticPolicy
    from leanml.serve.dataplane.runtime import Runtime
    from leanml.serve.variants.base import GeneratorModel, Variant

    class Upper(GeneratorModel):
        def generate(self, prompts, max_new_tokens, kv_cache_cap, min_new_tokens=None):
            return [f"{p.upper()}:{mx}:{mn}" for p, mx, mn in zip(prompts, max_new_tokens,
                                                                  min_new_tokens or [None] * len(prompts), strict=True)]

    rt = Runtime(threads=1)
    rt.add_deployment("g", {"u": Variant("u", Upper(), profile=llm_profile("u"))}, StaticPolicy(["u"], "u"))
    with BackgroundServer(build_app(rt)) as url, httpx.Client(base_url=url, timeout=30) as c:
        bad = c.post("/v1/generate/g", json={"prompt": "hi", "max_new_tokens": 3, "min_new_tokens": 4})
        assert bad.status_code == 422 and "min_new_tokens" in bad.text
        ok = c.post("/v1/generate/g", json={"prompt": "hi", "max_new_tokens": 4, "min_new_tokens": 4})
        assert ok.status_code == 200 and ok.json()["texts"] == ["HI:4:4"]
        longer = c.post("/v1/generate/g", json={"prompt": "hi", "min_new_tokens": 40})  # above the default 32
        assert longer.status_code == 200 and longer.json()["texts"] == ["HI:40:40"]


CONFIG = """
[server]
profile_file = "llm.profile.json"

[deployments.llm]
prototype = "smollm2"
variants = ["fp32", "int8"]
"""


def test_replay_cli_simulates_an_llm_deployment(tmp_path):
    from leanml.cli.replay_cmd import replay_command
    from leanml.serve.config import load_config
    from leanml.serve.control.profiles import fingerprint, save_profiles

    cfg = tmp_path / "llm.toml"
    cfg.write_text(CONFIG)
    dc = load_config(cfg).deployments["llm"]
    rng = np.random.default_rng(0)
    t = np.cumsum(rng.gamma(0.5, 0.5, size=60))
    gen = rng.integers(1, 80, size=60)
    trace = tmp_path / "trace.csv"  # BurstGPT's columns: recognized without flags
    trace.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                     + "\n".join(f"{a:.6f},ChatGPT,50,{g},{50 + g},Conversation log"
                                 for a, g in zip(t, gen, strict=True)) + "\n")
    profs = {n: llm_profile(n, acc, speed, fingerprint=fingerprint(dc.prototype, dc.params, n), val="mmlu/test")
             for n, acc, speed in (("fp32", 1.0, 1.0), ("int8", 0.9, 2.0))}
    save_profiles(tmp_path / "llm.profile.json", {"llm": profs})
    app = typer.Typer()
    app.command("replay")(replay_command)
    app.command("noop")(lambda: None)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["replay", "--trace", str(trace), "--config", str(cfg), "--mode", "sim",
                                   "--policy", "static-accurate", "--policy", "adaptive", "--slo-ms", "5000",
                                   "--accuracy-slack", "0.1", "--cores", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = pq.read_table(out / "llm_rows.parquet").to_pylist()
    assert len(rows) == 2 * 60
    for pol in ("static-accurate", "adaptive"):
        assert [r["max_new_tokens"] for r in rows if r["policy"] == pol] == np.clip(gen, 1, 32).tolist()
    assert max(r["batch_size"] for r in rows) <= 8  # never beyond the largest measured batch
    report = (out / "llm_report.md").read_text()
    assert "generated exactly" in report and "max_batch" in report


def test_at_tokens_twice_rescales_from_what_the_tables_hold():
    p = llm_profile()
    once = p.at_tokens({1: 10.0, 8: 30.0}).at_tokens(5)  # a per-batch rescale, then a single length
    direct = p.at_tokens(5)
    for b in (1, 8):
        assert once.latency.p50_ms[b] == pytest.approx(direct.latency.p50_ms[b])
        assert once.throughput_rps[b] == pytest.approx(direct.throughput_rps[b])
    assert once.generation_scale(8, 5) == pytest.approx(1.0)


def test_fidelity_is_the_reproduced_prefix_of_the_reference():
    from leanml.serve.variants.llm import prefix_agreement

    assert prefix_agreement([5, 6, 7, 8], [5, 6, 7, 8]) == 1.0
    assert prefix_agreement([5, 6, 9, 8], [5, 6, 7, 8]) == 0.5  # a later match after a divergence counts nothing
    assert prefix_agreement([5, 6], [5, 6, 7, 8]) == 0.5  # stopping early reproduces only what it produced
    assert prefix_agreement([9], [5, 6]) == 0.0 and prefix_agreement([], []) == 1.0


def test_generation_plan_clips_to_the_timed_length_and_costs_the_longest_of_a_batch():
    from leanml.serve.sim.replay_study import generation_plan
    from leanml.serve.types import expected_longest
    from leanml.serve.workload.traces import Trace

    tr = Trace(np.arange(6, dtype=np.float64), generated_tokens=np.array([0, 3, 50, 8, 32, 1]))
    profs = {"fp32": llm_profile("fp32"), "int8": llm_profile("int8", tokens=16, speed=2.0)}
    gp = generation_plan(profs, tr)
    assert gp.cap == 16 and gp.tokens.tolist() == [1, 3, 16, 8, 16, 1]  # the shortest timed length caps
    assert gp.longest_by_batch == expected_longest(gp.tokens, [1, 2, 8])
    for n, p in profs.items():
        want = p.at_tokens(gp.longest_by_batch)
        assert gp.policy_profiles[n].latency.p50_ms == pytest.approx(want.latency.p50_ms)
    plain = VariantProfile("c", 0.9, LatencyProfile({1: 1.0}, {1: 2.0}))
    with pytest.raises(ValueError, match=r"\['c'\]"):
        generation_plan({"fp32": profs["fp32"], "c": plain}, tr)
