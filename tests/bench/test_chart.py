"""The benchmark chart, checked through matplotlib's objects rather than pixels."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from matplotlib.container import BarContainer, ErrorbarContainer

from m2pt_deploy.bench.chart import bench_figure, write_chart

RUNTIMES = ("torch eager", "ONNX Runtime", "ONNX Runtime optimized")


def _row(runtime: str, model: str, batch: int, median_ms: float, *, error: str | None = None) -> dict:
    return {"runtime": runtime, "model": model, "batch": batch, "error": error,
            "images_per_s": None if error else batch * 1e3 / median_ms, "median_ms": None if error else median_ms,
            "p25_ms": None if error else median_ms * 0.9, "p75_ms": None if error else median_ms * 1.2}


@pytest.fixture
def data() -> dict:
    rows = [_row(rt, m, b, 10.0 * (i + 1)) for b in (1, 8) for i, rt in enumerate(RUNTIMES)
            for m in ("vanilla", "merged")]
    rows.append(_row("torch eager", "unmerged", 1, 25.0))
    rows.append(_row("torch.compile", "merged", 1, 0.0, error="RuntimeError: no compiler"))
    return {"rows": rows, "settings": {"batches": [1, 8], "rounds": 10, "gflop_per_image": 1.0},
            "machine": {"cpu": "Some CPU", "fp32_matmul_peak_gflops": 400.0}, "spec": {"arch": "vit_tiny"}}


def test_bars_carry_error_bars_from_the_rounds_spread(data: dict) -> None:
    fig = bench_figure(data)
    try:
        for ax in fig.axes:
            bars = [c for c in ax.containers if isinstance(c, BarContainer)]
            errors = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
            assert [c.get_label() for c in bars] == ["vanilla", "merged", "unmerged"]
            assert len(errors) == len(bars)
        merged_eager = next(c for c in fig.axes[0].containers if isinstance(c, BarContainer)
                            and c.get_label() == "merged")[0]
        assert merged_eager.get_height() == pytest.approx(100.0)  # batch 1 at 10 ms
        (segments,) = [c for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)][1].lines[2]
        low, high = sorted(segments.get_segments()[0][:, 1])
        assert (low, high) == pytest.approx((1e3 / 12.0, 1e3 / 9.0))  # images/s at p75 and p25 latency
        assert "whiskers: p25–p75 of the rounds" in fig.get_supxlabel()
    finally:
        plt.close(fig)


def test_legend_sits_outside_every_panel(data: dict) -> None:
    fig = bench_figure(data)
    try:
        fig.canvas.draw()
        (legend,) = fig.legends
        box = legend.get_window_extent()
        assert all(not box.overlaps(ax.get_window_extent()) for ax in fig.axes)
        assert [t.get_text() for t in legend.get_texts()] == ["vanilla", "merged", "unmerged", "fp32 matmul peak"]
        assert all(ax.get_legend() is None for ax in fig.axes)
    finally:
        plt.close(fig)


def test_write_chart_writes_a_png(data: dict, tmp_path: Path) -> None:
    write_chart(data, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
