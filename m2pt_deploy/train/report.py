"""Run records: per-epoch metrics as JSON lines, and one PNG of the curves and learned λ."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from m2pt_deploy.fileio import atomic_output
from m2pt_deploy.model.pathway import pathway_layers

__all__ = ["lambda_values", "plot_history", "write_jsonl"]


def lambda_values(model: nn.Module) -> dict[str, list[float]]:
    """``{layer: [λ per aux]}``; a per-channel λ is reported as its mean."""
    return {name: [float(s.detach().float().mean()) for s in p.scales]
            for name, p in pathway_layers(model).items()}


def write_jsonl(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    with atomic_output(path, force=True) as tmp:
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def plot_history(path: Path, history: Sequence[Mapping[str, Any]], *, aux_names: Sequence[str] = ()) -> None:
    """Loss and accuracy per epoch, and (with pathways) the final λ of every layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lambdas: Mapping[str, list[float]] = history[-1].get("lambda", {}) if history else {}
    ncols = 3 if lambdas else 2
    fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 4), constrained_layout=True)
    epochs = [r["epoch"] for r in history]
    for ax, metric in zip(axes[:2], ("loss", "acc"), strict=True):
        ax.plot(epochs, [r[f"train_{metric}"] for r in history], marker="o", label="train")
        ax.plot(epochs, [r[f"val_{metric}"] for r in history], marker="o", label="validation")
        ax.set(xlabel="epoch", ylabel=metric if metric == "loss" else "top-1 accuracy",
               title="loss" if metric == "loss" else "accuracy")
        ax.legend()
    if lambdas:
        _plot_lambdas(axes[2], lambdas, aux_names)
    with atomic_output(path, force=True) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _plot_lambdas(ax: Any, lambdas: Mapping[str, list[float]], aux_names: Sequence[str]) -> None:
    names = list(lambdas)
    n_aux = len(next(iter(lambdas.values())))
    width = 0.8 / n_aux
    for k in range(n_aux):
        xs = [i + k * width for i in range(len(names))]
        label = aux_names[k] if k < len(aux_names) else f"aux {k}"
        ax.bar(xs, [lambdas[n][k] for n in names], width=width, label=label)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))])
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.axhline(0.0, color="black", linewidth=0.5)
    ax.set(ylabel="λ", title="learned λ per layer")
    ax.legend()
