"""What verification costs next to the export it checks, for a paper-size model.

Writes a pathway checkpoint of random weights (VideoMAE V2 ViT-B, 16 × 224², 174 classes, by
default), then times, each in its own process with its peak resident memory: the bare export
(``m2pt-export --no-verify``) and the verification of that file (``m2pt-verify``). With ``--tree``,
the same commands run from each source tree given (e.g. a checkout of an older commit), one
after the other in the same run, so that before/after figures share the machine's load. Prints
one JSON object with the machine named.

    python scripts/verify_cost.py --family videomae --out /tmp/verify-cost --tree /tmp/old --tree .
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import torch

from m2pt_deploy.bench.export_cost import run_measured
from m2pt_deploy.bench.machine import machine_info, machine_line
from m2pt_deploy.bench.paper import PAPER_MODELS
from m2pt_deploy.families import ModelSpec
from m2pt_deploy.model.build import build_vanilla
from m2pt_deploy.model.checkpoint import PathwayInfo, save_checkpoint
from m2pt_deploy.model.pathway import DEFAULT_LAYERS, add_pathways, pathway_layers, pathway_state_dict

# The paper's models (VideoMAE V2 ViT-B as fine-tuned on Something-Something V2: 174 classes).
SPECS = {"videomae": dataclasses.replace(PAPER_MODELS["videomae"], model_kwargs={
    **PAPER_MODELS["videomae"].model_kwargs, "num_classes": 174}), "vit": PAPER_MODELS["vit"]}

def write_checkpoint(spec: ModelSpec, path: Path) -> Path:
    torch.manual_seed(0)
    target, aux = build_vanilla(spec), build_vanilla(spec)
    add_pathways(target, aux, layers=DEFAULT_LAYERS, block_path="blocks")
    with torch.no_grad():
        for pathway in pathway_layers(target).values():
            for scale in pathway.scales:
                scale.uniform_(-0.5, 0.5)
    info = PathwayInfo(DEFAULT_LAYERS, "blocks", "scalar", ({"modality": "random", "sha256": None},))
    return save_checkpoint(path, pathway_state_dict(target), spec, pathway=info, force=True)


def timed(argv: list[str], tree: Path | None) -> dict[str, float]:
    """Wall time and peak RSS of one command, run from ``tree`` (its own folder and PYTHONPATH: ``python
    -m`` puts the working folder before PYTHONPATH on sys.path)."""
    env = {**os.environ, "PYTHONPATH": str(tree.resolve())} if tree else None
    cost = run_measured(argv[:1], argv[1:], env=env, cwd=tree)
    if cost.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({cost.returncode}):\n{cost.stderr_tail}")
    return {"wall_s": round(cost.wall_s, 1), "peak_gib": round(cost.peak_rss_mb / 1024, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=sorted(SPECS), default="videomae")
    parser.add_argument("--out", type=Path, default=Path("verify-cost"))
    parser.add_argument("--tree", type=Path, action="append",
                        help="a source tree to run the commands from (repeat for before/after; default: this one)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = write_checkpoint(SPECS[args.family], args.out.resolve() / "model.safetensors")
    result: dict[str, object] = {"machine": machine_line(machine_info()), "family": args.family,
                                 "load_average_before": os.getloadavg()}
    for tree in args.tree or [None]:
        onnx = (args.out / "model.onnx").resolve()
        export = timed([*_command("export"), str(ckpt), "-o", str(onnx), "--force", "--no-verify"], tree)
        verify = timed([*_command("verify"), str(ckpt), "--onnx", str(onnx)], tree)
        result[str(tree or ".")] = {"export": export, "verify": verify,
                                    "verify_over_export": round(verify["wall_s"] / export["wall_s"], 2)}
    result["load_average_after"] = os.getloadavg()
    print(json.dumps(result, indent=2))


def _command(name: str) -> list[str]:
    """The command as ``python -m m2pt_deploy NAME``, so that PYTHONPATH picks the tree."""
    return [sys.executable, "-m", "m2pt_deploy", name]


if __name__ == "__main__":
    main()
