"""Seeded inputs for the exact checks: the same seed gives the same inputs, in any family's shape."""

from __future__ import annotations

import numpy as np
import pytest

from m2pt_deploy.inputs.seeded import seeded_inputs
from tests.tiny import TINY, TINY_POINT, TINY_VIDEO


@pytest.mark.parametrize("size", [TINY.input_size, TINY_VIDEO.input_size, TINY_POINT.input_size],
                         ids=["image", "video", "points"])
def test_shape_dtype_and_determinism(size: tuple[int, ...]) -> None:
    x = seeded_inputs(size, 3)
    assert x.shape == (3, *size) and x.dtype == np.float32 and np.isfinite(x).all()
    np.testing.assert_array_equal(seeded_inputs(list(size), 3), x)
    assert not np.array_equal(seeded_inputs(size, 3, seed=1), x)


def test_rows_are_distinct_standard_normal_draws() -> None:
    x = seeded_inputs(TINY.input_size, 4)
    assert len({r.tobytes() for r in x}) == 4
    # 12288 draws: a mean and spread far from 0 and 1 would mean another distribution, not chance.
    assert abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1.0) < 0.1
