"""Routing policies on profiles with known numbers, and deploy-config validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from serve_helpers import flat_profile

from leanml.serve.config import ConfigError, apply_patch, load_config, parse_config
from leanml.serve.dataplane.routing import InfaasPolicy, StaticPolicy, predicted_latency_ms
from leanml.serve.policy import Policy, known_policies, make_policy, register_policy
from leanml.serve.types import REFUSE_IMPOSSIBLE, REFUSE_OVERLOADED, SLO, Request, ServeState

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def _state(queue=None, max_batch=8):
    profs = {"small": flat_profile("small", 0.80, 1.0), "mid": flat_profile("mid", 0.88, 4.0),
             "big": flat_profile("big", 0.95, 20.0)}
    return ServeState(profs, queue or {n: 0 for n in profs}, {n: max_batch for n in profs})


def _req(**slo):
    return Request(1, "d", [[0.0]], SLO(**slo), 0.0)


def test_greedy_picks_cheapest_variant_meeting_accuracy_and_latency():
    pol = InfaasPolicy(["small", "mid", "big"])
    assert pol.route(_req(), _state()) == "small"
    assert pol.route(_req(min_accuracy=0.85), _state()) == "mid"
    assert pol.route(_req(min_accuracy=0.9), _state()) == "big"
    assert pol.route(_req(min_accuracy=0.85, latency_ms=3.0), _state()) is None
    assert pol.refusal_kind() == REFUSE_IMPOSSIBLE and "mid" in pol.reason()


def test_greedy_is_queue_aware_and_says_overloaded():
    pol = InfaasPolicy(["small", "mid", "big"])
    busy = _state({"small": 0, "mid": 64, "big": 0})
    # mid is 8 full batches deep (8 x 8 ms): the next request would miss a 15 ms SLO there,
    # and big takes 20 ms even idle: refused as overloaded (mid would do when its queue drains)
    assert predicted_latency_ms("mid", busy) > 15
    assert pol.route(_req(min_accuracy=0.85, latency_ms=15.0), busy) is None
    assert pol.refusal_kind() == REFUSE_OVERLOADED
    assert pol.route(_req(min_accuracy=0.85, latency_ms=30.0), busy) == "big"  # idle big meets 30 ms
    # with a looser SLO the more accurate (idle) big variant is not chosen over the cheaper feasible one
    assert pol.route(_req(min_accuracy=0.85, latency_ms=100.0), busy) == "mid"


def test_greedy_energy_constraint_needs_a_measured_energy():
    st = _state()
    st.profiles["mid"].energy_j_per_request = 0.5
    pol = InfaasPolicy(["small", "mid", "big"])
    assert pol.route(_req(max_energy_j=1.0), st) == "mid"  # only mid has a measured energy
    assert pol.route(_req(max_energy_j=0.1), st) is None and "energy" in pol.reason()


def test_static_policy_and_registry():
    pol = StaticPolicy(["a", "b"], variant="b")
    st = ServeState({"b": flat_profile("b", 0.7, 1.0)}, {"a": 0, "b": 0}, {"a": 1, "b": 1})
    assert pol.route(_req(), st) == "b"
    assert pol.route(_req(min_accuracy=0.8), st) is None
    with pytest.raises(ValueError, match="not served"):
        StaticPolicy(["a"], variant="z")
    with pytest.raises(ValueError, match="unknown routing policy"):
        make_policy("nope", ["a"])
    with pytest.raises(ValueError, match="bad policy_params"):
        make_policy("infaas", ["a"], {"colour": 1})

    class First(Policy):
        name = "first"

        def __init__(self, variants):
            self.v = variants[0]

        def route(self, request, state):
            return self.v

    register_policy("first-test", First)
    assert "first-test" in known_policies()
    assert make_policy("first-test", ["x", "y"]).route(_req(), st) == "x"

    class Duck:  # has route() but is no Policy: refused by name, not called by luck
        def __init__(self, variants):
            pass

        def route(self, request, state):
            return "x"

    register_policy("duck-test", Duck)
    with pytest.raises(TypeError, match="duck-test.*not a leanml.serve.policy.Policy"):
        make_policy("duck-test", ["x"])


def test_greedy_is_a_deprecated_alias_of_infaas():
    assert "greedy" not in known_policies() and "infaas" in known_policies()
    with pytest.warns(DeprecationWarning, match="'greedy' is deprecated.*'infaas'"):
        pol = make_policy("greedy", ["a"])
    assert isinstance(pol, InfaasPolicy) and pol.name == "infaas"
    with pytest.warns(DeprecationWarning):
        cfg = parse_config({"deployments": {"d": {"prototype": "digits", "policy": "greedy"}}})
    assert cfg.deployments["d"].policy == "infaas"


def test_example_configs_load_and_validate():
    for name in ("adult", "cifar10", "smollm2"):
        cfg = load_config(EXAMPLES / f"{name}.toml")
        assert cfg.server.host == "127.0.0.1"
        assert name in cfg.deployments and cfg.deployments[name].variants


@pytest.mark.parametrize("doc, match", [
    ({"deployments": {"d": {"prototype": "digits", "colour": 1}}}, "unknown key"),
    ({"deployments": {"d": {"prototype": "nope"}}}, "unknown prototype"),
    ({"deployments": {"d": {"prototype": "digits", "variants": ["zz"]}}}, "not in prototype"),
    ({"deployments": {"d": {"prototype": "digits", "policy": "fastest"}}}, "unknown policy"),
    ({"deployments": {"d": {"prototype": "digits", "batching": {"max_batch": 0}}}}, "max_batch"),
    ({"deployments": {"d": {"prototype": "digits", "batching": {"queue": "lifo"}}}}, "queue: must be one of edf"),
    ({"deployments": {"d": {"prototype": "digits", "slo": {"min_accuracy": 2}}}}, "min_accuracy"),
    ({"deployments": {"d": {"prototype": "digits", "params": {"epochs": "many"}}}}, "epochs"),
    ({"server": {"port": 70000}, "deployments": {"d": {"prototype": "digits"}}}, "port"),
    ({"server": {"admin_token": "short"}, "deployments": {"d": {"prototype": "digits"}}}, "admin_token"),
    ({"deployments": {}}, "at least one"),
])
def test_bad_configs_are_refused_with_the_key_named(doc, match, monkeypatch):
    monkeypatch.delenv("LEANML_SERVE_ADMIN_TOKEN", raising=False)
    with pytest.raises(ConfigError, match=match):
        parse_config(doc)


def test_config_patch_merges_and_validates():
    cfg = parse_config({"deployments": {"d": {"prototype": "digits", "variants": ["mlp", "mlp_int8"],
                                              "policy": "static", "policy_params": {"variant": "mlp_int8"}}}})
    new = apply_patch(cfg, {"deployments": {"d": {"variants": ["mlp"], "batching": {"max_batch": 4}}}})
    d = new.deployments["d"]
    assert d.variants == ("mlp",) and d.batching.max_batch == 4 and d.batching.max_queue == 1024
    assert d.policy == "static" and "variant" not in d.policy_params  # the old target left the set
    assert cfg.deployments["d"].variants == ("mlp", "mlp_int8")  # the old config is untouched
    with pytest.raises(ConfigError, match="unknown deployment"):
        apply_patch(cfg, {"remove": ["x"]})
    with pytest.raises(ConfigError, match="no deployment"):
        apply_patch(cfg, {"remove": ["d"]})
    with pytest.raises(ConfigError, match="unknown key"):
        apply_patch(cfg, {"server": {"port": 1}})
