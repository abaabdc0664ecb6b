"""Small parsers used by the loaders: exact trace timestamps, GSM8K final answers, CIFAR subsets."""

from __future__ import annotations

import datetime as dt

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from leanml.data.loaders.azure_trace import parse_timestamp_ns
from leanml.data.loaders.cifar10 import subset_rows
from leanml.data.loaders.instruct import gsm8k_final


@given(st.datetimes(min_value=dt.datetime(1971, 1, 1), max_value=dt.datetime(2100, 1, 1)),
       st.integers(0, 9_999_999))
def test_seven_digit_fraction_is_exact(when: dt.datetime, ticks: int) -> None:
    when = when.replace(microsecond=0)
    frac = f"{ticks:07d}"
    ns = parse_timestamp_ns(when.strftime("%Y-%m-%d"), when.strftime("%H:%M:%S"), frac)
    whole = int(when.replace(tzinfo=dt.UTC).timestamp())
    assert ns == whole * 1_000_000_000 + ticks * 100


def test_trace_example_timestamp() -> None:
    a = parse_timestamp_ns("2023-11-16", "18:17:03", "9799600")
    b = parse_timestamp_ns("2023-11-16", "18:17:04", "0319600")
    assert b - a == 52_000_000  # 0.052 s, exactly
    assert parse_timestamp_ns("2023-11-16", "18:17:04", None) == parse_timestamp_ns("2023-11-16", "18:17:04", "0")


def test_gsm8k_final() -> None:
    assert gsm8k_final("so 3 + 4 = 7\n#### 7") == "7"
    assert gsm8k_final("...\n#### 1,080") == "1080"
    assert gsm8k_final("...\n#### -3.5 ") == "-3.5"
    assert gsm8k_final("no marker") is None


@given(st.integers(1, 20), st.integers(1, 300))
def test_subset_rows_balanced(classes: int, per_class_pick: int) -> None:
    per_class = 500
    n_total = classes * per_class
    limit = classes * min(per_class_pick, per_class)
    rows = subset_rows(n_total, limit)
    assert len(rows) == len(np.unique(rows)) == min(limit, n_total)
    assert np.bincount(rows // per_class, minlength=classes).tolist() == [limit // classes] * classes
