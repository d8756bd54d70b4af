"""The fraction of peak is read round by round against the matmul peak timed in the same round."""

from __future__ import annotations

import pytest

from m2pt_deploy.bench.peak import MatmulPeakRunner, add_peak_fractions


def test_each_round_is_read_against_its_own_peak() -> None:
    # Round 2 ran on a busier machine: the model and the peak both took twice as long.
    rows = [{"runtime": "ort", "model": "merged", "batch": 2, "error": None},
            {"runtime": "ort", "model": "broken", "batch": 2, "error": "failed"}]
    peaks = add_peak_fractions(rows, {"ort / merged": [1.0, 2.0, 1.0]}, [0.1, 0.2, 0.125], gflop=4.0,
                               peak_gflop=10.0)
    assert peaks == pytest.approx([100.0, 50.0, 80.0])
    # 8 GFLOP in 1 s against 100 GFLOP/s, 8 in 2 s against 50, 8 in 1 s against 80.
    assert rows[0]["peak_fraction"] == pytest.approx(0.08)
    assert (rows[0]["peak_fraction_p25"], rows[0]["peak_fraction_p75"]) == pytest.approx((0.08, 0.09))
    assert rows[1]["peak_fraction"] is None
    assert add_peak_fractions(rows[:1], {"ort / merged": [1.0]}, [0.1], gflop=None, peak_gflop=10.0) == [100.0]
    assert rows[0]["peak_fraction"] is None  # no FLOP count, no fraction


def test_the_peak_runner_times_its_fastest_product() -> None:
    runner = MatmulPeakRunner(n=64, repeats=2, threads=1)
    assert runner.gflop == pytest.approx(2 * 64**3 / 1e9)
    with runner:
        assert runner.infer({}, check_inputs=False) == {}
        assert 0 < runner.last_inference_time() < 1.0
