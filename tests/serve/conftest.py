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
