"""``m2pt-verify CHECKPOINT --engine FILE``: a TensorRT engine against the unmerged model."""

from __future__ import annotations

import argparse
import json
import tempfile

import numpy as np

from m2pt_deploy.bench.machine import machine_info, machine_line
from m2pt_deploy.cli.common import EXIT_CHECK_FAILED, EXIT_OK, load_model_checkpoint, step
from m2pt_deploy.export.engine_info import read_engine_info
from m2pt_deploy.export.engine_onnx import VERIFY_SEED
from m2pt_deploy.export.int8.calibration import calibration_tiles
from m2pt_deploy.fileio import atomic_output
from m2pt_deploy.verify import check_inputs
from m2pt_deploy.verify.tensorrt import latency_vs_vanilla, verify_engine

__all__ = ["verify_engine_command"]

REAL_IMAGES = 256


def verify_engine_command(args: argparse.Namespace, inputs: np.ndarray | None) -> int:
    """Sidecar and file checks first (no TensorRT needed to refuse a bad engine), then the run."""
    info = read_engine_info(args.engine)
    ckpt = load_model_checkpoint(args)
    spec = ckpt.spec
    if inputs is None:
        inputs = calibration_tiles(spec.input_size, spec.mean, spec.std, count=REAL_IMAGES, seed=VERIFY_SEED)
    else:
        inputs = check_inputs(inputs, spec.input_size)
    batch = args.batch_size or info.profile.opt[0]
    info.profile.check_batch(batch, source=args.engine)
    with step(f"running {args.engine} ({info.precision}) and the unmerged model on {len(inputs)} images"):
        result = verify_engine(ckpt, args.engine, inputs, batch=batch)
    print(result)
    report: dict[str, object] = {"engine": args.engine, "check": result.to_dict(), "engine_info": info.to_dict()}
    if not args.no_latency:
        with tempfile.TemporaryDirectory(prefix="m2pt-vanilla-") as tmp, \
                step("building a vanilla-ViT engine and timing both, interleaved"):
            latency = latency_vs_vanilla(ckpt, args.engine, inputs, tmp)
        machine = machine_info()
        print(machine_line(machine))
        print(latency.row())
        report |= {"latency": latency.to_dict(), "machine": machine}
    if args.report:
        with atomic_output(args.report, force=args.force) as tmp_path:
            tmp_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return EXIT_OK if result else EXIT_CHECK_FAILED
