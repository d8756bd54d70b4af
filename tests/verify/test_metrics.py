from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from m2pt_deploy.verify.metrics import error_stats


def test_identical_arrays_are_bitwise_equal_with_zero_error():
    x = np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32)
    s = error_stats(x, x.copy())
    assert s.bitwise_equal
    assert s.max_abs == s.mean_abs == s.p99_abs == s.max_rel == 0.0
    assert s.cosine == pytest.approx(1.0)
    assert (s.top1_agree, s.top1_total) == (4, 4)


def test_one_ulp_is_not_bitwise_equal():
    x = np.ones((2, 3), np.float32)
    y = x.copy()
    y[1, 2] = np.nextafter(y[1, 2], np.float32(2))
    s = error_stats(x, y)
    assert not s.bitwise_equal
    assert 0 < s.max_abs < 1e-6


def test_errors_and_top1_are_counted_per_sample():
    ref = np.array([[0.0, 1.0, 0.5], [2.0, 0.0, 0.0]], np.float32)
    cand = np.array([[0.0, 1.0, 2.0], [2.0, 0.0, 0.0]], np.float32)
    s = error_stats(ref, cand)
    assert s.max_abs == pytest.approx(1.5)
    assert s.mean_abs == pytest.approx(1.5 / 6)
    assert s.max_rel == pytest.approx(3.0)
    assert (s.top1_agree, s.top1_total) == (1, 2)
    assert s.top1_rate == 0.5
    # Sample 1 is unchanged, so the smallest per-sample cosine is sample 0's.
    expected = (1.0 + 1.0) / (math.sqrt(1.25) * math.sqrt(5.0))
    assert s.cosine == pytest.approx(expected)


def test_scaled_output_keeps_cosine_but_not_abs_error():
    ref = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    s = error_stats(ref, 2 * ref)
    assert s.cosine == pytest.approx(1.0)
    assert s.max_abs == pytest.approx(np.abs(ref).max())


def test_nan_makes_stats_non_finite_and_json_null():
    ref = np.zeros((1, 4), np.float32)
    cand = ref.copy()
    cand[0, 1] = np.nan
    s = error_stats(ref, cand)
    assert not s.finite and not s.bitwise_equal
    assert s.to_dict()["max_abs"] is None


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"\(2, 3\) vs \(3, 2\)"):
        error_stats(np.zeros((2, 3)), np.zeros((3, 2)))


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        np.float32,
        st.tuples(st.integers(1, 5), st.integers(1, 7)),
        elements=st.floats(-1e3, 1e3, width=32),
    ),
    st.floats(-1.0, 1.0, width=32),
)
def test_stats_are_ordered_and_symmetric_in_abs_error(ref, shift):
    cand = ref + np.float32(shift)
    s, back = error_stats(ref, cand), error_stats(cand, ref)
    assert 0.0 <= s.mean_abs <= s.max_abs + 1e-12
    assert s.p99_abs <= s.max_abs + 1e-12
    assert s.max_abs == pytest.approx(back.max_abs)
    assert -1.0 - 1e-9 <= s.cosine <= 1.0 + 1e-9
    assert 0 <= s.top1_agree <= s.top1_total == ref.shape[0]
