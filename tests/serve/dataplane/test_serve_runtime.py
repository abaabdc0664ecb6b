"""The asyncio runtime without HTTP: failures, deadlines, draining, observers, profiles and the CLI."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from serve_helpers import digits_config, gate_variant

from leanml.serve.builder import build_runtime
from leanml.serve.config import Batching
from leanml.serve.dataplane.runtime import Runtime, UnknownDeployment
from leanml.serve.types import SLO
from leanml.serve.variants import InputError


def _run(coro):
    return asyncio.run(coro)


def test_a_failing_model_answers_500_and_the_runtime_keeps_serving():
    rt = Runtime(threads=1)
    rt.add_deployment("bad", {"b": gate_variant("b", fail=True)}, "static")
    rt.add_deployment("good", {"g": gate_variant("g")}, "static")

    async def go():
        await rt.start()
        a = await rt.submit("bad", [[1, 2, 3, 4]])
        b = await rt.submit("good", [[1, 2, 3, 4]])
        with pytest.raises(UnknownDeployment):
            await rt.submit("nope", [[1, 2, 3, 4]])
        with pytest.raises(InputError):
            await rt.submit("good", [[1, 2, 3]])
        await rt.stop()
        return a, b

    a, b = _run(go())
    assert a.status == 500 and "boom" in a.reason
    assert b.status == 200 and len(b.output["labels"]) == 1


def test_requests_whose_deadline_passes_in_the_queue_get_one_expired_answer():
    v = gate_variant("g", ms=1.0)
    rt = Runtime(threads=1)
    rt.add_deployment("d", {"g": v}, "infaas", batching=Batching(max_batch=1, max_queue=10))
    seen = []
    rt.add_observer(lambda req, out: seen.append((req.id, out.outcome)))

    async def go():
        await rt.start()
        v.model.gate.clear()
        first = asyncio.create_task(rt.submit("d", [[0, 0, 0, 0]]))
        await asyncio.sleep(0.05)
        tight = [asyncio.create_task(rt.submit("d", [[0, 0, 0, 0]], slo=SLO(latency_ms=30))) for _ in range(3)]
        await asyncio.sleep(0.2)  # their 30 ms pass while the model is blocked
        v.model.gate.set()
        res = await asyncio.gather(first, *tight)
        await rt.stop()
        return res

    res = _run(go())
    assert res[0].status == 200
    assert [r.outcome for r in res[1:]] == ["expired"] * 3 and all(r.status == 503 for r in res[1:])
    assert sorted(i for i, _ in seen) == [1, 2, 3, 4]  # each request answered exactly once
    assert sum(v.model.calls) == 1  # the expired ones never reached the model


def test_removed_variants_drain_their_queue_before_stopping():
    old, new = gate_variant("old"), gate_variant("new")
    rt = Runtime(threads=2)
    rt.add_deployment("d", {"old": old}, "static", batching=Batching(max_batch=2))

    async def go():
        await rt.start()
        old.model.gate.clear()
        queued = [asyncio.create_task(rt.submit("d", [[1, 1, 1, 1]])) for _ in range(5)]
        await asyncio.sleep(0.05)
        from leanml.serve.dataplane.routing import StaticPolicy

        rt.set_variants("d", {"new": new}, StaticPolicy(["new"]))
        after = await rt.submit("d", [[1, 1, 1, 1]])  # served by the new variant while old is blocked
        old.model.gate.set()
        res = await asyncio.gather(*queued)
        await rt.stop()
        return after, res

    after, res = _run(go())
    assert after.variant == "new" and after.status == 200
    assert [r.variant for r in res] == ["old"] * 5 and all(r.status == 200 for r in res)
    assert sum(old.model.calls) == 5 and max(old.model.calls) == 2  # batched by max_batch=2


def test_profiles_round_trip_and_cli_profile_writes_the_file(tmp_path, digits_builder):
    from typer.testing import CliRunner

    from leanml.cli.serve_cmd import app
    from leanml.serve.control.profiles import load_profiles, save_profiles

    profs = {"digits": {p.name: p for p in digits_builder.measured.values()}}
    path = tmp_path / "p.json"
    save_profiles(path, profs)
    back = load_profiles(path)
    a, b = profs["digits"]["mlp"], back["digits"]["mlp"]
    assert b.latency.p50_ms == a.latency.p50_ms and b.accuracy == a.accuracy and b.extra == json.loads(
        json.dumps(a.extra))
    path.write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_profiles(path)

    cfg = tmp_path / "deploy.toml"
    cfg.write_text('[server]\nprofile_file = "out.json"\n[deployments.digits]\nprototype = "digits"\n'
                   'variants = ["mlp", "mlp_student"]\nprofile = { batch_sizes = [1, 4], reps = 2 }\n')
    r = CliRunner().invoke(app, ["profile", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    got = load_profiles(tmp_path / "out.json")["digits"]
    assert set(got) == {"mlp", "mlp_student"} and set(got["mlp"].latency.p99_ms) == {1, 4}
    assert got["mlp"].accuracy > 0.9 and got["mlp"].memory_bytes > got["mlp_student"].memory_bytes
    bad = tmp_path / "bad.toml"
    bad.write_text('[deployments.x]\nprototype = "digits"\npolicy = "fastest"\n')
    r = CliRunner().invoke(app, ["profile", "--config", str(bad)])
    assert r.exit_code == 2 and "unknown policy" in r.output


def test_start_reuses_profiles_and_does_not_remeasure(digits_builder):
    cfg = digits_config()
    rt = build_runtime(cfg, {"s": digits_builder.measured}, measure_missing=False)
    assert not rt.builder.measured  # every variant's profile came from the file
    assert all(v.profile is not None for v in rt.deployments["digits"].variants.values())
    st = rt.state("digits")
    assert set(st.profiles) == set(cfg.deployments["digits"].variants)
    assert np.isfinite([p.accuracy for p in st.profiles.values()]).all()
