"""int8 agreement on this CPU for every --int8-target: run it on each kind of CPU you serve on.

Trains the demo's pathway ViT on scikit-learn's digits (the demo's 30 epochs, seed 0), then
for each target quantizes it (calibrating on 256 digits), runs the int8 model the way
m2pt-serve runs it, and prints top-1 agreement with the fp32 torch model on 512 held-out
digits, with this CPU's name and integer flags. Nothing is downloaded.

    python scripts/int8_cpu_check.py [--out DIR] [--epochs N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from m2pt_deploy.bench.machine import machine_info, machine_line
from m2pt_deploy.cpu import INT8_TARGETS, int8_target, saturates
from m2pt_deploy.export.int8.cpu import cpu_int8_onnx
from m2pt_deploy.export.onnx import OnnxFromCheckpoint
from m2pt_deploy.export.optimize import save_optimized
from m2pt_deploy.inputs.calibration import int8_data
from m2pt_deploy.model.build import build_vanilla
from m2pt_deploy.model.checkpoint import load_checkpoint, save_checkpoint
from m2pt_deploy.pipelines.demo import DEMO_SPEC, demo_config, write_digits
from m2pt_deploy.train import train
from m2pt_deploy.verify.cpu_int8 import verify_int8_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="keep the run here (default: a temporary folder)")
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        write_digits(out / "digits.npz")
        torch.manual_seed(0)
        save_checkpoint(out / "target_init.safetensors", build_vanilla(DEMO_SPEC).state_dict(), DEMO_SPEC,
                        force=True)
        best = train(demo_config(out, epochs=args.epochs, seed=0, aux=True), force=True, progress=False).best
        ckpt = load_checkpoint(best)
        data = int8_data(ckpt.spec, calib_data=out / "digits.npz", calib_images=256, verify_images=512)
        fp32 = OnnxFromCheckpoint(ckpt)()
        info = machine_info()
        print(machine_line(info))
        rows = []
        for target in INT8_TARGETS:
            if saturates(int8_target()) and not saturates(target):
                print(f"{target}: not run, this CPU ({int8_target()}) saturates 8-bit weights")
                continue
            path = save_optimized(cpu_int8_onnx(fp32, data.calibration, target=target), out / f"{target}.onnx",
                                  force=True)
            result = verify_int8_cpu(ckpt, path, data.held_out, source="held-out digits")
            print(result)
            assert result.stats is not None
            rows.append({"target": target, "top1": f"{result.stats.top1_agree}/{result.stats.top1_total}",
                         "passed": result.passed})
        print(json.dumps({"machine": info, "results": rows}))


if __name__ == "__main__":
    main()
