"""The demo's picture: both runs' validation accuracy, and λ per layer with readable labels.
Checked through matplotlib's objects (lines, tick labels, font sizes), not pixels."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from m2pt_deploy.pipelines.demo import comparison_figure, write_comparison

KINDS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


def _history(accuracies: list[float], *, blocks: int = 0, n_aux: int = 1) -> list[dict]:
    records = [{"epoch": i + 1, "val_acc": acc, "train_acc": acc} for i, acc in enumerate(accuracies)]
    if blocks:
        records[-1]["lambda"] = {f"blocks.{b}.{kind}": [0.01 * (b + k + 1) for k in range(n_aux)]
                                 for b in range(blocks) for kind in KINDS}
    return records


@pytest.mark.parametrize("blocks", [4, 12])
def test_both_runs_and_readable_lambda_labels(blocks: int) -> None:
    fig = comparison_figure(_history([0.5, 0.7, 0.8], blocks=blocks), _history([0.4, 0.6, 0.7]),
                            aux_names=("audio",))
    try:
        fig.canvas.draw()
        accuracy, lambdas = fig.axes
        lines = accuracy.get_lines()
        assert [line.get_label() for line in lines] == ["with audio pathway", "without pathway"]
        assert [list(line.get_ydata()) for line in lines] == [[0.5, 0.7, 0.8], [0.4, 0.6, 0.7]]
        ticks = [t for t in lambdas.get_xticklabels() if t.get_text()]
        assert [t.get_text() for t in ticks] == [str(b) for b in range(blocks)]  # one tick per block
        assert min(t.get_fontsize() for t in ticks) >= 8
        assert len(lambdas.containers) == len(KINDS)  # one bar series per layer kind
        assert [t.get_text() for t in lambdas.get_legend().get_texts()] == list(KINDS)
    finally:
        plt.close(fig)


def test_several_aux_models_get_a_series_each() -> None:
    fig = comparison_figure(_history([0.5], blocks=2, n_aux=2), _history([0.4]), aux_names=("audio", "points"))
    try:
        labels = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
        assert labels[:2] == ["attn.qkv (audio)", "attn.qkv (points)"] and len(labels) == 2 * len(KINDS)
    finally:
        plt.close(fig)


def test_write_comparison_writes_a_png(tmp_path: Path) -> None:
    path = write_comparison(tmp_path / "comparison.png", _history([0.5, 0.6], blocks=4), _history([0.4, 0.5]))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
