"""``m2pt-export``: parse, call :mod:`m2pt_deploy.pipelines.export`, exit with its verdict."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from m2pt_deploy.cli.common import (
    HelpFormatter,
    add_model_args,
    add_output_args,
    add_version,
    finish,
    model_request,
    run_main,
)
from m2pt_deploy.request import INSTANCE_KINDS, INT8_TARGET_CHOICES, ExportRequest
from m2pt_deploy.vocabulary import (
    DEFAULT_OPSET,
    DYNAMIC_BATCH_RANGE,
    FORMATS,
    PRECISIONS,
    VERIFY_IMAGES,
)

# torch and onnx load only once the request is validated, so --help and every refusal are instant.
if TYPE_CHECKING:
    from m2pt_deploy.pipelines.export import ExportResult

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
    onnx_group.add_argument("--opset", type=int, metavar="N",
                            help=f"ONNX opset, 17 or newer (default: {DEFAULT_OPSET})")
    onnx_group.add_argument("--precision", choices=PRECISIONS, default="fp32",
                            help="fp16/bf16 keep LayerNorm, Softmax, the residual adds and the I/O in "
                            "fp32; int8/fp8 insert Q/DQ nodes calibrated on real inputs (photos or --calib-data); "
                            "bf16 and fp8 "
                            "are for --format trt; --format onnx --precision int8 is for ONNX Runtime on "
                            "CPU, verified at >= 99%% top-1 agreement with fp32 (default: fp32)")
    onnx_group.add_argument("--optimize", action="store_true",
                            help="write ONNX Runtime's CPU fast path instead of the portable graph: fused "
                            "attention, SkipLayerNorm and GELU, optimized once and marked so that servers "
                            "load it without re-optimizing; runs on ONNX Runtime only (fp32 or int8)")
    int8 = parser.add_argument_group("int8 (--precision int8; --calib-data and --verify-images also for "
                                     "--format trt int8/fp8)")
    int8.add_argument("--calib-data", metavar="DIR|FILE.npz",
                      help="your own inputs to calibrate on, a held-out part of which verifies: a folder of "
                      "images, or an .npz whose 'x' is [N, C, H, W] raw images (resized), AudioMAE "
                      "spectrograms [N, 1, 1024, 128], VideoMAE clips [N, C, T, H, W] or Point-MAE clouds "
                      "[N, P, 3], as m2pt-train reads them (default: photo tiles; RGB image models only)")
    int8.add_argument("--verify-images", type=int, metavar="N",
                      help=f"held-out inputs the int8 (or fp8) model is verified on (default: {VERIFY_IMAGES})")
    int8.add_argument("--int8-target", choices=INT8_TARGET_CHOICES,
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


def add_trt_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TensorRT (--format trt)")
    group.add_argument("--workspace", type=float, metavar="GB",
                       help="builder workspace limit in GiB (default: TensorRT's, the device's memory)")
    group.add_argument("--timing-cache", metavar="FILE", help="load and update this tactic timing cache")
    group.add_argument("--opt-level", type=int, metavar="N",
                       help="builder optimization level 0-5 (default: TensorRT's, 3)")
    group.add_argument("--calib-images", type=int, metavar="N",
                       help="calibration inputs for int8 (--format onnx, triton or trt) and fp8 (default: 256)")


def _add_triton_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Triton model repository (--format triton; -o is the repository folder)")
    group.add_argument("--name", help="model name and folder (default: the checkpoint's file stem)")
    group.add_argument("--max-batch", type=int, metavar="N",
                       help="max_batch_size; dynamic batching is on when N > 0 (default: 8)")
    group.add_argument("--instances", type=int, metavar="N", help="instance_group count (default: 1)")
    group.add_argument("--instance-kind", choices=INSTANCE_KINDS,
                       help="where Triton runs each model instance: CPU cores, a GPU, or the GPU if there is one "
                       "(default: KIND_CPU)")
    group.add_argument("--trt-accelerator", choices=("fp32", "fp16"),
                       help="let the onnxruntime backend build TensorRT engines (needs a GPU instance kind)")
    group.add_argument("--engine", metavar="PLAN", help="a TensorRT engine to place beside model.onnx as model.plan")
    group.add_argument("--storage-uri", metavar="URI",
                       help="where the repository will live for KServe: the storageUri of the "
                       "inferenceservice.yaml written into the model folder (default: s3://CHANGE-ME/model_repository)")


def request_from_args(args: argparse.Namespace) -> ExportRequest:
    """The command line as one :class:`ExportRequest` (not yet validated)."""
    return ExportRequest(
        args.checkpoint, args.format, args.output, args.force, model_request(args), args.precision, args.opset,
        args.batch, args.optimize, args.calib_data, args.calib_images, args.verify_images, args.int8_target,
        not args.no_verify, args.report, args.workspace, args.timing_cache, args.opt_level, args.name,
        args.max_batch, args.instances, args.instance_kind, args.trt_accelerator, args.engine, args.storage_uri)


def main(argv: Sequence[str] | None = None) -> int:
    request = request_from_args(build_parser().parse_args(argv)).validate()
    from m2pt_deploy.pipelines.export import export

    result: ExportResult = export(request, show=print)
    return finish(result)


def entrypoint() -> None:
    sys.exit(run_main(main))


if __name__ == "__main__":
    entrypoint()
