"""The ``make demo`` pipeline on real data that ships with scikit-learn: train → merge → export → verify.

Target: a small ViT on the 8 × 8 handwritten digits (1,797 images, 10 classes), trained
from a seeded initialisation. Auxiliary: the committed audio ViT
(``assets/aux_audio_vit.safetensors``, built by ``scripts/make_aux_audio.py`` on synthetic
spectrograms), the "different modality". The same run without the pathway, same seed and
budget, is the baseline the report compares against.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.export.onnx import OnnxFromCheckpoint, save_onnx
from m2pt_deploy.families import ModelSpec
from m2pt_deploy.merge import merge_state_dict
from m2pt_deploy.model.build import build_vanilla, load_strict
from m2pt_deploy.model.checkpoint import load_checkpoint, save_checkpoint
from m2pt_deploy.train import TrainConfig, TrainResult, train

__all__ = ["AUX_ASSET", "COMPARISON", "DEMO_SPEC", "REPORT", "DemoResult", "comparison_figure", "demo_config",
           "demo_summary", "run_demo", "write_comparison", "write_digits"]

AUX_ASSET = Path(__file__).parents[1] / "assets" / "aux_audio_vit.safetensors"
COMPARISON = "comparison.png"
#: The run's figures as JSON: what scripts/readme_demo_table.py renders into the README.
REPORT = "demo.json"
_BLOCK_LAYER = re.compile(r"^(?P<blocks>.+?)\.(?P<index>\d+)\.(?P<kind>.+)$")
# Patch 2 on the native 8 × 8 digits: 16 tokens, the blocks of the audio aux (width 64, depth 4).
DEMO_SPEC = ModelSpec(
    "vit_tiny_patch16_224",
    {"img_size": 8, "patch_size": 2, "in_chans": 1, "embed_dim": 64, "depth": 4, "num_heads": 1,
     "mlp_ratio": 4.0, "num_classes": 10},
    (1, 8, 8), (0.5,), (0.5,),
)


@dataclasses.dataclass
class DemoResult:
    pathway: TrainResult
    baseline: TrainResult
    merged: Path
    onnx: Path
    report: Any
    #: Validation accuracy with and without the pathway, and the learned λ (``comparison.png``).
    plot: Path | None = None
    #: :func:`demo_summary` as written to ``demo.json``.
    summary: Path | None = None


def write_digits(path: Path) -> Path:
    """scikit-learn's bundled digits as ``x`` [N, 1, 8, 8] in [0, 1] and ``y`` [N]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    np.savez(path, x=x, y=digits.target.astype(np.int64), classes=np.array([str(c) for c in range(10)]))
    return path


def demo_config(out: Path, *, epochs: int, seed: int, aux: bool) -> TrainConfig:
    return TrainConfig(
        target=str(out / "target_init.safetensors"), data=str(out / "digits.npz"),
        out_dir=str(out / ("pathway" if aux else "baseline")),
        aux=((str(AUX_ASSET), "audio"),) if aux else (), epochs=epochs, batch_size=64, lr=1e-3,
        lambda_lr=1e-2, warmup_epochs=2, weight_decay=0.05, clip_grad=1.0, val_split=0.2, seed=seed,
        device="cpu",
    )


def _merge(checkpoint: Path, out: Path) -> Path:
    ckpt = load_checkpoint(checkpoint)
    merged = merge_state_dict(ckpt.state_dict)
    load_strict(build_vanilla(ckpt.spec), merged, what="merged state dict")
    return save_checkpoint(out, merged, ckpt.spec, extra={**ckpt.extra, "merged_from": {"sha256": ckpt.sha256}},
                           force=True)


def run_demo(out: Path, *, epochs: int = 30, seed: int = 0, progress: bool = True) -> DemoResult:
    from m2pt_deploy.verify import verify_onnx

    if not AUX_ASSET.is_file():
        raise M2ptError("the demo's audio ViT is missing; rebuild it with scripts/make_aux_audio.py", AUX_ASSET)
    out.mkdir(parents=True, exist_ok=True)
    write_digits(out / "digits.npz")
    torch.manual_seed(seed)
    save_checkpoint(out / "target_init.safetensors", build_vanilla(DEMO_SPEC).state_dict(), DEMO_SPEC,
                    force=True)
    pathway = train(demo_config(out, epochs=epochs, seed=seed, aux=True), force=True, progress=progress)
    baseline = train(demo_config(out, epochs=epochs, seed=seed, aux=False), force=True, progress=progress)
    plot = write_comparison(out / COMPARISON, pathway.history, baseline.history, aux_names=("audio",))
    merged = _merge(pathway.best, out / "merged.safetensors")
    ckpt = load_checkpoint(pathway.best)
    onnx_path = save_onnx(OnnxFromCheckpoint(ckpt)(), out / "model.onnx", force=True)
    report = verify_onnx(ckpt, onnx_path)
    summary = _write_summary(out / REPORT, demo_summary(pathway, baseline, epochs=epochs, seed=seed,
                                                        verified=bool(report)))
    return DemoResult(pathway, baseline, merged, onnx_path, report, plot, summary)


def demo_summary(pathway: TrainResult, baseline: TrainResult, *, epochs: int, seed: int,
                 verified: bool) -> dict[str, Any]:
    """What the demo measured, per run: final and best validation accuracy (and the per-epoch
    curve), so that the README's table is rendered from a run, never typed."""

    def run(result: TrainResult) -> dict[str, Any]:
        return {"final_val_acc": result.history[-1]["val_acc"], "best_val_acc": result.best_val_acc,
                "val_acc": [r["val_acc"] for r in result.history]}

    return {"seed": seed, "epochs": epochs, "torch": torch.__version__, "verified": verified,
            "pathway": run(pathway), "baseline": run(baseline)}


def _write_summary(path: Path, summary: Mapping[str, Any]) -> Path:
    from m2pt_deploy.fileio import atomic_output

    with atomic_output(path, force=True) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return path


def _plot_accuracy(ax: Any, runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
    for (name, history), marker in zip(runs.items(), "os", strict=False):
        ax.plot([r["epoch"] for r in history], [r["val_acc"] for r in history], marker=marker, label=name)
    ax.set(xlabel="epoch", ylabel="validation top-1 accuracy", title="digits, same seed and budget")
    ax.legend(loc="lower right", fontsize=9)


def _plot_lambdas(ax: Any, lambdas: Mapping[str, Sequence[float]], aux_names: Sequence[str]) -> None:
    # One tick per block and one bar colour per layer kind: 4 to 12 readable ticks where one
    # tick per layer (16 for the demo, 48 for ViT-B) needed tiny rotated labels.
    parsed = {name: _BLOCK_LAYER.match(name) for name in lambdas}
    if not all(parsed.values()):
        names = list(lambdas)
        ax.bar(range(len(names)), [lambdas[n][0] for n in names])
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=8)
        return
    blocks = sorted({int(m["index"]) for m in parsed.values() if m})
    kinds = list(dict.fromkeys(m["kind"] for m in parsed.values() if m))
    n_aux = len(next(iter(lambdas.values())))
    series = [(kind, k) for kind in kinds for k in range(n_aux)]
    width = 0.8 / len(series)
    for j, (kind, k) in enumerate(series):
        values = {int(m["index"]): lambdas[name][k] for name, m in parsed.items() if m and m["kind"] == kind}
        label = kind if n_aux == 1 else f"{kind} ({aux_names[k] if k < len(aux_names) else f'aux {k}'})"
        ax.bar([b + (j - (len(series) - 1) / 2) * width for b in blocks], [values.get(b, 0.0) for b in blocks],
               width=width, label=label)
    ax.set_xticks(blocks, [str(b) for b in blocks], fontsize=9)
    ax.axhline(0.0, color="black", linewidth=0.5)
    aux = ", ".join(aux_names) or "aux"
    ax.set(xlabel="block", ylabel="λ (mean over channels)", title=f"learned λ per layer ({aux} pathway)")
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def comparison_figure(pathway: Sequence[Mapping[str, Any]], baseline: Sequence[Mapping[str, Any]], *,
                      aux_names: Sequence[str] = ()) -> Any:
    """Validation accuracy per epoch with and without the pathway, and the final λ per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lambdas = pathway[-1].get("lambda", {}) if pathway else {}
    fig, axes = plt.subplots(1, 2 if lambdas else 1, figsize=(13 if lambdas else 6.5, 4.5), squeeze=False,
                             layout="constrained")
    with_name = f"with {' + '.join(aux_names)} pathway" if aux_names else "with pathway"
    _plot_accuracy(axes[0][0], {with_name: pathway, "without pathway": baseline})
    if lambdas:
        _plot_lambdas(axes[0][1], lambdas, aux_names)
    return fig


def write_comparison(path: Path, pathway: Sequence[Mapping[str, Any]], baseline: Sequence[Mapping[str, Any]], *,
                     aux_names: Sequence[str] = ()) -> Path:
    """:func:`comparison_figure` as a PNG, written atomically."""
    from m2pt_deploy.fileio import atomic_output

    fig = comparison_figure(pathway, baseline, aux_names=aux_names)
    import matplotlib.pyplot as plt

    with atomic_output(path, force=True) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
