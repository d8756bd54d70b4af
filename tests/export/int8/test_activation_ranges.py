"""The streaming |x| histogram behind int8 calibration."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from m2pt_deploy.export.int8.activation_ranges import AbsHistogram


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 6), st.floats(0.5, 99.9))
def test_percentile_is_the_bin_of_the_order_statistic(seed: int, chunks: int, q: float) -> None:
    rng = np.random.default_rng(seed)
    # Later chunks are wider, so the range doubles while streaming (the merge path).
    parts = [rng.standard_normal(5000).astype(np.float32) * (1 + 3 * i) for i in range(chunks)]
    hist = AbsHistogram()
    for part in parts:
        hist.add(part)
    values = np.sort(np.abs(np.concatenate(parts)))
    assert hist.top >= values[-1] and int(hist.counts.sum()) == values.size
    # The value where the cumulative share reaches q lies in the returned bin (one rank of
    # slack for the float cumulative sum).
    k = int(np.ceil(q / 100 * values.size)) - 1
    width = hist.top / hist.bins
    assert values[max(k - 1, 0)] - 1e-6 <= hist.percentile(q) <= values[min(k + 1, values.size - 1)] + width + 1e-6


def test_a_constant_zero_tensor_has_a_zero_threshold() -> None:
    hist = AbsHistogram()
    hist.add(np.zeros(10, np.float32))
    assert hist.percentile(99.999) <= 1e-11
    assert AbsHistogram().percentile(50) == 0.0
