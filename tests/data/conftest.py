"""Fixtures for the data tests: the real data root, and a fresh cache folder per test when needed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from leanml.data import data_root


@pytest.fixture(scope="session")
def real_root() -> Path:
    """The real data root; skipped only when $LEANML_DATA is unset and the default root is absent."""
    root = data_root()
    if "LEANML_DATA" not in os.environ and not root.is_dir():
        pytest.skip(f"no data root: set LEANML_DATA (default {root} does not exist)")
    assert root.is_dir(), f"LEANML_DATA={root} is not a folder"
    return root
