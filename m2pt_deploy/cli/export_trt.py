"""``m2pt-export --format trt``: verified reduced-precision ONNX first, then the engine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import onnx

from m2pt_deploy.checkpoint import Checkpoint, load_checkpoint
from m2pt_deploy.cli.common import EXIT_CHECK_FAILED, EXIT_OK, step
from m2pt_deploy.errors import M2ptError
from m2pt_deploy.export.calibration import calibration_tiles
from m2pt_deploy.export.graph import prepare_graph
from m2pt_deploy.export.onnx import DYNAMIC_BATCH, OnnxFromCheckpoint, parse_batch, save_onnx
from m2pt_deploy.export.precision import to_mixed_precision
from m2pt_deploy.export.quantize import quantize_qdq
from m2pt_deploy.export.tensorrt import build_engine_from_onnx, check_build_options
from m2pt_deploy.fileio import check_output_path
from m2pt_deploy.verify.tensorrt import verify_onnx_precision

__all__ = ["engine_onnx", "export_trt"]

VERIFY_IMAGES = 64
# Calibration and verification tiles come from different seeds, so the check is held out.
_CALIB_SEED, _VERIFY_SEED = 0, 1


def engine_onnx(ckpt: Checkpoint, precision: str, *, opset: int, batch_text: str | None,
                calib_images: int) -> onnx.ModelProto:
    """The graph the engine is built from: folded, sorted, and carrying its precision."""
    batch = parse_batch(batch_text) if batch_text else DYNAMIC_BATCH
    proto = prepare_graph(OnnxFromCheckpoint(ckpt, opset=opset, batch=batch)())
    if precision in ("fp16", "bf16"):
        return to_mixed_precision(proto, precision)  # type: ignore[arg-type]
    if precision in ("int8", "fp8"):
        spec = ckpt.spec
        tiles = calibration_tiles(spec.input_size, spec.mean, spec.std, count=calib_images,
                                  seed=_CALIB_SEED)
        return quantize_qdq(proto, precision, tiles)  # type: ignore[arg-type]
    return proto


def export_trt(args: argparse.Namespace) -> int:
    engine = check_output_path(args.output or Path(args.checkpoint).with_suffix(".engine"),
                               force=args.force)
    onnx_path = check_output_path(engine.with_suffix(f".{args.precision}.onnx"), force=args.force)
    batch = parse_batch(args.batch) if args.batch else DYNAMIC_BATCH
    # Option errors surface before minutes of export and calibration.
    check_build_options(args.precision, args.workspace, args.timing_cache, args.opt_level)
    if args.calib_images < 1:
        raise M2ptError(f"--calib-images {args.calib_images}: need at least 1")
    input_size = tuple(args.input_size) if args.input_size else None
    ckpt = load_checkpoint(args.checkpoint, arch=args.arch, input_size=input_size)
    with step(f"exporting {ckpt.spec.arch} to {args.precision} ONNX for TensorRT (batch {batch})"):
        proto = engine_onnx(ckpt, args.precision, opset=args.opset, batch_text=args.batch,
                            calib_images=args.calib_images)
        save_onnx(proto, onnx_path, force=args.force)
    print(f"wrote {onnx_path}")
    if not args.no_verify:
        spec = ckpt.spec
        images = calibration_tiles(spec.input_size, spec.mean, spec.std, count=VERIFY_IMAGES,
                                   seed=_VERIFY_SEED)
        with step(f"verifying the {args.precision} ONNX in ONNX Runtime against the unmerged model"):
            check = verify_onnx_precision(ckpt, onnx_path, images, precision=args.precision)
        print(check)
        if not check:
            print(f"verification FAILED; no engine built; the ONNX is kept at {onnx_path}",
                  file=sys.stderr)
            return EXIT_CHECK_FAILED
    out = build_engine_from_onnx(onnx_path, engine, precision=args.precision, batch=batch,
                                 workspace_gb=args.workspace, timing_cache=args.timing_cache,
                                 opt_level=args.opt_level, force=args.force)
    print(f"wrote {out} and {out.name}.json")
    return EXIT_OK

