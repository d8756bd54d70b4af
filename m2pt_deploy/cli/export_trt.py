"""``m2pt-export --format trt``: verified reduced-precision ONNX first, then the engine."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from m2pt_deploy.cli.common import EXIT_CHECK_FAILED, EXIT_OK, load_model_checkpoint, step
from m2pt_deploy.errors import M2ptError
from m2pt_deploy.export.engine_onnx import VERIFY_SEED, engine_onnx
from m2pt_deploy.export.int8.calibration import calibration_tiles
from m2pt_deploy.export.int8.cpu import VERIFY_IMAGES
from m2pt_deploy.export.onnx import DYNAMIC_BATCH, OnnxFromCheckpoint, parse_batch, save_onnx
from m2pt_deploy.export.tensorrt import build_engine_from_onnx, check_build_options
from m2pt_deploy.fileio import atomic_output, check_output_path
from m2pt_deploy.verify.tensorrt import verify_onnx_precision

__all__ = ["export_trt"]



def export_trt(args: argparse.Namespace) -> int:
    engine = check_output_path(args.output or Path(args.checkpoint).with_suffix(".engine"),
                               force=args.force)
    onnx_path = check_output_path(engine.with_suffix(f".{args.precision}.onnx"), force=args.force)
    batch = parse_batch(args.batch) if args.batch else DYNAMIC_BATCH
    # Option errors surface before minutes of export and calibration.
    check_build_options(args.precision, args.workspace, args.timing_cache, args.opt_level)
    if args.report:
        check_output_path(args.report, force=args.force)
    if args.calib_images < 1:
        raise M2ptError(f"--calib-images {args.calib_images}: need at least 1")
    ckpt = load_model_checkpoint(args)
    with step(f"exporting {ckpt.spec.arch} to {args.precision} ONNX for TensorRT (batch profile {batch})"):
        spec = ckpt.spec
        proto = engine_onnx(OnnxFromCheckpoint(ckpt, opset=args.opset, batch=batch)(), args.precision,
                            input_size=spec.input_size, mean=spec.mean, std=spec.std,
                            calib_images=args.calib_images)
        save_onnx(proto, onnx_path, force=args.force)
    print(f"wrote {onnx_path}")
    if not args.no_verify:
        images = calibration_tiles(spec.input_size, spec.mean, spec.std, count=VERIFY_IMAGES,
                                   seed=VERIFY_SEED)
        with step(f"verifying the {args.precision} ONNX in ONNX Runtime against the unmerged model"):
            check = verify_onnx_precision(ckpt, onnx_path, images, precision=args.precision)
        print(check)
        if args.report:
            with atomic_output(args.report, force=args.force) as tmp:
                tmp.write_text(json.dumps(check.to_dict(), indent=2) + "\n")
        if not check:
            print(f"verification FAILED; no engine built; the ONNX is kept at {onnx_path}",
                  file=sys.stderr)
            return EXIT_CHECK_FAILED
    out = build_engine_from_onnx(onnx_path, engine, precision=args.precision, batch=batch,
                                 workspace_gb=args.workspace, timing_cache=args.timing_cache,
                                 opt_level=args.opt_level, force=args.force)
    print(f"wrote {out} and {out.name}.json")
    return EXIT_OK

