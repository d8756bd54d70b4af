"""The bundled photographs as model inputs."""

from __future__ import annotations

import numpy as np
import pytest

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.inputs.photos import photo_tiles, sample_photos


def test_the_photos_ship_with_scikit_learn() -> None:
    photos = sample_photos()
    assert len(photos) == 2 and all(p.dtype == np.uint8 and p.shape[2] == 3 for p in photos)


def test_tiles_are_normalised_distinct_and_seeded() -> None:
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    x = photo_tiles((3, 24, 16), mean, std, count=12, seed=3)
    assert x.shape == (12, 3, 24, 16) and x.dtype == np.float32
    assert len({row.tobytes() for row in x}) == 12, "every tile is another crop"
    assert (photo_tiles((3, 24, 16), mean, std, count=12, seed=3) == x).all()
    assert not (photo_tiles((3, 24, 16), mean, std, count=12, seed=4) == x).all()
    # pixels in [0, 1], normalised per channel: the bounds follow from mean and std
    for c in range(3):
        assert x[:, c].min() >= -mean[c] / std[c] - 1e-6 and x[:, c].max() <= (1 - mean[c]) / std[c] + 1e-6


def test_grey_tiles_repeat_one_channel() -> None:
    x = photo_tiles((2, 8, 8), (0.5, 0.5), (0.5, 0.5), count=2)
    assert (x[:, 0] == x[:, 1]).all()


@pytest.mark.parametrize(("mean", "count", "needle"), [((0.5,), 1, "mean/std have 1/1 values for 3 input channels"),
                                                       ((0.5, 0.5, 0.5), 0, "need at least one photo tile")])
def test_bad_requests_are_one_line(mean, count, needle) -> None:
    with pytest.raises(M2ptError, match=needle):
        photo_tiles((3, 8, 8), mean, mean, count=count)
