"""Accuracy per runtime and format: top-1 on the user's labelled data, or, without data,
top-1 agreement with the fp32 reference model (and saying that it is agreement).

Every format sees the same images in the same chunks, so the figures differ only by the
format's numerics. ``--data`` takes what ``m2pt-train`` takes (:func:`m2pt_deploy.inputs.datasets.load_data`):
an ``.npz`` with ``x`` and ``y``, or an image folder with one sub-folder per class; a folder
holding ``train/`` and ``val/`` is scored on ``val/``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.families import ModelSpec
from m2pt_deploy.inputs.datasets import SizedDataset, load_data

__all__ = ["EvalData", "Predict", "load_eval_data", "onnx_predict", "score_formats", "torch_predict"]

Predict = Callable[[np.ndarray], np.ndarray]
Chunk = tuple[np.ndarray, np.ndarray | None]
_CHUNK = 32


@dataclasses.dataclass
class EvalData:
    """Labelled images to score (``indices`` of ``dataset``), and images left for calibration."""

    dataset: SizedDataset
    indices: list[int]
    classes: tuple[str, ...]
    source: str
    spare: SizedDataset | None
    spare_indices: list[int]

    def chunks(self, size: int = _CHUNK) -> Iterator[Chunk]:
        yield from _chunks(self.dataset, self.indices, size)

    def calibration(self, count: int) -> np.ndarray | None:
        """Up to ``count`` images that are not scored, for int8 calibration; None if there are none."""
        if self.spare is None or not self.spare_indices:
            return None
        return np.concatenate([x for x, _ in _chunks(self.spare, self.spare_indices[:count], _CHUNK)])


def _chunks(dataset: SizedDataset, indices: Sequence[int], size: int) -> Iterator[Chunk]:
    for start in range(0, len(indices), size):
        items = [dataset[i] for i in indices[start:start + size]]
        yield (np.stack([x.numpy() for x, _ in items]).astype(np.float32, copy=False),
               np.array([y for _, y in items], dtype=np.int64))


def load_eval_data(path: str | os.PathLike[str], spec: ModelSpec, *, images: int = 0, seed: int = 0) -> EvalData:
    """``path``'s evaluation images (``images`` of them, a seeded sample; 0: all), with their
    labels checked against the model's classes before anything is timed."""
    root = Path(path)
    split_folder = root.is_dir() and (root / "train").is_dir() and (root / "val").is_dir()
    # Scored with the evaluation transform either way: load_data's val side is resize + crop.
    split = load_data(root, spec) if split_folder else load_data(root, spec, val_data=root)
    dataset = split.val
    _check_classes(split.classes, spec.num_classes, dataset, root)
    order = list(range(len(dataset)))
    if images and len(dataset) > images:
        rng = np.random.default_rng(seed)
        order = [int(i) for i in rng.permutation(len(dataset))]
    scored, rest = sorted(order[:images] if images else order), order[images:] if images else []
    what = f"{root / 'val' if split_folder else root}"
    source = f"{len(scored)} of {len(dataset)} labelled images in {what}" if len(scored) < len(dataset) \
        else f"{len(scored)} labelled images in {what}"
    if split_folder:
        return EvalData(dataset, scored, split.classes, source, split.train, list(range(len(split.train))))
    return EvalData(dataset, scored, split.classes, source, dataset, rest)


def _check_classes(classes: tuple[str, ...], num_classes: int, dataset: SizedDataset, root: Path) -> None:
    # A folder's labels are its sorted sub-folder names: they line up with the model's outputs
    # only when there are exactly as many. An .npz's labels are output indices already.
    if root.is_dir() and len(classes) != num_classes:
        raise M2ptError(f"the data has {len(classes)} class folders, the model has {num_classes} outputs", root)
    if len(classes) > num_classes:
        raise M2ptError(f"the data has {len(classes)} classes, the model has {num_classes} outputs", root)


def torch_predict(model: nn.Module) -> Predict:
    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model.eval()(torch.from_numpy(np.ascontiguousarray(x))).float().numpy()

    return predict


def onnx_predict(path: str | os.PathLike[str], *, input_name: str, batch: int | None = None) -> Predict:
    """Logits from a CPU session; a model with a fixed ``batch`` gets zero-padded chunks."""
    from m2pt_deploy.runtime.sessions import cpu_session

    session = cpu_session(path, spinning=False)

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {input_name: np.ascontiguousarray(x, dtype=np.float32)})[0])

    def predict(x: np.ndarray) -> np.ndarray:
        if batch is None:
            return run(x)
        out = []
        for i in range(0, len(x), batch):
            part = x[i:i + batch]
            padded = np.concatenate([part, np.zeros((batch - len(part), *part.shape[1:]), part.dtype)])
            out.append(run(padded)[:len(part)])
        return np.concatenate(out)

    return predict


def score_formats(predictors: dict[str, Predict], reference: str, chunks: Iterator[Chunk], *,
                  source: str) -> dict[str, Any]:
    """Top-1 of each format (when labels come with the chunks) and its top-1 agreement and
    largest logit difference with ``reference``'s, over the same images."""
    if reference not in predictors:
        raise M2ptError(f"reference {reference!r} is not among the formats {list(predictors)}")
    correct = dict.fromkeys(predictors, 0)
    agree = dict.fromkeys(predictors, 0)
    max_diff = dict.fromkeys(predictors, 0.0)
    n, labelled = 0, True
    for x, y in chunks:
        logits = {name: predict(x) for name, predict in predictors.items()}
        ref = logits[reference].argmax(axis=1)
        for name, out in logits.items():
            top1 = out.argmax(axis=1)
            agree[name] += int((top1 == ref).sum())
            max_diff[name] = max(max_diff[name], float(np.abs(out - logits[reference]).max()))
            if y is not None:
                correct[name] += int((top1 == y).sum())
        labelled = labelled and y is not None
        n += len(x)
    if n == 0:
        raise M2ptError("no images to score")
    rows = [{"format": name, "top1": correct[name] / n if labelled else None, "agreement": agree[name] / n,
             "max_abs_logit_diff": max_diff[name]} for name in predictors]
    return {"kind": "top1" if labelled else "agreement", "images": n, "source": source, "reference": reference,
            "formats": rows}
