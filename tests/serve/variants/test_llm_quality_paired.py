"""The paired accuracy change of a variant against float32 on the same examples."""

from __future__ import annotations

import pytest

from leanml.serve.variants.llm_quality import paired_delta


def test_paired_delta_counts_flips_and_its_ci_is_narrower_than_two_independent_ones():
    ref = "1" * 80 + "0" * 20  # 0.80
    var = "1" * 78 + "00" + "1" + "0" * 19  # loses 2, gains 1: 0.79
    d = paired_delta(var, ref)
    assert d["delta_points"] == -1.0 and (d["lost"], d["gained"], d["n"]) == (2, 1, 100)
    lo, hi = d["delta_ci_points"]
    assert lo < -1.0 < hi and hi - lo < 10  # two Wilson CIs at n = 100 are each ~16 points wide
    assert paired_delta(ref, ref)["delta_ci_points"] == [0.0, 0.0]


def test_paired_delta_needs_the_same_examples():
    with pytest.raises(ValueError, match="must match"):
        paired_delta("101", "10")
