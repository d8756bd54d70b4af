"""The pairwise latency bookkeeping and m2pt-bench's option errors: never timings."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

from m2pt_deploy.bench.latency import compare_latency, interleaved_times
from m2pt_deploy.cli.bench import main
from m2pt_deploy.cli.common import run_main


class FakeRunner(BaseRunner):
    """Records when it ran and reports a fixed inference time: no clock involved."""

    def __init__(self, name: str, seconds: list[float], log: list[str]) -> None:
        super().__init__(name=name)
        self.seconds, self.log, self.calls = seconds, log, 0

    def get_input_metadata_impl(self) -> TensorMetadata:
        return TensorMetadata().add("x", np.float32, (1,))

    def infer_impl(self, feed_dict):
        self.log.append(self.name)
        self.inference_time = self.seconds[self.calls % len(self.seconds)]
        self.calls += 1
        return OrderedDict(y=feed_dict["x"])


FEED = {"x": np.zeros((2, 1), np.float32)}


def test_rounds_interleave_and_rotate_after_warmup():
    log: list[str] = []
    runners = [
        FakeRunner("a", [1.0], log),
        FakeRunner("b", [1.0], log),
        FakeRunner("c", [1.0], log),
    ]
    times = interleaved_times(runners, FEED, rounds=3, warmup=1)
    assert log[:3] == ["a", "b", "c"]  # warm-up
    assert log[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}


def test_ratio_is_the_median_of_per_round_ratios():
    log: list[str] = []
    cand = FakeRunner("merged", [0.010, 0.012, 0.030, 0.010], log)
    base = FakeRunner("vanilla", [0.010, 0.010, 0.010, 0.005], log)
    result = compare_latency("fake", cand, base, FEED, rounds=4, warmup=0)
    ratios = sorted([1.0, 1.2, 3.0, 2.0])
    assert result.ratio == pytest.approx((ratios[1] + ratios[2]) / 2)
    assert result.candidate_ms == pytest.approx(11.0)
    assert result.baseline_ms == pytest.approx(10.0)
    assert result.ratio_p25 <= result.ratio <= result.ratio_p75
    assert result.batch == 2 and result.rounds == 4


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--model-kwargs", "{nope"], "--model-kwargs is not JSON"),
        (["--model-kwargs", "[1]"], "must be a JSON object, got list"),
        (["--arch", "no_such_vit_xyz"], "unknown timm architecture 'no_such_vit_xyz'"),
        (["--warmup", "-1"], "--warmup must be 0 or more"),
        (["--accuracy-epochs", "-1"], "--accuracy-epochs must be 0 or more"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, capsys, argv, fragment):
    code = run_main(main, [*argv, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and fragment in err
    assert not (tmp_path / "o").exists()


def test_out_must_not_be_a_file(tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("x")
    assert run_main(main, ["--out", str(path)]) == 2
    assert f"error: {path}: --out must be a directory" in capsys.readouterr().err
