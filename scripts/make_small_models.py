"""Train the small model of every non-image family on its learnable task and ship the checkpoints.

    python scripts/make_small_models.py --out m2pt_deploy/assets/small

Each model is trained by ``m2pt_deploy.pipelines.small_models.train_small_model`` (its recipe in
``RECIPES``, seed 0, single-threaded so that a rerun on the same platform and library versions
gives the same weights) and copied as ``<modality>.safetensors``; ``manifest.json`` beside them
records what each learned: its task, recipe, best validation accuracy, accuracy on fresh inputs
it never saw, the machine, torch's version and the file's sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from m2pt_deploy.bench.machine import machine_info, machine_line
from m2pt_deploy.inputs.preprocess import array_inputs
from m2pt_deploy.model.build import build_unmerged
from m2pt_deploy.model.checkpoint import load_checkpoint
from m2pt_deploy.pipelines.small_models import RECIPES, SMALL_MODELS, train_small_model


def _accuracy(checkpoint: Path, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 on inputs preprocessed as training preprocesses them."""
    ckpt = load_checkpoint(checkpoint)
    model, ready = build_unmerged(ckpt).eval(), torch.from_numpy(array_inputs(ckpt.spec, x))
    with torch.no_grad():
        logits = torch.cat([model(ready[i:i + 32]) for i in range(0, len(ready), 32)])
    return float((logits.argmax(1).numpy() == y).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", choices=sorted(SMALL_MODELS), action="append")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    manifest_path = args.out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    for modality in args.only or sorted(SMALL_MODELS):
        with tempfile.TemporaryDirectory() as tmp:
            made = train_small_model(modality, Path(tmp))
            target = args.out / f"{modality}.safetensors"
            shutil.copyfile(made.checkpoint, target)
            count, epochs = RECIPES[modality]
            manifest[modality] = {
                "task": made.train.task, "classes": list(made.train.classes), "inputs": count, "epochs": epochs,
                "seed": 0, "best_val_acc": made.best_val_acc,
                "fresh_acc": _accuracy(target, made.held_out.x, made.held_out.y), "fresh_inputs": len(made.held_out.y),
                "machine": machine_line(machine_info()), "torch": torch.__version__,
                "sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
            }
        print(modality, json.dumps(manifest[modality]), flush=True)
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
