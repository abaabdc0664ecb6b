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


def test_paired_delta_takes_per_example_scores_such_as_token_f1():
    """F1 in [0, 1] per item: the change is the mean paired difference, in points, with a normal CI over the
    differences (here 0.5, -0.25, 0, 0.75: mean 0.25, sample sd sqrt(0.625 / 3) = 0.4564, se 0.2282)."""
    d = paired_delta([1.0, 0.25, 0.5, 1.0], [0.5, 0.5, 0.5, 0.25])
    assert d["delta_points"] == 25.0 and (d["gained"], d["lost"], d["n"]) == (2, 1, 4)
    assert d["delta_ci_points"] == pytest.approx([25.0 - 1.96 * 22.82, 25.0 + 1.96 * 22.82], abs=0.02)
