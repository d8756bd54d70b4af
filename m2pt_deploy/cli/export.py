"""``m2pt-export``: checkpoint → merged vanilla ViT → deployable artifact, verified by default."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from m2pt_deploy.cli.common import (
    EXIT_CHECK_FAILED,
    EXIT_OK,
    HelpFormatter,
    add_model_args,
    add_output_args,
    add_version,
    load_model_checkpoint,
    require_onnxruntime,
    run_main,
    step,
)
from m2pt_deploy.cpu import INT8_TARGETS
from m2pt_deploy.errors import M2ptError
from m2pt_deploy.export.vocabulary import (
    DEFAULT_OPSET,
    DYNAMIC_BATCH_RANGE,
    FORMATS,
    ONNX_PRECISIONS,
    PRECISIONS,
    VERIFY_IMAGES,
)
from m2pt_deploy.fileio import atomic_output, check_output_path
from m2pt_deploy.heap import release_freed_memory

# torch and onnx load only once a command runs, so --help and argument errors are instant.
if TYPE_CHECKING:
    import onnx

    from m2pt_deploy.export.int8.cpu import Int8Data
    from m2pt_deploy.families import ModelSpec
    from m2pt_deploy.model.checkpoint import Checkpoint

__all__ = ["build_parser", "entrypoint", "main"]

_EPILOG = """\
examples:
  m2pt-export --format onnx m2pt_vit.safetensors               # -> m2pt_vit.onnx, verified
  m2pt-export --format onnx ckpt.pth --precision fp16 -o vit_fp16.onnx
  m2pt-export --format onnx audiomae_ft.pth --batch 8     # AudioMAE: (1, 1024, 128), time x frequency
  m2pt-export --format onnx m2pt_vit.safetensors --optimize -o vit_cpu.onnx  # ONNX Runtime CPU fast path
  m2pt-export --format onnx m2pt_vit.safetensors --precision int8 --optimize -o vit_int8_cpu.onnx
  m2pt-export --format trt m2pt_vit.safetensors --precision fp16 --batch 1:8:32
  m2pt-export --format trt m2pt_vit.safetensors --precision int8 -o vit_int8.engine
  m2pt-export --format triton m2pt_vit.safetensors -o models/  # -> models/m2pt_vit/{config.pbtxt,1/model.onnx}

exit status: 0 exported and verified, 1 exported but a verification check failed,
2 bad input (nothing written); --format trt where TensorRT or a GPU is missing also
exits 2, leaving the verified ONNX and ENGINE.build.sh (trtexec / polygraphy lines).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="m2pt-export",
        description="Merge a Multimodal Pathway checkpoint into a plain ViT and export it. The "
        "pathways are folded into the weights, so the artifact costs exactly what a vanilla ViT "
        "costs; the export is then checked against the unmerged model.",
        epilog=_EPILOG,
        formatter_class=HelpFormatter,
    )
    add_version(parser)
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="m2pt .safetensors, M2PT reference .pth, or a plain timm / MAE ViT checkpoint")
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="artifact to produce (default: onnx)")
    add_output_args(parser, default_help="CHECKPOINT with the format's suffix, beside it")
    add_model_args(parser)
    onnx_group = parser.add_argument_group("ONNX")
    onnx_group.add_argument("--opset", type=int, default=DEFAULT_OPSET, metavar="N",
                            help=f"ONNX opset, 17 or newer (default: {DEFAULT_OPSET})")
    onnx_group.add_argument("--precision", choices=PRECISIONS, default="fp32",
                            help="fp16/bf16 keep LayerNorm, Softmax, the residual adds and the I/O in "
                            "fp32; int8/fp8 insert Q/DQ nodes calibrated on real photos; bf16 and fp8 "
                            "are for --format trt; --format onnx --precision int8 is for ONNX Runtime on "
                            "CPU, verified at >= 99%% top-1 agreement with fp32 (default: fp32)")
    onnx_group.add_argument("--optimize", action="store_true",
                            help="write ONNX Runtime's CPU fast path instead of the portable graph: fused "
                            "attention, SkipLayerNorm and GELU, optimized once and marked so that servers "
                            "load it without re-optimizing; runs on ONNX Runtime only (fp32 or int8)")
    int8 = parser.add_argument_group("int8 (--format onnx --precision int8)")
    int8.add_argument("--calib-data", metavar="DIR|FILE.npz",
                      help="your own inputs to calibrate and verify on: a folder of images, or an .npz whose "
                      "'x' is [N, C, H, W] raw inputs such as spectrograms (default: photo tiles; RGB only)")
    int8.add_argument("--verify-images", type=int, default=VERIFY_IMAGES, metavar="N",
                      help=f"held-out inputs the int8 model is verified on (default: {VERIFY_IMAGES})")
    int8.add_argument("--int8-target", choices=("auto", *INT8_TARGETS), default="auto",
                      help="the CPU integer path it will serve on: avx2 and avx512 (no VNNI) get 7-bit weights, "
                      "which cannot saturate their int16 sums; vnni and amx full 8-bit "
                      "(default: auto, this machine's)")
    onnx_group.add_argument("--batch", default=None, metavar="N|MIN:OPT:MAX",
                            help="ONNX: a fixed batch N (default: dynamic); TensorRT: N or a MIN:OPT:MAX "
                            f"optimization profile (default: {':'.join(map(str, DYNAMIC_BATCH_RANGE))})")
    add_trt_args(parser)
    _add_triton_args(parser)
    check = parser.add_argument_group("verification")
    check.add_argument("--no-verify", action="store_true", help="skip checking the export against the unmerged model")
    check.add_argument("--report", metavar="FILE", help="also write the verification report as JSON")
    return parser


def _default_output(checkpoint: str, suffix: str) -> Path:
    return Path(checkpoint).with_suffix(suffix)


def add_trt_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TensorRT (--format trt)")
    group.add_argument("--workspace", type=float, metavar="GB",
                       help="builder workspace limit in GiB (default: TensorRT's, the device's memory)")
    group.add_argument("--timing-cache", metavar="FILE", help="load and update this tactic timing cache")
    group.add_argument("--opt-level", type=int, metavar="N",
                       help="builder optimization level 0-5 (default: TensorRT's, 3)")
    group.add_argument("--calib-images", type=int, default=256, metavar="N",
                       help="calibration inputs for int8/fp8 (default: 256)")


def export_onnx(args: argparse.Namespace) -> int:
    from m2pt_deploy.export.onnx import DYNAMIC_BATCH, OnnxFromCheckpoint, parse_batch

    if args.precision not in ONNX_PRECISIONS:
        raise M2ptError(f"--precision {args.precision} is only for --format trt; "
                        f"ONNX export takes {', '.join(ONNX_PRECISIONS)}")
    if args.optimize and args.precision == "fp16":
        raise M2ptError("--optimize takes fp32 or int8: ONNX Runtime's CPU provider has no fp16 fast path")
    if args.precision == "int8" and args.calib_images < 1:
        raise M2ptError(f"--calib-images {args.calib_images}: need at least 1")
    batch = parse_batch(args.batch) if args.batch else DYNAMIC_BATCH
    if args.batch and ":" in args.batch:
        raise M2ptError(f"--batch {args.batch} is a TensorRT profile (MIN:OPT:MAX, for --format trt); ONNX "
                        "takes one number for a static batch, or nothing for a dynamic one")
    if not args.no_verify or args.optimize or args.precision == "int8":
        require_onnxruntime("verifying the export" if not args.no_verify else "--optimize and int8")
    out = check_output_path(args.output or _default_output(args.checkpoint, ".onnx"), force=args.force)
    if args.report:
        check_output_path(args.report, force=args.force)
    ckpt = load_model_checkpoint(args)
    # Calibration and held-out inputs are read (and refused) before the export's minutes.
    data = _int8_data(args, ckpt.spec) if args.precision == "int8" else None
    precision: Literal["fp32", "fp16"] = "fp16" if args.precision == "fp16" else "fp32"
    loader = OnnxFromCheckpoint(ckpt, opset=args.opset, precision=precision, batch=batch)
    shown = "dynamic batch" if batch == DYNAMIC_BATCH else f"batch {batch}"
    with step(f"merging and exporting {ckpt.spec.arch} to ONNX (opset {args.opset}, {precision}, {shown})"):
        proto = loader()
    # Each step rebinds ``proto``, so the previous graph is freed before verification, and
    # the freed heap goes back to the OS so steps do not stack in RSS.
    release_freed_memory()
    if data is not None:
        proto = _quantize(args, proto, data)
    elif args.optimize:
        from m2pt_deploy.export.optimize import optimize_onnx

        with step("fusing attention, LayerNorm and GELU; optimizing with ONNX Runtime"):
            proto = optimize_onnx(proto)
    _save(proto, out, force=args.force)
    del proto
    release_freed_memory()
    print(f"wrote {out}")
    if args.no_verify:
        return EXIT_OK
    if data is not None:
        return _verify_int8(ckpt, out, data, report=args.report, force=args.force)
    return verify_export(ckpt, out, report=args.report, force=args.force)


def _int8_data(args: argparse.Namespace, spec: ModelSpec) -> Int8Data:
    from m2pt_deploy.export.int8.cpu import int8_data

    return int8_data(spec, calib_data=args.calib_data, calib_images=args.calib_images,
                     verify_images=args.verify_images)


def _save(proto: onnx.ModelProto, out: Path, *, force: bool) -> None:
    from m2pt_deploy.export.onnx import save_onnx
    from m2pt_deploy.export.optimize import save_optimized
    from m2pt_deploy.runtime.sessions import is_optimized

    if is_optimized(proto):
        save_optimized(proto, out, force=force)
    else:
        save_onnx(proto, out, force=force)


def _quantize(args: argparse.Namespace, proto: onnx.ModelProto, data: Int8Data) -> onnx.ModelProto:
    from m2pt_deploy.cpu import int8_target
    from m2pt_deploy.export.int8.cpu import cpu_int8_onnx

    target = int8_target() if args.int8_target == "auto" else args.int8_target
    with step(f"quantizing to int8 for {target} CPUs (Q/DQ, {len(data.calibration)} calibration inputs)"
              + (", optimizing with ONNX Runtime" if args.optimize else "")):
        return cpu_int8_onnx(proto, data.calibration, optimize=args.optimize, target=target)


def _verify_int8(ckpt: Checkpoint, out: Path, data: Int8Data, *, report: str | None, force: bool) -> int:
    from m2pt_deploy.verify.cpu_int8 import verify_int8_cpu

    with step(f"verifying the int8 model in ONNX Runtime against the unmerged fp32 model "
              f"({len(data.held_out)} {data.source})"):
        result = verify_int8_cpu(ckpt, out, data.held_out, source=data.source)
    print(result)
    if report:
        with atomic_output(report, force=force) as tmp:
            tmp.write_text(json.dumps({**result.to_dict(), "notes": list(ckpt.notes)}, indent=2) + "\n")
    if not result:
        print(f"verification FAILED; the export is kept at {out} for inspection", file=sys.stderr)
        return EXIT_CHECK_FAILED
    return EXIT_OK


def verify_export(ckpt: Checkpoint, onnx_path: Path, *, report: str | None, force: bool) -> int:
    from m2pt_deploy.verify import verify_onnx

    if report:
        check_output_path(report, force=force)
    with step("verifying against the unmerged model"):
        result = verify_onnx(ckpt, onnx_path)
    print(result)
    if report:
        result.write_json(report, force=force)
    if not result:
        print(f"verification FAILED; the export is kept at {onnx_path} for inspection", file=sys.stderr)
        return EXIT_CHECK_FAILED
    return EXIT_OK


def _add_triton_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Triton model repository (--format triton; -o is the repository folder)")
    group.add_argument("--name", help="model name and folder (default: the checkpoint's file stem)")
    group.add_argument("--max-batch", type=int, default=8, metavar="N",
                       help="max_batch_size; dynamic batching is on when N > 0 (default: 8)")
    group.add_argument("--instances", type=int, default=1, metavar="N", help="instance_group count (default: 1)")
    group.add_argument("--instance-kind", choices=("KIND_CPU", "KIND_GPU", "KIND_AUTO"), default="KIND_CPU",
                       help="where Triton runs each model instance: CPU cores, a GPU, or the GPU if there is one")
    group.add_argument("--trt-accelerator", choices=("fp32", "fp16"),
                       help="let the onnxruntime backend build TensorRT engines (needs a GPU instance kind)")
    group.add_argument("--engine", metavar="PLAN", help="a TensorRT engine to place beside model.onnx as model.plan")
    group.add_argument("--storage-uri", default="s3://CHANGE-ME/model_repository", metavar="URI",
                       help="where the repository will live for KServe: the storageUri of the "
                       "inferenceservice.yaml written into the model folder")


def export_triton(args: argparse.Namespace) -> int:
    import tempfile

    from m2pt_deploy.export.triton import check_model_folder, write_triton_repository

    repo = Path(args.output or Path(args.checkpoint).parent / "model_repository")
    name = args.name or Path(args.checkpoint).stem
    check_model_folder(repo, name, force=args.force)
    with tempfile.TemporaryDirectory(prefix="m2pt-triton-") as tmp:
        args.output = str(Path(tmp) / "model.onnx")
        status = export_onnx(args)
        if status != EXIT_OK:
            return status
        precision = args.trt_accelerator.upper() if args.trt_accelerator else None
        with step(f"writing Triton model {name} into {repo}"):
            model_dir = write_triton_repository(
                args.output, repo, name=name, max_batch=args.max_batch, instance_count=args.instances,
                instance_kind=args.instance_kind, tensorrt_precision=precision, engine=args.engine,
                storage_uri=args.storage_uri, force=args.force,
            )
    print(f"wrote {model_dir} (KServe: copy {repo} to {args.storage_uri}, then "
          f"kubectl apply -f {model_dir / 'inferenceservice.yaml'})")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.optimize and args.format != "onnx":
        raise M2ptError(f"--optimize is for --format onnx (ONNX Runtime on CPU), not --format {args.format}")
    if args.format == "onnx":
        return export_onnx(args)
    if args.format == "trt":
        from m2pt_deploy.cli.export_trt import export_trt

        return export_trt(args)
    if args.format == "triton":
        return export_triton(args)
    raise M2ptError(f"unknown format {args.format!r}")


def entrypoint() -> None:
    sys.exit(run_main(main))
